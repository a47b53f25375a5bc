//! The balancer's response future.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use crate::completion::{Completion, TrackCompletion};
use crate::error::PolledAfterCompletion;

pin_project! {
    /// The response future of [`Balance`](crate::Balance): the endpoint's response, tracked to
    /// its end by the balancer's [`TrackCompletion`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        error: Option<BoxError>,
        completion: Option<Completion>,
        tracker: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, completion: Completion, tracker: C) -> Self {
        Self { inner: Some(inner), error: None, completion: Some(completion), tracker }
    }

    pub(crate) fn failed(error: BoxError, tracker: C) -> Self {
        Self { inner: None, error: Some(error), completion: None, tracker }
    }
}

impl<F, C, Rsp, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Rsp, E>>,
    E: Into<BoxError>,
    C: TrackCompletion<Rsp>,
{
    type Output = Result<C::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(error) = this.error.take() {
            return Poll::Ready(Err(error));
        }
        if this.completion.is_none() {
            return Poll::Ready(Err(PolledAfterCompletion.into()));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(PolledAfterCompletion.into()));
        };
        let result = ready!(inner.poll(cx));
        let Some(completion) = this.completion.take() else {
            return Poll::Ready(Err(PolledAfterCompletion.into()));
        };
        Poll::Ready(match result {
            Ok(response) => Ok(this.tracker.track(response, completion)),
            // The endpoint could not be reached, or its connection failed.
            Err(e) => Err(completion.fail(e.into())),
        })
    }
}
