//! The response body of an RPC, which ends the RPC's span and metrics when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_core::Code;
use tokio::time::Instant;

use super::Side;
use super::frame::{self, FrameEnd};
use super::span;
use super::stats::PathMetrics;

/// What an RPC in flight holds until it ends: its start, its metrics and span, and what its
/// response has told so far.
#[derive(Debug)]
pub(crate) struct CallEnd {
    pub(crate) side: Side,
    pub(crate) start: Instant,
    pub(crate) metrics: Option<Arc<PathMetrics>>,
    pub(crate) span: Option<tracing::Span>,
    /// The status the response's headers gave (a trailers-only response), or their HTTP status
    /// mapped to a gRPC code.
    pub(crate) header_status: Option<Code>,
    pub(crate) grpc: bool,
    pub(crate) bytes: u64,
    pub(crate) ended: bool,
}

impl CallEnd {
    pub(crate) fn new(side: Side, metrics: Option<Arc<PathMetrics>>, span: Option<tracing::Span>) -> Self {
        if let Some(m) = &metrics {
            m.active.add(1);
        }
        Self {
            side,
            start: Instant::now(),
            metrics,
            span,
            header_status: None,
            grpc: true,
            bytes: 0,
            ended: false,
        }
    }

    /// Ends the RPC with `code`: its duration and response size recorded, its span closed.
    pub(crate) fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if let Some(m) = &self.metrics {
            m.active.add(-1);
            m.duration(code).record(self.start.elapsed().as_secs_f64());
            m.response_size.record(self.bytes as f64);
        }
        if let Some(span) = self.span.take() {
            span::end(self.side, &span, code);
        }
    }

    /// The status of a response that ended without trailers.
    pub(crate) fn without_trailers(&self) -> Code {
        match self.header_status {
            Some(code) => code,
            None if self.grpc => Code::Unknown,
            None => Code::Ok,
        }
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        // The response was dropped before its end: the caller went away.
        self.finish(Code::Cancelled);
    }
}

/// The gRPC status a response's headers carry: `grpc-status` (a trailers-only response), or the
/// HTTP status mapped as gRPC's HTTP-to-gRPC table does.
pub(crate) fn header_status(parts: &http::response::Parts) -> Option<Code> {
    if let Some(code) = grpc_status(&parts.headers) {
        return Some(code);
    }
    let code = match parts.status.as_u16() {
        200..=299 => return None,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Some(code)
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    // A name made once: a `&str` would be parsed into one at every look-up.
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let value = headers.get(&GRPC_STATUS)?.to_str().ok()?;
    Some(value.parse::<i32>().map_or(Code::Unknown, Code::from_i32))
}

pin_project! {
    /// A response body passed through frame for frame, that ends its RPC's span and metrics when
    /// it ends: with the `grpc-status` of its trailers (or of its headers), `CANCELLED` if it is
    /// dropped first. Without telemetry it is only the inner body.
    #[derive(Debug)]
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        end: Option<CallEnd>,
    }
}

impl<B: Default> Default for RpcBody<B> {
    fn default() -> Self {
        Self::plain(B::default())
    }
}

impl<B> RpcBody<B> {
    /// `inner`, with no RPC to end.
    pub fn plain(inner: B) -> Self {
        Self { inner, end: None }
    }

    pub(crate) fn tracked(inner: B, end: Option<CallEnd>) -> Self {
        Self { inner, end }
    }
}

impl<B> Body for RpcBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let Some(end) = this.end.as_mut() else { return Poll::Ready(frame) };
        match frame::observe(&frame, &mut end.bytes, this.inner.is_end_stream()) {
            FrameEnd::Open => {}
            FrameEnd::Done => {
                let code = end.without_trailers();
                end.finish(code);
            }
            FrameEnd::Trailers(trailers) => {
                let code = grpc_status(trailers).unwrap_or_else(|| end.without_trailers());
                end.finish(code);
            }
            FrameEnd::Failed => end.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
