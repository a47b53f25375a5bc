//! The layer that tells a response what its caller knew: the request's deadline and
//! `max_tokens`, for the pace check of [`PacedHttpPermit`](crate::PacedHttpPermit).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use switchyard_core::{Deadline, RequestSize};
use tower_layer::Layer;
use tower_service::Service;

use crate::pace::PaceBudget;

/// Copies a request's [`Deadline`] and [`RequestSize::max_tokens`] into its response's
/// extensions as a [`PaceBudget`], for requests that carry a [`RequestSize`] (the generate
/// calls `switchyard-keys` sized); other responses pass untouched. Goes right under a
/// [`LimitLayer`](crate::LimitLayer) tracking with [`PacedHttpPermit`](crate::PacedHttpPermit).
#[derive(Debug, Clone, Copy, Default)]
pub struct PaceBudgetLayer;

impl<S> Layer<S> for PaceBudgetLayer {
    type Service = PaceBudgetService<S>;

    fn layer(&self, inner: S) -> PaceBudgetService<S> {
        PaceBudgetService { inner }
    }
}

/// The service of [`PaceBudgetLayer`].
#[derive(Debug, Clone)]
pub struct PaceBudgetService<S> {
    inner: S,
}

impl<S, ReqBody, RspBody> Service<http::Request<ReqBody>> for PaceBudgetService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<RspBody>>,
{
    type Response = http::Response<RspBody>;
    type Error = S::Error;
    type Future = BudgetFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let budget = req.extensions().get::<RequestSize>().map(|size| PaceBudget {
            deadline: req.extensions().get::<Deadline>().map(|d| d.0),
            max_tokens: Some(size.max_tokens),
        });
        BudgetFuture { inner: self.inner.call(req), budget }
    }
}

pin_project! {
    /// The response future of [`PaceBudgetService`].
    #[derive(Debug)]
    pub struct BudgetFuture<F> {
        #[pin]
        inner: F,
        budget: Option<PaceBudget>,
    }
}

impl<F, B, E> Future for BudgetFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(budget)) = (&mut result, this.budget.take()) {
            response.extensions_mut().insert(budget);
        }
        Poll::Ready(result)
    }
}
