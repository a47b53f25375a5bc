//! The proxy: each request goes, headers and body streaming, to the endpoint its pool's balancer
//! picks, and the response comes back with its headers and trailers as the endpoint sent them.
//!
//! Nothing is decoded on the way (except the bounded model peek, when a route needs it), so any
//! gRPC service and every call shape (unary, client-, server- and bidirectional streaming) pass.
//! The balancer's [`TrackedBody`](switchyard_balance::TrackedBody) keeps the request counted
//! against its endpoint until the last frame, and reads the `grpc-status` and the ORCA load report
//! from the trailers as they go by. The gateway's own failures are trailers-only gRPC responses
//! built by [`switchyard_core::status_of`] from the typed error of the layer that failed: the
//! status names the pool and endpoint, never the upstream's cause, which goes to the log.

use std::convert::Infallible;
use std::sync::Arc;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use tower::ServiceExt;

use super::body::ProxyBody;
use super::pool::Pool;
use super::route::Router;

/// The hyper service of the gateway's gRPC listener. Cloning is cheap (one `Arc`).
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    shared: Arc<ProxyState>,
}

#[derive(Debug)]
struct ProxyState {
    pools: Arc<[Pool]>,
    router: Router,
}

impl Proxy {
    pub(crate) fn new(pools: Arc<[Pool]>, router: Router) -> Self {
        Self { shared: Arc::new(ProxyState { pools, router }) }
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

impl ProxyState {
    async fn forward(&self, req: http::Request<Incoming>) -> http::Response<ProxyBody> {
        let (index, req) = match self.router.route(req).await {
            Ok(routed) => routed,
            Err(error) => {
                tracing::debug!("unrouted request: {error}");
                return switchyard_core::status_of(&error).to_http();
            }
        };
        let pool = &self.pools[index];
        match pool.service().oneshot(req).await {
            Ok(response) => response,
            Err(error) => {
                let status = switchyard_core::status_of(&*error);
                tracing::debug!(pool = pool.name(), status = ?status.code, error = %Chain(&*error), "request failed");
                status.to_http()
            }
        }
    }
}

/// An error and its causes, for the log.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
