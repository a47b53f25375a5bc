//! The proxy: each request goes, headers and body streaming, to the endpoint its pool's balancer
//! picks, and the response comes back with its headers and trailers as the endpoint sent them.
//!
//! Nothing is decoded on the way (except the bounded model peek, when a route needs it), so any
//! gRPC service and every call shape (unary, client-, server- and bidirectional streaming) pass.
//! The balancer's [`TrackedBody`] keeps the request counted against its endpoint until the last
//! frame, and reads the `grpc-status` and the ORCA load report from the trailers as they go by.
//! The gateway's own failures are trailers-only gRPC responses: `UNAVAILABLE` when the pool has
//! no endpoint or the endpoint cannot be reached, `UNIMPLEMENTED` when no route takes the request.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use switchyard_balance::NoEndpoints;
use tonic::Status;
use tower::{BoxError, ServiceExt};

use super::body::ProxyBody;
use super::pool::Pool;
use super::route::Router;

/// The hyper service of the gateway's gRPC listener. Cloning is cheap (one `Arc`).
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pools: Arc<[Pool]>,
    router: Router,
}

impl Proxy {
    pub(crate) fn new(pools: Arc<[Pool]>, router: Router) -> Self {
        Self { shared: Arc::new(Shared { pools, router }) }
    }
}

impl hyper::service::Service<http::Request<Incoming>> for Proxy {
    type Response = http::Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { Ok(shared.forward(req).await) })
    }
}

impl Shared {
    async fn forward(&self, req: http::Request<Incoming>) -> http::Response<ProxyBody> {
        let (index, req) = match self.router.route(req).await {
            Ok(routed) => routed,
            Err(status) => {
                tracing::debug!(message = status.message(), "unrouted request");
                return status.into_http();
            }
        };
        let pool = &self.pools[index];
        match pool.upstream.clone().oneshot(req).await {
            Ok(response) => response.map(ProxyBody::upstream),
            Err(e) => {
                let status = unavailable(pool, &e);
                tracing::debug!(pool = pool.name(), message = status.message(), "upstream failed");
                status.into_http()
            }
        }
    }
}

/// `UNAVAILABLE`, saying why: no endpoint, or the endpoint's connection failed (with the causes).
fn unavailable(pool: &Pool, error: &BoxError) -> Status {
    if error.is::<NoEndpoints>() {
        return Status::unavailable(format!("pool {:?} has no endpoint available", pool.name()));
    }
    let mut message = format!("pool {:?}: upstream unavailable: {error}", pool.name());
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    Status::unavailable(message)
}
