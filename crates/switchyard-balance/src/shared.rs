//! `Shared`: one balancer, many callers, no task in between.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tower::{BoxError, Service};

/// A cloneable handle on one service (a [`Balance`](crate::Balance), typically) that every clone
/// calls in place.
///
/// tower's `Buffer` shares a service by moving it into a task and sending each request there over
/// a channel: two task wake-ups per request, and the request waits for that task's turn. A pick
/// takes well under a microsecond, so `Shared` instead takes a lock for it: a call locks the
/// service, drives it to readiness, calls it (the balancer picks the endpoint and hands back the
/// endpoint's response future) and unlocks, all in the caller's task; the response is then awaited
/// without the lock. Callers that find the lock taken wait in FIFO order, each in its own task, so
/// the waiting needs no queue of its own: their number is bounded by the caller's concurrency (a
/// server's streams per connection, say).
///
/// `poll_ready` is always ready; readiness of the inner service (a balancer waiting for its first
/// endpoint) is awaited inside the response future, under the lock, so only one caller polls it
/// and no wake-up is lost.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use switchyard_balance::{Backend, Balance, CompleteOnResponse, Shared};
/// use switchyard_core::Endpoint;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let backends = (0..2).map(|i| {
///     let service = tower::service_fn(move |_req: http::Request<()>| async move { Ok::<_, Infallible>(i) });
///     Backend::new(Endpoint::new(format!("replica-{i}"), format!("http://10.0.0.{i}:9001")), service)
/// });
/// let balancer = Shared::new(Balance::from_backends(backends).with_completion(CompleteOnResponse));
/// // Clones share the balancer: every task gets its own handle.
/// let calls = (0..4).map(|_| tokio::spawn(balancer.clone().oneshot(http::Request::new(()))));
/// for call in calls {
///     assert!(call.await.unwrap().unwrap() < 2);
/// }
/// # }
/// ```
pub struct Shared<S> {
    inner: Arc<Mutex<S>>,
}

impl<S> Shared<S> {
    /// Shares `service`.
    pub fn new(service: S) -> Self {
        Self { inner: Arc::new(Mutex::new(service)) }
    }
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<S, Req> Service<Req> for Shared<S>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let response = {
                let mut service = inner.lock().await;
                std::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(Into::into)?;
                service.call(req)
            };
            response.await.map_err(Into::into)
        })
    }
}

impl<S: fmt::Debug> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.try_lock() {
            Ok(service) => f.debug_tuple("Shared").field(&*service).finish(),
            Err(_) => f.debug_tuple("Shared").field(&"<in use>").finish(),
        }
    }
}
