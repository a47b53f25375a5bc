//! [`RpcLayer`].

use std::sync::Arc;

use http::uri::Authority;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::Layer;
use tower::layer::util::Stack;
use tower::util::MapRequestLayer;

use super::Side;
use super::request::RpcRequestBody;
use super::service::Rpc;
use super::stats::RpcMetrics;
use crate::registry::MetricsRegistry;

/// What an [`Rpc`] service does for each call.
#[derive(Debug)]
pub(crate) struct RpcTelemetry {
    pub(crate) side: Side,
    pub(crate) metrics: Option<RpcMetrics>,
    pub(crate) tracing: bool,
    pub(crate) propagator: TraceContextPropagator,
    /// `server.address` and `server.port` for requests that do not carry them.
    pub(crate) server: Option<Authority>,
}

/// Builds [`Rpc`] services: RPC metrics into a [`MetricsRegistry`], spans, both or neither.
///
/// With neither (as [`server`](Self::server) and [`client`](Self::client) start), a call passes
/// straight through: one branch, no allocation, no lock.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    side: Side,
    metrics: Option<MetricsRegistry>,
    tracing: bool,
    server: Option<Authority>,
    telemetry: Option<Arc<RpcTelemetry>>,
}

impl RpcLayer {
    /// A layer for the server side of RPCs (a tonic server, a gateway's listener), doing nothing
    /// until given metrics or tracing.
    pub fn server() -> Self {
        Self::new(Side::Server)
    }

    /// A layer for the client side of RPCs (over a tonic `Channel`), doing nothing until given
    /// metrics or tracing.
    pub fn client() -> Self {
        Self::new(Side::Client)
    }

    /// A layer for `side`, doing nothing until given metrics or tracing.
    pub fn new(side: Side) -> Self {
        Self { side, metrics: None, tracing: false, server: None, telemetry: None }
    }

    /// The same layer, recording RPC metrics into `registry` (or none).
    pub fn with_metrics(mut self, registry: Option<&MetricsRegistry>) -> Self {
        self.metrics = registry.cloned();
        self.rebuild()
    }

    /// The same layer, with a span per RPC (and the trace context through the metadata) or
    /// without.
    pub fn with_tracing(mut self, tracing: bool) -> Self {
        self.tracing = tracing;
        self.rebuild()
    }

    /// The same layer, naming `server` as the spans' `server.address` and `server.port` when a
    /// request's URI has no authority (a tonic client's requests reach its `Channel` with the
    /// path only: give the channel's target here).
    pub fn with_server_address(mut self, server: Authority) -> Self {
        self.server = Some(server);
        self.rebuild()
    }

    /// Whether the layer records anything.
    pub fn is_enabled(&self) -> bool {
        self.telemetry.is_some()
    }

    /// Whether the layer makes spans.
    pub fn is_tracing(&self) -> bool {
        self.tracing
    }

    fn rebuild(mut self) -> Self {
        self.telemetry = (self.metrics.is_some() || self.tracing).then(|| {
            Arc::new(RpcTelemetry {
                side: self.side,
                metrics: self.metrics.clone().map(|r| RpcMetrics::new(self.side, r)),
                tracing: self.tracing,
                propagator: TraceContextPropagator::new(),
                server: self.server.clone(),
            })
        });
        self
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc::new(inner, self.telemetry.clone())
    }
}

/// How [`RpcLayer::for_channel`] hands a tonic client's request to its `Channel`: the counted
/// body boxed back into tonic's own body type (one box per call).
pub type IntoTonicBody =
    fn(http::Request<RpcRequestBody<tonic::body::Body>>) -> http::Request<tonic::body::Body>;

/// [`RpcLayer`] over a tonic `Channel`: see [`RpcLayer::for_channel`].
pub type ChannelRpcLayer = Stack<MapRequestLayer<IntoTonicBody>, RpcLayer>;

impl RpcLayer {
    /// This layer for a tonic client's `Channel`, which takes only tonic's own request body: the
    /// body [`Rpc`] counts is boxed back into it (one box per call), so the stack is simply
    ///
    /// ```
    /// # use switchyard_telemetry::RpcLayer;
    /// # async fn f(channel: tonic::transport::Channel) {
    /// let service = tower::ServiceBuilder::new().layer(RpcLayer::client().for_channel()).service(channel);
    /// # let _ = service;
    /// # }
    /// ```
    pub fn for_channel(self) -> ChannelRpcLayer {
        Stack::new(MapRequestLayer::new(into_tonic_body as IntoTonicBody), self)
    }
}

fn into_tonic_body(
    req: http::Request<RpcRequestBody<tonic::body::Body>>,
) -> http::Request<tonic::body::Body> {
    req.map(tonic::body::Body::new)
}
