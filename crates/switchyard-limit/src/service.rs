//! The service of [`LimitLayer`](crate::LimitLayer).

use std::task::{Context, Poll, ready};

use switchyard_core::error::BoxError;
use switchyard_core::{Error, ErrorKind};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::limiter::{Limiter, Permit};
use crate::track::{HttpPermit, TrackPermit};

/// A service whose requests each hold a [`Permit`] of a shared [`Limiter`] until their response
/// ends. Built by [`LimitLayer`](crate::LimitLayer).
#[derive(Debug)]
pub struct Limit<S, T = HttpPermit> {
    inner: S,
    limiter: Limiter,
    tracking: T,
    /// Taken in `poll_ready`, spent by `call` (a clone starts without one, as tower's
    /// `ConcurrencyLimit`).
    permit: Option<Permit>,
}

impl<S> Limit<S> {
    /// `inner` under `limiter`, its responses HTTP.
    pub fn new(inner: S, limiter: Limiter) -> Self {
        Self::with_tracking(inner, limiter, HttpPermit)
    }
}

impl<S, T> Limit<S, T> {
    /// `inner` under `limiter`, its responses holding their permits as `tracking` says.
    pub fn with_tracking(inner: S, limiter: Limiter, tracking: T) -> Self {
        Self { inner, limiter, tracking, permit: None }
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S: Clone, T: Clone> Clone for Limit<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            tracking: self.tracking.clone(),
            permit: None,
        }
    }
}

impl<S, Req, T> Service<Req> for Limit<S, T>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    T: TrackPermit<S::Response> + Clone,
{
    type Response = T::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, T>;

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
                ResponseFuture::new(self.inner.call(req), permit, self.tracking.clone())
            }
            None => ResponseFuture::refused(
                Error::new(ErrorKind::Overloaded { retry_after: None }),
                self.tracking.clone(),
            ),
        }
    }
}
