//! `Shared`: one balancer, many callers, no task in between.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures::future::BoxFuture;
use tower::{BoxError, Service};

/// A cloneable handle on one service (a [`Balance`](crate::Balance), typically) that every clone
/// calls in place, from any task or thread.
///
/// tower's `Buffer` shares a service by moving it into a task and sending each request there over
/// a channel: two task wake-ups per request, and the request waits for that task's turn. A pick
/// takes well under a microsecond, so `Shared` instead takes a lock for it: a call locks the
/// service, polls it for readiness, calls it (the balancer picks the endpoint and hands back the
/// endpoint's response future) and unlocks, all in the caller's task; the response is then awaited
/// without the lock. The lock is a plain mutex held only for that poll and call, never across an
/// `.await`, so a caller on a busy thread cannot hold up the others.
///
/// When the inner service is not ready (a balancer still waiting for its first endpoint), the
/// caller waits without the lock. The inner service is always polled with one waker of `Shared`'s
/// own, which wakes every waiting caller, so no wake-up is lost whichever caller polled last;
/// each then polls again. The waiting callers are the callers' own tasks: their number is bounded
/// by the callers' concurrency (a server's streams), and `Shared` queues nothing itself.
///
/// `poll_ready` reports the inner service's readiness (a balancer whose endpoints are all at
/// their limit is not ready), so that a queue in front, such as `switchyard-shed`'s, holds its
/// requests until there is room; the call checks again, since another caller may have taken the
/// room in between, and waits inside its response future if so. (A call that finds the service
/// ready calls it at once, from `call`; only one that finds it not ready waits.)
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use switchyard_balance::{Backend, Balance, CompleteOnResponse, Shared};
/// use switchyard_core::Endpoint;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// let backends = (0..2).map(|i| {
///     let service = tower::service_fn(move |_req: http::Request<()>| async move { Ok::<_, Infallible>(i) });
///     Backend::new(Endpoint::new(format!("replica-{i}"), format!("http://10.0.0.{i}:9001")), service)
/// });
/// let balancer = Shared::new(Balance::from_backends(backends).with_completion(CompleteOnResponse));
/// // Clones share the balancer: every task, on any thread, gets its own handle.
/// let calls = (0..4).map(|_| tokio::spawn(balancer.clone().oneshot(http::Request::new(()))));
/// for call in calls {
///     assert!(call.await.unwrap().unwrap() < 2);
/// }
/// # }
/// ```
pub struct Shared<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    service: Mutex<S>,
    waiters: Arc<Waiters>,
    /// Wakes every waiter; the only waker the inner service ever sees.
    waker: Waker,
}

/// The callers waiting for the inner service to become ready.
#[derive(Default)]
struct Waiters(Mutex<Vec<Waker>>);

impl Waiters {
    fn register(&self, waker: &Waker) {
        let mut waiters = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waiters = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in waiters {
            waker.wake();
        }
    }
}

impl<S> Shared<S> {
    /// Shares `service`.
    pub fn new(service: S) -> Self {
        let waiters = Arc::new(Waiters::default());
        let waker = Waker::from(waiters.clone());
        Self { inner: Arc::new(Inner { service: Mutex::new(service), waiters, waker }) }
    }
}

impl<S> Inner<S> {
    fn lock(&self) -> MutexGuard<'_, S> {
        self.service.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the service is ready; `cx` is woken when it may have become so.
    fn poll_ready<Req>(&self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let mut service = self.lock();
        let mut inner_cx = Context::from_waker(&self.waker);
        let mut ready = service.poll_ready(&mut inner_cx);
        if ready.is_pending() {
            self.waiters.register(cx.waker());
            ready = service.poll_ready(&mut inner_cx);
        }
        ready.map_err(Into::into)
    }

    /// Calls the service with `req` once it is ready; `cx` is the caller's, woken when the
    /// service may have become ready.
    fn poll_call<Req>(&self, cx: &mut Context<'_>, req: &mut Option<Req>) -> Poll<Result<S::Future, BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let mut service = self.lock();
        let mut inner_cx = Context::from_waker(&self.waker);
        let mut ready = service.poll_ready(&mut inner_cx);
        if ready.is_pending() {
            // Register, then look again: a wake between the first poll and the registration
            // would otherwise be missed.
            self.waiters.register(cx.waker());
            ready = service.poll_ready(&mut inner_cx);
        }
        match ready {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(())) => match req.take() {
                Some(req) => Poll::Ready(Ok(service.call(req))),
                None => Poll::Ready(Err(crate::PolledAfterCompletion.into())),
            },
        }
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Ready now, as a balancer with room nearly always is: called here, in place, and only
        // its response future is boxed (the request is not moved into a waiting future first,
        // then out of it again).
        {
            let mut service = self.inner.lock();
            match service.poll_ready(&mut Context::from_waker(&self.inner.waker)) {
                Poll::Ready(Ok(())) => {
                    use futures::TryFutureExt;
                    return Box::pin(service.call(req).map_err(Into::into));
                }
                Poll::Ready(Err(e)) => {
                    let e: BoxError = e.into();
                    return Box::pin(async move { Err(e) });
                }
                Poll::Pending => {}
            }
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut req = Some(req);
            let response = poll_fn(|cx| inner.poll_call(cx, &mut req)).await?;
            response.await.map_err(Into::into)
        })
    }
}

impl<S: fmt::Debug> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.service.try_lock() {
            Ok(service) => f.debug_tuple("Shared").field(&*service).finish(),
            Err(_) => f.debug_tuple("Shared").field(&"<in use>").finish(),
        }
    }
}
