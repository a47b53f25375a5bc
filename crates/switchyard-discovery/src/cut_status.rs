//! The status of a call cut by a drain timeout, as a tonic client sees it.
//!
//! tonic turns a connection that fails under a call into `UNKNOWN` ("h2 protocol error"), its
//! cause kept only in the status's source. [`CutStatus`] wraps a tonic service (the
//! [`Connector`](crate::Connector)'s `Channel`) so that a call cut because its endpoint was
//! removed and the drain timeout passed ends with `UNAVAILABLE` and a message saying so: a status
//! clients retry elsewhere. Every other answer and error passes unchanged; per call it costs a
//! wrapper around the response future and body, nothing allocated.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;

use crate::drain::{DrainTimedOut, is_drain_timeout};

/// A tonic service whose calls cut by a drain timeout end with `UNAVAILABLE` (see the
/// [module documentation](self)).
#[derive(Debug, Clone)]
pub struct CutStatus<S> {
    inner: S,
    timeout: Duration,
}

impl<S> CutStatus<S> {
    /// `inner`, whose connections are under a drain of this `timeout` (named in the message).
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    /// The service inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req, B> tower::Service<Req> for CutStatus<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<CutStatusBody<B>>;
    type Error = S::Error;
    type Future = CutStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        CutStatusFuture { inner: self.inner.call(req), timeout: self.timeout }
    }
}

pin_project! {
    /// The response future of [`CutStatus`].
    #[derive(Debug)]
    pub struct CutStatusFuture<F> {
        #[pin]
        inner: F,
        timeout: Duration,
    }
}

impl<F, B, E> Future for CutStatusFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CutStatusBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let timeout = *this.timeout;
        Poll::Ready(Ok(response.map(|inner| CutStatusBody { inner, timeout })))
    }
}

pin_project! {
    /// The response body of [`CutStatus`]: the service's, with a drain timeout's error turned
    /// into `UNAVAILABLE`.
    #[derive(Debug)]
    pub struct CutStatusBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
    }
}

impl<B> Body for CutStatusBody<B>
where
    B: Body<Error = Status>,
{
    type Data = B::Data;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Status>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Err(status)) if is_drain_timeout(&status) => Poll::Ready(Some(Err(Status::unavailable(
                DrainTimedOut { timeout: *this.timeout }.to_string(),
            )))),
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
