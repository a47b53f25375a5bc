//! The response future of [`Limit`](crate::Limit).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use switchyard_core::error::BoxError;
use switchyard_core::{Error, ErrorKind, Outcome};

use crate::limiter::Permit;
use crate::track::TrackPermit;

pin_project! {
    /// Resolves to the inner response with the permit handed to it (to its body, for HTTP).
    pub struct ResponseFuture<F, T> {
        #[pin]
        inner: Option<F>,
        permit: Option<Permit>,
        refused: Option<Error>,
        tracking: T,
    }
}

impl<F, T> ResponseFuture<F, T> {
    pub(crate) fn new(inner: F, permit: Permit, tracking: T) -> Self {
        Self { inner: Some(inner), permit: Some(permit), refused: None, tracking }
    }

    pub(crate) fn refused(error: Error, tracking: T) -> Self {
        Self { inner: None, permit: None, refused: Some(error), tracking }
    }
}

impl<F, R, E, T> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    T: TrackPermit<R>,
{
    type Output = Result<T::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let error = this
                .refused
                .take()
                .unwrap_or_else(|| Error::new(ErrorKind::Overloaded { retry_after: None }));
            return Poll::Ready(Err(Box::new(error)));
        };
        match ready!(inner.poll(cx)) {
            Ok(response) => match this.permit.take() {
                Some(permit) => Poll::Ready(Ok(this.tracking.track(response, permit))),
                None => Poll::Ready(Err(Box::new(Error::new(ErrorKind::Overloaded { retry_after: None })))),
            },
            Err(e) => {
                let e: BoxError = e.into();
                if let Some(permit) = this.permit.take() {
                    permit.finish(outcome_of_error(&*e));
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

/// The outcome of a service error: a typed [`Error`]'s kind, `UNAVAILABLE` otherwise.
pub(crate) fn outcome_of_error(error: &(dyn std::error::Error + 'static)) -> Outcome {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<Error>() {
            return Outcome::from_code(e.status().code, e.status().retry_after);
        }
        next = e.source();
    }
    Outcome::Unavailable
}
