//! The bodies the gateway forwards: a client's request body on its way to an endpoint, and an
//! endpoint's response body on its way back. Both pass frames through unchanged.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use switchyard_balance::TrackedBody;

/// A client's request body on its way through a pool's layers to an endpoint: the client's frames,
/// unchanged (those the key layer read come first again).
pub type RequestBody = switchyard_keys::Replay<Incoming>;

pin_project! {
    /// The response body of the proxy: the endpoint's, frame for frame, or nothing for the
    /// gateway's own trailers-only statuses (its `Default`). A layer that read frames of it
    /// (the response cache) puts them back in front, or answers with frames alone.
    #[derive(Default)]
    pub struct ProxyBody {
        head: VecDeque<Frame<Bytes>>,
        #[pin]
        upstream: Option<TrackedBody<Incoming>>,
    }
}

impl ProxyBody {
    /// The endpoint's response body.
    pub(crate) fn upstream(body: TrackedBody<Incoming>) -> Self {
        Self { head: VecDeque::new(), upstream: Some(body) }
    }
}

impl switchyard_cache::ReplayBody for ProxyBody {
    fn replay(frames: Vec<Frame<Bytes>>, rest: Option<Self>) -> Self {
        let mut body = rest.unwrap_or_default();
        let mut head: VecDeque<Frame<Bytes>> = frames.into();
        head.append(&mut body.head);
        body.head = head;
        body
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.upstream.as_pin_mut() {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.upstream.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        if !self.head.is_empty() {
            // Frames put back by a layer: rare, and not worth an exact hint.
            return SizeHint::default();
        }
        self.upstream.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
