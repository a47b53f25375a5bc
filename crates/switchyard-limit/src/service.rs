//! The service of [`LimitLayer`](crate::LimitLayer).

use std::task::{Context, Poll, ready};

use switchyard_core::error::BoxError;
use switchyard_core::{Error, ErrorKind};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::limiter::{Limiter, Permit};

/// A service whose requests each hold a [`Permit`] of a shared [`Limiter`] until their response
/// ends. Built by [`LimitLayer`](crate::LimitLayer).
#[derive(Debug)]
pub struct Limit<S> {
    inner: S,
    limiter: Limiter,
    /// Taken in `poll_ready`, spent by `call` (a clone starts without one, as tower's
    /// `ConcurrencyLimit`).
    permit: Option<Permit>,
}

impl<S> Limit<S> {
    /// `inner` under `limiter`.
    pub fn new(inner: S, limiter: Limiter) -> Self {
        Self { inner, limiter, permit: None }
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S: Clone> Clone for Limit<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), limiter: self.limiter.clone(), permit: None }
    }
}

impl<S, Req, B> Service<Req> for Limit<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = http::Response<crate::body::LimitBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            self.permit = Some(ready!(self.limiter.poll_acquire(cx)));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Called without `poll_ready` (a contract breach): take a place if there is one,
        // refuse otherwise rather than exceed the limit.
        match self.permit.take().or_else(|| self.limiter.try_acquire()) {
            Some(mut permit) => {
                permit.start_now();
                ResponseFuture::new(self.inner.call(req), permit)
            }
            None => ResponseFuture::refused(Error::new(ErrorKind::Overloaded { retry_after: None })),
        }
    }
}
