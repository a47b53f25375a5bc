//! The service of [`ShedLayer`](crate::ShedLayer).

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use switchyard_core::error::BoxError;
use switchyard_core::{Deadline, Error, ErrorKind, Priority, parse_grpc_timeout};
use tokio::time::Instant;
use tower_service::Service;

use crate::queue::{Queue, Refusal, Turn};
use crate::stats::{Reason, ShedStats};

/// A service that admits requests to the service below it through a shared, bounded queue.
/// Built by [`ShedLayer`](crate::ShedLayer).
///
/// It is always ready; each call waits its turn in its own future: in line by class (critical,
/// standard, sheddable), first come first served within one; the first in line takes the inner
/// service's next place (its `poll_ready`). A request is refused, with a typed
/// [`Error`] the client receives as its gRPC status, when:
/// - its deadline has passed (`DEADLINE_EXCEEDED`): on arrival, while it waits, at dispatch; it
///   never reaches the service;
/// - its expected wait exceeds the time left to its deadline (`RESOURCE_EXHAUSTED`). The
///   expected wait is the waiters of its class and above, plus one, times the average interval
///   between dispatches, stretched by the share of places the classes above its own have been
///   taking (they overtake it while it waits);
/// - the queue is overloaded (waits above `target` for an `interval`, CoDel's test; or above it
///   again within an `interval` of leaving overload, as CoDel resumes dropping, so that waits
///   hovering at `target` under sustained overload do not reopen the queue each time one dips
///   below it; admission also stays held to `target` while requests still wait within that
///   `interval`) and its
///   expected wait exceeds `target`, or it has waited past `target`: the lowest class first,
///   critical requests never for delay (the wait watched is the oldest waiter's too, so that
///   critical requests served ahead of the line do not hide the waits behind them);
/// - the queue is full of requests of its class or above (otherwise the newest waiter of the
///   lowest class gives up its place).
///
/// Refusals for capacity carry `grpc-retry-pushback-ms`: the queue's expected wait, at least
/// `target`. Every refusal is counted ([`ShedStats`]).
pub struct Shed<S> {
    inner: S,
    queue: Arc<Queue>,
}

impl<S> Shed<S> {
    pub(crate) fn new(inner: S, queue: Arc<Queue>) -> Self {
        Self { inner, queue }
    }

    /// The queue's figures.
    pub fn stats(&self) -> ShedStats {
        self.queue.stats()
    }
}

impl<S: Clone> Clone for Shed<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), queue: self.queue.clone() }
    }
}

impl<S> std::fmt::Debug for Shed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shed").field("stats", &self.queue.stats()).finish()
    }
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Each request waits for the inner service's readiness with a clone of its own.
        Box::pin(admit(self.queue.clone(), self.inner.clone(), req))
    }
}

/// The request's class and deadline: the `Priority` and `Deadline` keys, or else its
/// `x-priority` and `grpc-timeout` headers (the deadline then goes into its extensions).
pub(crate) fn keys<B>(req: &mut http::Request<B>, now: Instant) -> (Priority, Option<Deadline>) {
    let priority = req.extensions().get::<Priority>().copied().unwrap_or_else(|| {
        req.headers()
            .get("x-priority")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    });
    let deadline = match req.extensions().get::<Deadline>() {
        Some(d) => Some(*d),
        None => {
            let timeout = req.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes()));
            let deadline = timeout.map(|t| Deadline::after(now, t));
            if let Some(d) = deadline {
                req.extensions_mut().insert(d);
            }
            deadline
        }
    };
    (priority, deadline)
}

/// Leaves the queue when the request's future is dropped while it waits.
struct Ticket<'a> {
    queue: &'a Queue,
    id: Option<u64>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.queue.leave(id);
        }
    }
}

/// A request in flight: tells the queue when it finishes, however it ends.
struct Busy<'a>(&'a Queue);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.finish(Instant::now());
    }
}

async fn admit<S, B>(
    queue: Arc<Queue>,
    mut inner: S,
    mut req: http::Request<B>,
) -> Result<S::Response, BoxError>
where
    S: Service<http::Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    let now = Instant::now();
    let (priority, deadline) = keys(&mut req, now);
    let refuse = |reason: Reason, retry_after| -> BoxError {
        let kind = match reason {
            Reason::Expired => ErrorKind::DeadlineExceeded,
            _ => ErrorKind::Shed { retry_after: Some(retry_after) },
        };
        let error = Error::new(kind);
        Box::new(match &queue.config.pool {
            Some(pool) => error.in_pool(pool.clone()),
            None => error,
        })
    };
    if deadline.is_some_and(|d| d.is_past(now)) {
        queue.count(Reason::Expired, priority);
        return Err(refuse(Reason::Expired, queue.config.target));
    }

    // Nobody waiting: straight through if the service has room.
    if queue.is_empty() {
        match poll_fn(|cx| Poll::Ready(inner.poll_ready(cx).map_err(Into::into))).await {
            Poll::Ready(Ok(())) => {
                queue.pass(priority, now);
                let _busy = Busy(&queue);
                return inner.call(req).await.map_err(Into::into);
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
    }

    let id = match queue.enqueue(priority, deadline, now) {
        Ok(id) => id,
        Err(Refusal { reason, retry_after }) => {
            queue.count(reason, priority);
            return Err(refuse(reason, retry_after));
        }
    };
    let mut ticket = Ticket { queue: &queue, id: Some(id) };
    let mut expiry = pin!(tokio::time::sleep_until(deadline.map_or_else(far_future, |d| d.0)));
    // Whether `inner` was polled for readiness while this request was first in line: a service
    // may then hold a place for it (tower's `ConcurrencyLimit` keeps the semaphore permit it
    // waits for), which must go to the new head if this request loses its turn to a higher class.
    let mut reserving = false;
    let waited = poll_fn(|cx| {
        if expiry.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(None));
        }
        match queue.turn(id, cx) {
            Turn::Refused(refusal) => Poll::Ready(Err(Some(refusal))),
            Turn::Behind => {
                if std::mem::take(&mut reserving) {
                    // A fresh clone holds nothing; dropping the old one gives back what it held.
                    inner = inner.clone();
                    queue.wake_head();
                }
                Poll::Pending
            }
            Turn::Head => match inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Ok(()))),
                Poll::Ready(Err(e)) => Poll::Ready(Ok(Err(e.into()))),
                Poll::Pending => {
                    reserving = true;
                    Poll::Pending
                }
            },
        }
    })
    .await;
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(Some(refusal)) => {
            ticket.id = None; // refused waiters are out of the queue already
            return Err(refuse(refusal.reason, refusal.retry_after));
        }
        Err(None) => {
            drop(ticket);
            queue.count(Reason::Expired, priority);
            return Err(refuse(Reason::Expired, queue.config.target));
        }
    }
    ticket.id = None;
    let now = Instant::now();
    queue.dispatch(id, now);
    let _busy = Busy(&queue);
    if deadline.is_some_and(|d| d.is_past(now)) {
        queue.count(Reason::Expired, priority);
        return Err(refuse(Reason::Expired, queue.config.target));
    }
    inner.call(req).await.map_err(Into::into)
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
