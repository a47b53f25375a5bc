//! The response future of [`Limit`](crate::Limit).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use switchyard_core::error::BoxError;
use switchyard_core::{Error, ErrorKind, Outcome};

use crate::body::LimitBody;
use crate::limiter::Permit;

pin_project! {
    /// Resolves to the inner response with the permit handed to its body.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<Permit>,
        refused: Option<Error>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, permit: Permit) -> Self {
        Self { inner: Some(inner), permit: Some(permit), refused: None }
    }

    pub(crate) fn refused(error: Error) -> Self {
        Self { inner: None, permit: None, refused: Some(error) }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<http::Response<LimitBody<B>>, BoxError>;

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
            Ok(response) => Poll::Ready(Ok(LimitBody::wrap(response, this.permit.take()))),
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
