//! The response body that holds a request's permit until it ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_core::Outcome;

use crate::limiter::Permit;
use crate::messages::GrpcMessages;
use crate::pace::{Pace, PaceCheck};

pin_project! {
    /// A response body that keeps its request's [`Permit`] until it ends, and finishes it with
    /// the outcome its trailers carry.
    ///
    /// The RTT is taken at the first frame (the whole answer of a unary call, the first message
    /// of a stream). A gRPC body that ends without trailers, or fails, was cut short
    /// (`UNAVAILABLE`); a body dropped before its end was cancelled (no sample).
    ///
    /// A body [paced](Self::wrap_paced) counts its gRPC messages as tokens for a [`PaceCheck`]
    /// and settles its permit as a drop (`DEADLINE_EXCEEDED`) the moment the stream falls
    /// behind, keeping its place until it ends.
    pub struct LimitBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
        grpc: bool,
        pace: Option<(PaceCheck, GrpcMessages)>,
    }
}

impl<B: Body> LimitBody<B> {
    /// Wraps `response`'s body; a trailers-only gRPC response (its status in the headers), or a
    /// body already at its end, finishes the permit at once.
    pub fn wrap(response: http::Response<B>, permit: Option<Permit>) -> http::Response<Self> {
        let (parts, inner) = response.into_parts();
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut permit = permit;
        if let Some(mut p) = permit.take() {
            if let Some(outcome) = Outcome::from_trailers(&parts.headers) {
                p.first_byte();
                p.finish(outcome);
            } else if !parts.status.is_success() {
                p.first_byte();
                p.finish(Outcome::from_http_status(parts.status));
            } else if inner.is_end_stream() {
                p.first_byte();
                p.finish(cut_short(grpc));
            } else {
                permit = Some(p);
            }
        }
        http::Response::from_parts(parts, Self { inner, permit, grpc, pace: None })
    }

    /// As [`wrap`](Self::wrap), and each gRPC message of the body counts as a token of `pace`
    /// (a server-streaming generate call sends one message per token, or per few tokens).
    pub fn wrap_paced(
        response: http::Response<B>,
        permit: Option<Permit>,
        pace: PaceCheck,
    ) -> http::Response<Self> {
        let mut response = Self::wrap(response, permit);
        if response.body().permit.is_some() {
            response.body_mut().pace = Some((pace, GrpcMessages::default()));
        }
        response
    }

    /// Whether the body still holds its permit.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }
}

impl<B: Default> Default for LimitBody<B> {
    /// An empty body holding no permit (the body of a status a layer above answers with).
    fn default() -> Self {
        Self { inner: B::default(), permit: None, grpc: false, pace: None }
    }
}

impl<B> Body for LimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    if let Some(mut p) = this.permit.take() {
                        p.first_byte();
                        p.finish(Outcome::from_trailers(trailers).unwrap_or(Outcome::Ok));
                    }
                } else if let Some(p) = this.permit.as_mut() {
                    p.first_byte();
                    if let (Some((check, messages)), Some(data)) = (this.pace.as_mut(), f.data_ref()) {
                        let now = tokio::time::Instant::now();
                        for _ in 0..messages.feed(data) {
                            if check.token(now) == Pace::Behind {
                                p.settle(Outcome::DeadlineExceeded);
                            }
                        }
                    }
                    if this.inner.is_end_stream()
                        && let Some(p) = this.permit.take()
                    {
                        p.finish(cut_short(*this.grpc));
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(p) = this.permit.take() {
                    p.finish(Outcome::Unavailable);
                }
            }
            None => {
                if let Some(p) = this.permit.take() {
                    p.finish(cut_short(*this.grpc));
                }
            }
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

fn cut_short(grpc: bool) -> Outcome {
    if grpc { Outcome::Unavailable } else { Outcome::Ok }
}
