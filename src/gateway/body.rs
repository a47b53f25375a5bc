//! The bodies the gateway forwards: a client's request body on its way to an endpoint, and an
//! endpoint's response body on its way back. Both pass frames through unchanged.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use switchyard_balance::TrackedBody;

use super::peek::Replay;

/// A client's request body on its way through a pool's layers to an endpoint: the client's frames,
/// unchanged (those read to find the request's keys come first again).
#[derive(Debug)]
pub struct RequestBody(pub(crate) RequestFrames);

/// Where a [`RequestBody`]'s frames come from.
#[derive(Debug)]
pub(crate) enum RequestFrames {
    /// The client's body, not read.
    Untouched(Incoming),
    /// The client's body, the frames the model peek read replayed first.
    Peeked(Replay<Incoming>),
}

impl RequestBody {
    pub(crate) fn untouched(body: Incoming) -> Self {
        Self(RequestFrames::Untouched(body))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            RequestFrames::Untouched(body) => Pin::new(body).poll_frame(cx),
            RequestFrames::Peeked(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            RequestFrames::Untouched(body) => body.is_end_stream(),
            RequestFrames::Peeked(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            RequestFrames::Untouched(body) => body.size_hint(),
            RequestFrames::Peeked(body) => body.size_hint(),
        }
    }
}

pin_project! {
    /// The response body of the proxy: the endpoint's, frame for frame, or nothing for the
    /// gateway's own trailers-only statuses (its `Default`).
    #[derive(Default)]
    pub struct ProxyBody {
        #[pin]
        upstream: Option<TrackedBody<Incoming>>,
    }
}

impl ProxyBody {
    /// The endpoint's response body.
    pub(crate) fn upstream(body: TrackedBody<Incoming>) -> Self {
        Self { upstream: Some(body) }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project().upstream.as_pin_mut() {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.upstream.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.upstream.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
