//! The proxy: each request goes, headers and body streaming, to the endpoint its pool's balancer
//! picks, and the response comes back with its headers and trailers as the endpoint sent them.
//!
//! Nothing is decoded on the way but the request keys (`switchyard-keys`: metadata, and the first
//! message of a KServe model method, read once, bounded, then replayed), so any gRPC service and
//! every call shape (unary, client-, server- and bidirectional streaming) pass.
//! The balancer's [`TrackedBody`](switchyard_balance::TrackedBody) keeps the request counted
//! against its endpoint until the last frame, and reads the `grpc-status` and the ORCA load report
//! from the trailers as they go by. The gateway's own failures are trailers-only gRPC responses
//! built by [`switchyard_core::status_of`] from the typed error of the layer that failed: the
//! status names the pool and endpoint, never the upstream's cause, which goes to the log.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use switchyard_keys::{Keys, KeysConfig};
use switchyard_telemetry::{RpcBody, RpcLayer, RpcRequestBody};
use tower::Layer;
use tower::{BoxError, Service, ServiceExt};

use super::body::{ProxyBody, RequestBody};
use super::h2stream::RecvBody;
use super::pool::{Pool, PoolService};
use super::route::Router;

/// The service of the gateway's gRPC listener (a hyper `Service`, called by reference): the key
/// layer, then routing, then the routed pool's stack. Cloning is cheap; [`for_thread`](Self::for_thread) gives a serving
/// thread handles of its own (the reference counts a request touches are then that thread's
/// alone, with no cache line bouncing between cores), and
/// [`for_connection`](Self::for_connection) gives each accepted connection its own budget of
/// bytes for the key layer's peeks.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    keys: Keys<Dispatch>,
    /// The RPC span and metrics around each call; not entered when neither is on.
    rpc: RpcLayer,
}

/// Routing and the pools: below the key layer.
#[derive(Clone, Debug)]
pub(crate) struct Dispatch {
    state: Arc<ProxyState>,
}

#[derive(Debug, Clone)]
struct ProxyState {
    pools: Arc<[Pool]>,
    router: Arc<Router>,
    /// Whether RPC spans are made: the routed pool is recorded on them.
    traced: bool,
}

impl Proxy {
    pub(crate) fn new(pools: Arc<[Pool]>, router: Router, keys: KeysConfig, rpc: RpcLayer) -> Self {
        let traced = rpc.is_tracing();
        let dispatch = Dispatch { state: Arc::new(ProxyState { pools, router: Arc::new(router), traced }) };
        Self { keys: Keys::new(dispatch, keys), rpc }
    }

    /// The proxy for one serving thread: the same pools and routes, behind handles of its own.
    pub(crate) fn for_thread(&self) -> Self {
        let state = Arc::new(ProxyState::clone(&self.keys.get_ref().state));
        Self { keys: Keys::new(Dispatch { state }, self.keys.config().clone()), rpc: self.rpc.clone() }
    }

    /// The proxy for one new client connection: the same pools, a fresh peek budget.
    pub(crate) fn for_connection(&self) -> Self {
        Self { keys: self.keys.for_connection(), rpc: self.rpc.clone() }
    }
}

impl hyper::service::Service<http::Request<RecvBody>> for Proxy {
    type Response = http::Response<RpcBody<ProxyBody>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, req: http::Request<RecvBody>) -> Self::Future {
        if !self.rpc.is_enabled() {
            // Nothing configured: the RPC layer is not entered; the bodies' telemetry slots stay
            // empty (one branch per frame, as an `Either` would take).
            let service = self.keys.clone();
            return Box::pin(async move {
                Ok(match service.oneshot(req.map(RpcRequestBody::plain)).await {
                    Ok(response) => response.map(RpcBody::plain),
                    Err(error) => failed(&*error),
                })
            });
        }
        let service = self.rpc.layer(self.keys.clone());
        Box::pin(async move {
            Ok(match service.oneshot(req).await {
                Ok(response) => response,
                Err(error) => failed(&*error),
            })
        })
    }
}

/// The trailers-only answer to a request a layer failed, from the layer's typed error.
fn failed<B: Default>(error: &(dyn std::error::Error + 'static)) -> http::Response<B> {
    let status = switchyard_core::status_of(error);
    tracing::debug!(status = ?status.code, error = %Chain(error), "request failed");
    status.to_http()
}

type DispatchFuture = futures::future::Either<
    futures::future::Ready<Result<http::Response<ProxyBody>, BoxError>>,
    tower::util::Oneshot<PoolService, http::Request<RequestBody>>,
>;

impl Service<http::Request<RequestBody>> for Dispatch {
    type Response = http::Response<ProxyBody>;
    type Error = BoxError;
    type Future = DispatchFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RequestBody>) -> Self::Future {
        match self.state.router.route(&req) {
            Ok(index) => {
                let pool = &self.state.pools[index];
                if self.state.traced {
                    switchyard_telemetry::rpc::record_pool(pool.name());
                }
                // The keys this pool reads its own way (`[pool.keys]`), now that it is known.
                let req = if pool.keys().is_empty() {
                    req
                } else {
                    let (mut parts, body) = req.into_parts();
                    pool.keys().apply(&parts.headers, &mut parts.extensions);
                    http::Request::from_parts(parts, body)
                };
                futures::future::Either::Right(pool.service().oneshot(req))
            }
            Err(error) => futures::future::Either::Left(futures::future::ready(Err(error.into()))),
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
