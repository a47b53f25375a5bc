//! The [`Rpc`] service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::body::{CallEnd, RpcBody};
use super::future::ResponseFuture;
use super::layer::RpcTelemetry;
use super::request::RpcRequestBody;
use super::span;

/// Telemetry around every RPC of the inner service: see the [module](super) docs.
#[derive(Debug, Clone)]
pub struct Rpc<S> {
    inner: S,
    telemetry: Option<Arc<RpcTelemetry>>,
}

impl<S> Rpc<S> {
    pub(crate) fn new(inner: S, telemetry: Option<Arc<RpcTelemetry>>) -> Self {
        Self { inner, telemetry }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for Rpc<S>
where
    S: Service<http::Request<RpcRequestBody<ReqB>>, Response = http::Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body,
{
    type Response = http::Response<RpcBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let Some(telemetry) = &self.telemetry else {
            return ResponseFuture::new(self.inner.call(req.map(RpcRequestBody::plain)), None);
        };
        let metrics = telemetry.metrics.as_ref().map(|m| m.path(req.uri().path()));
        let mut req = req.map(|body| RpcRequestBody::counted(body, metrics.clone()));
        let span = telemetry.tracing.then(|| span::start(telemetry, &mut req));
        let end = CallEnd::new(telemetry.side, metrics, span);
        let future = match &end.span {
            Some(span) => span.in_scope(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        ResponseFuture::new(future, Some(end))
    }
}
