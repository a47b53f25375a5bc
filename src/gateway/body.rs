//! The bodies the gateway forwards: a client's request body on its way to an endpoint, and an
//! endpoint's response body on its way back. Both pass frames through unchanged.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_balance::TrackedBody;
use switchyard_core::{Error, ErrorKind};
use switchyard_limit::LimitBody;
use switchyard_telemetry::RpcRequestBody;

use super::h2stream::RecvBody;

/// A client's request body on its way through a pool's layers to an endpoint: the client's frames,
/// unchanged (those the key layer read come first again), their bytes counted in place by the RPC
/// layer when RPC metrics are on (`rpc_server_request_size_bytes`).
pub type RequestBody = switchyard_keys::Replay<RpcRequestBody<RecvBody>>;

pin_project! {
    /// The response body of the proxy: the endpoint's, frame for frame, or nothing for the
    /// gateway's own trailers-only statuses (its `Default`). A layer that read frames of it
    /// (the response cache) puts them back in front, or answers with frames alone.
    ///
    /// An endpoint whose connection fails mid-response (it crashed, or the network went) ends the
    /// client's call with `UNAVAILABLE` trailers ([`ErrorKind::Upstream`]), as the gateway's own
    /// refusals do, rather than with a reset stream, which clients read as `INTERNAL`. The
    /// balancer below has already counted the call as the endpoint's failure. A call cut because
    /// discovery removed its endpoint and the pool's drain timeout passed ends with `UNAVAILABLE`
    /// saying so.
    #[derive(Default)]
    pub struct ProxyBody {
        head: VecDeque<Frame<Bytes>>,
        #[pin]
        upstream: Option<TrackedBody<RecvBody>>,
        ended: bool,
        // The body under a pool's `limit` layer, which holds the request's permit to its end.
        limited: Option<Pin<Box<LimitBody<ProxyBody>>>>,
    }
}

impl ProxyBody {
    /// The endpoint's response body.
    pub(crate) fn upstream(body: TrackedBody<RecvBody>) -> Self {
        Self { head: VecDeque::new(), upstream: Some(body), ended: false, limited: None }
    }

    /// A body holding a concurrency-limit permit until it ends (a pool's `limit` layer).
    pub(crate) fn limited(body: LimitBody<ProxyBody>) -> Self {
        Self { head: VecDeque::new(), upstream: None, ended: false, limited: Some(Box::pin(body)) }
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

/// The trailers that end a response whose endpoint failed mid-way: `error` says why.
fn upstream_failed_trailers(error: &h2::Error) -> http::HeaderMap {
    let status = if switchyard_discovery::drain::is_drain_timeout(error) {
        switchyard_core::Status {
            code: switchyard_core::Code::Unavailable,
            message: "the endpoint was removed from the pool and its drain timeout passed; the call was cut"
                .into(),
            retry_after: None,
        }
    } else {
        Error::new(ErrorKind::Upstream).status()
    };
    let mut trailers = status.to_http::<()>().into_parts().0.headers;
    trailers.remove(http::header::CONTENT_TYPE);
    trailers
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.project();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(limited) = this.limited {
            return limited.as_mut().poll_frame(cx);
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.upstream.as_pin_mut() {
            Some(body) => match body.poll_frame(cx) {
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "endpoint's response failed mid-way");
                    *this.ended = true;
                    Poll::Ready(Some(Ok(Frame::trailers(upstream_failed_trailers(&error)))))
                }
                other => other,
            },
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.head.is_empty() {
            return false;
        }
        if let Some(limited) = &self.limited {
            return limited.is_end_stream();
        }
        self.ended || self.upstream.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        if !self.head.is_empty() {
            // Frames put back by a layer: rare, and not worth an exact hint.
            return SizeHint::default();
        }
        if let Some(limited) = &self.limited {
            return limited.size_hint();
        }
        self.upstream.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
