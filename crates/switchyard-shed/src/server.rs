//! The server-side variant: admission read off the server's own queue.
//!
//! A model server already queues: its engine holds the requests waiting for a batch slot.
//! [`ServerShedLayer`] keeps no queue and counts nothing of its own; at each arrival it reads the
//! engine's queue ([`QueueSignal`]: how many wait, how long the head has waited) and decides at
//! once, before the request reaches the engine:
//!
//! - its deadline has passed: `DEADLINE_EXCEEDED`;
//! - the wait a newcomer to the FIFO queue should expect (below) exceeds the time left to its
//!   deadline: refused (`RESOURCE_EXHAUSTED`);
//! - CoDel's test: the expected wait has stayed above `target` for a whole `interval` (a spike
//!   does not count), or rises above it again within an `interval` of having fallen below
//!   (CoDel's memory of a recent overload, so that a queue that dips below target for a moment
//!   does not let a whole interval's arrivals in); then a sheddable request is refused while the
//!   expected wait exceeds `target`, a standard one while it exceeds twice `target`, and a
//!   critical one never for delay (only for its deadline or the engine's own queue bound);
//! - an expected wait longer than the server's service time is more than a spike may bring:
//!   sheddable and standard requests are refused then whatever the state. The service time is
//!   learnt by the layer (the time to answer the requests that found nobody waiting, followed
//!   down at once and up by 1/8, as such a request may still have waited for a slot), taken as
//!   at least twice `target` and at most `interval` (which stands for it until one is
//!   learnt). A request let in on a spike thus waits at most about as long as it is served, so
//!   that its latency stays within some twice its service time: a server that receives its load
//!   in bursts (a balancer's herd of picks on the replica that looks best) no longer queues a
//!   burst to `interval` before CoDel's state turns;
//! - `max_queue` requests wait already: sheddable and standard requests are refused; critical
//!   ones go on to the engine, whose own bound is the last word.
//!
//! Every test above, CoDel's state included, judges the wait a newcomer should expect, not the
//! head's: the head's wait plus `waiting` times the measured time between completions while the
//! queue was busy (an EWMA learnt by the layer from the responses it passes back; a gap that
//! began with an empty queue says nothing of the service rate and is not learnt). Until it has
//! learnt one, the head's wait stands for the expected wait. CoDel proper watches the head's
//! sojourn time, but at a server's door the head's wait misleads under overload: it measures how
//! fast the queue filled (`waiting` over the arrival rate), not how fast it drains (`waiting`
//! over the service rate), so at three times the capacity a queue a newcomer waits 100 ms
//! behind shows a head that has waited some 35 ms. Judged by the head, the state counted as
//! drained at each such moment and let every arrival in until a head had waited `target` again,
//! which stacked the queue far past the class thresholds and set the tail of admitted requests.
//!
//! Refusals for capacity carry `grpc-retry-pushback-ms` (the expected wait, at least `target`),
//! through `StatusLayer`; every refusal and admission is counted by reason and class
//! ([`ShedStats`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use switchyard_core::error::BoxError;
use switchyard_core::{Error, ErrorKind, Priority};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::ShedConfig;
use crate::service::keys;
use crate::stats::{Counters, Reason, ShedStats};

/// What a server's own queue says at a request's arrival.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSignal {
    /// Requests waiting in the server's queue (not yet running).
    pub waiting: u32,
    /// How long the request at the head of that queue has waited (zero when nothing waits).
    pub head_wait: Duration,
    /// Requests in service (running, not waiting), if the server tells. With it the layer
    /// counts as waiting too the requests it has let in that have not reached the queue yet:
    /// the requests of a burst are judged one after another before the first of them is queued,
    /// and would all see the queue as it was before the burst.
    pub running: Option<u32>,
}

type Signal = Arc<dyn Fn() -> QueueSignal + Send + Sync>;

/// CoDel's state, updated at each arrival.
#[derive(Default)]
struct Codel {
    /// Since when the expected wait has been above target.
    above_since: Option<Instant>,
    /// Whether the queue counts as overloaded.
    overloaded: bool,
    /// When it last stopped counting as overloaded.
    left_at: Option<Instant>,
}

/// The measured time between completions while the queue was busy.
#[derive(Default)]
struct Pace {
    /// The last completion, and whether requests were waiting then.
    last: Option<(Instant, bool)>,
    /// EWMA (weight 1/8) of the gaps between completions that began with a busy queue.
    gap: Option<Duration>,
    /// The time to answer a request that found nobody waiting: the server's service time,
    /// queueing aside. Followed down at once and up by 1/8 of a longer sample: a request that
    /// found nobody waiting may still have waited for a busy slot to free, which is no part of
    /// the service.
    service: Option<Duration>,
}

/// `old` moved 1/8 of the way to `sample`.
fn ewma(old: Option<Duration>, sample: Duration) -> Duration {
    match old {
        Some(old) => (old.saturating_mul(7) + sample) / 8,
        None => sample,
    }
}

impl Pace {
    /// Notes a completion at `now` with `waiting` requests queued.
    /// `admitted` is when the request was let in, if it found nobody waiting then.
    fn complete(&mut self, now: Instant, waiting: u32, admitted: Option<Instant>) {
        if let Some((last, true)) = self.last {
            self.gap = Some(ewma(self.gap, now.saturating_duration_since(last)));
        }
        if let Some(at) = admitted {
            let took = now.saturating_duration_since(at);
            self.service = Some(match self.service {
                Some(old) if took < old => took,
                old => ewma(old, took),
            });
        }
        self.last = Some((now, waiting > 0));
    }
}

struct State {
    config: ShedConfig,
    pace: Mutex<Pace>,
    /// Only requests whose path starts with this are judged (all when `None`).
    path_prefix: Option<Arc<str>>,
    signal: Signal,
    counters: Counters,
    codel: Mutex<Codel>,
    /// Requests let in whose response has not left yet (a stream counts until its headers).
    in_flight: AtomicU32,
}

/// One request let in: counted in `in_flight` until dropped.
struct Admitted(Arc<State>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sheds requests at a model server's door from the server's own queue signals (the engine's
/// queue length and head-of-queue wait); see the [module](self) docs. Clones share their state.
#[derive(Clone)]
pub struct ServerShedLayer {
    state: Arc<State>,
}

impl ServerShedLayer {
    /// A layer set up by `config` (`target`, `interval`, `max_queue`, `pool`) that reads the
    /// server's queue through `signal` at each arrival.
    pub fn new(config: ShedConfig, signal: impl Fn() -> QueueSignal + Send + Sync + 'static) -> Self {
        Self {
            state: Arc::new(State {
                config,
                path_prefix: None,
                signal: Arc::new(signal),
                counters: Counters::default(),
                codel: Mutex::new(Codel::default()),
                pace: Mutex::new(Pace::default()),
                in_flight: AtomicU32::new(0),
            }),
        }
    }

    /// Judges only requests whose URI path starts with `prefix` (a gRPC service's, e.g.
    /// `/inference.GRPCInferenceService/`), and lets others (health checks, reflection) through
    /// untouched. Call before the layer's first clone.
    pub fn with_path_prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.path_prefix = Some(prefix.into());
        }
        self
    }

    /// The figures: the server's queue now, whether it counts as overloaded, admitted and
    /// refused by reason and class.
    pub fn stats(&self) -> ShedStats {
        let waiting = self.state.read().waiting;
        let overloaded = self.state.codel.lock().unwrap_or_else(PoisonError::into_inner).overloaded;
        self.state.counters.snapshot(usize::try_from(waiting).unwrap_or(usize::MAX), overloaded)
    }

    /// The settings.
    pub fn config(&self) -> &ShedConfig {
        &self.state.config
    }
}

impl std::fmt::Debug for ServerShedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerShedLayer").field("config", &self.state.config).finish()
    }
}

impl<S> Layer<S> for ServerShedLayer {
    type Service = ServerShed<S>;

    fn layer(&self, inner: S) -> ServerShed<S> {
        ServerShed { inner, state: self.state.clone() }
    }
}

/// The service of [`ServerShedLayer`]: ready when the service below is; refuses at once or
/// passes the request on.
#[derive(Clone)]
pub struct ServerShed<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> std::fmt::Debug for ServerShed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerShed").field("config", &self.state.config).finish()
    }
}

impl State {
    /// The server's queue now, counting as waiting the requests let in that are neither
    /// queued nor running yet (when the server tells how many run).
    fn read(&self) -> QueueSignal {
        let mut signal = (self.signal)();
        if let Some(running) = signal.running {
            let unseen = self.in_flight.load(Ordering::Relaxed).saturating_sub(running);
            signal.waiting = signal.waiting.max(unseen);
        }
        signal
    }

    /// The wait a newcomer should expect behind `signal`'s queue.
    fn expected_wait(&self, signal: QueueSignal) -> Duration {
        let gap = self.pace.lock().unwrap_or_else(PoisonError::into_inner).gap;
        signal.head_wait + gap.map_or(Duration::ZERO, |g| g.saturating_mul(signal.waiting))
    }

    /// The longest expected wait a spike may bring a non-critical request: the learnt service
    /// time (`interval` until one is learnt), never less than twice `target` (a spike is judged
    /// no stricter than a standing queue) nor more than `interval`.
    fn spike_bound(&self) -> Duration {
        let config = &self.config;
        let service = self.pace.lock().unwrap_or_else(PoisonError::into_inner).service;
        service.map_or(config.interval, |s| s.max(config.target.saturating_mul(2)).min(config.interval))
    }

    /// Notes a response leaving the server; `admitted` is when its request was let in, if it
    /// found nobody waiting then.
    fn complete(&self, admitted: Option<Instant>) {
        let waiting = self.read().waiting;
        self.pace.lock().unwrap_or_else(PoisonError::into_inner).complete(Instant::now(), waiting, admitted);
    }

    /// Whether (and why) a request of `priority` with `remaining` time to its deadline is refused
    /// at `now` behind the queue `signal` reads, and the pushback.
    fn judge(
        &self,
        priority: Priority,
        remaining: Option<Duration>,
        signal: QueueSignal,
        now: Instant,
    ) -> Option<(Reason, Duration)> {
        let config = &self.config;
        if remaining == Some(Duration::ZERO) {
            return Some((Reason::Expired, config.target));
        }
        let wait = self.expected_wait(signal);
        let overloaded = {
            let mut codel = self.codel.lock().unwrap_or_else(PoisonError::into_inner);
            if wait > config.target {
                let since = *codel.above_since.get_or_insert(now);
                let recently =
                    codel.left_at.is_some_and(|t| now.saturating_duration_since(t) < config.interval);
                if now.saturating_duration_since(since) >= config.interval || recently {
                    codel.overloaded = true;
                }
            } else {
                if codel.overloaded {
                    codel.left_at = Some(now);
                }
                codel.above_since = None;
                codel.overloaded = false;
            }
            codel.overloaded
        };
        let pushback = wait.max(config.target);
        if remaining.is_some_and(|r| wait > r) {
            return Some((Reason::Deadline, pushback));
        }
        let waiting = usize::try_from(signal.waiting).unwrap_or(usize::MAX);
        if priority != Priority::Critical && waiting >= config.max_queue {
            return Some((Reason::QueueFull, pushback));
        }
        let tolerated = match priority {
            Priority::Sheddable => Some(config.target),
            Priority::Standard => Some(config.target.saturating_mul(2)),
            Priority::Critical => None,
        };
        let spike = self.spike_bound();
        if tolerated.is_some_and(|t| (overloaded && wait > t) || wait > spike) {
            return Some((Reason::Delay, pushback));
        }
        None
    }
}

impl<S, B> Service<http::Request<B>> for ServerShed<S>
where
    S: Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if self.state.path_prefix.as_ref().is_some_and(|p| !req.uri().path().starts_with(&**p)) {
            let fut = self.inner.call(req);
            return async move { fut.await.map_err(Into::into) }.boxed();
        }
        let now = Instant::now();
        let (priority, deadline) = keys(&mut req, now);
        let remaining = deadline.map(|d| d.remaining(now));
        let signal = self.state.read();
        match self.state.judge(priority, remaining, signal, now) {
            Some((reason, pushback)) => {
                self.state.counters.refuse(reason, priority);
                let kind = match reason {
                    Reason::Expired => ErrorKind::DeadlineExceeded,
                    _ => ErrorKind::Shed { retry_after: Some(pushback) },
                };
                let error = match &self.state.config.pool {
                    Some(pool) => Error::new(kind).in_pool(pool.clone()),
                    None => Error::new(kind),
                };
                futures::future::ready(Err(Box::new(error) as BoxError)).boxed()
            }
            None => {
                self.state.counters.admit(priority);
                self.state.in_flight.fetch_add(1, Ordering::Relaxed);
                let ticket = Admitted(self.state.clone());
                let fut = self.inner.call(req);
                let admitted = (signal.waiting == 0 && signal.head_wait.is_zero()).then_some(now);
                async move {
                    let out = fut.await.map_err(Into::into);
                    let state = ticket.0.clone();
                    drop(ticket);
                    state.complete(admitted);
                    out
                }
                .boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::convert::Infallible;
    use std::sync::atomic::AtomicU64;

    use tower::ServiceExt;

    use super::*;

    /// A fake engine queue: waiting count and the head's arrival, in milliseconds of paused time.
    #[derive(Default)]
    struct FakeQueue {
        waiting: AtomicU32,
        head_wait_ms: AtomicU64,
        /// Requests in service, if the fake server tells.
        running: Mutex<Option<u32>>,
    }

    fn setup() -> (Arc<FakeQueue>, ServerShedLayer, Arc<AtomicU32>) {
        let queue = Arc::new(FakeQueue::default());
        let q = queue.clone();
        let layer = ServerShedLayer::new(
            ShedConfig {
                max_queue: 8,
                target: Duration::from_millis(10),
                interval: Duration::from_millis(100),
                pool: None,
            },
            move || QueueSignal {
                waiting: q.waiting.load(Ordering::Relaxed),
                head_wait: Duration::from_millis(q.head_wait_ms.load(Ordering::Relaxed)),
                running: *q.running.lock().unwrap(),
            },
        );
        let reached = Arc::new(AtomicU32::new(0));
        (queue, layer, reached)
    }

    async fn send(
        layer: &ServerShedLayer,
        reached: &Arc<AtomicU32>,
        priority: &'static str,
        timeout: Option<&'static str>,
    ) -> Result<(), BoxError> {
        send_served_in(layer, reached, priority, timeout, Duration::ZERO).await
    }

    /// Sends a request to a server that takes `service` to answer it.
    async fn send_served_in(
        layer: &ServerShedLayer,
        reached: &Arc<AtomicU32>,
        priority: &'static str,
        timeout: Option<&'static str>,
        service: Duration,
    ) -> Result<(), BoxError> {
        let reached = reached.clone();
        let svc = layer.layer(tower::service_fn(move |_req: http::Request<()>| {
            reached.fetch_add(1, Ordering::Relaxed);
            async move {
                if !service.is_zero() {
                    tokio::time::sleep(service).await;
                }
                Ok::<_, Infallible>(())
            }
        }));
        let mut req = http::Request::new(());
        req.headers_mut().insert("x-priority", http::HeaderValue::from_static(priority));
        if let Some(t) = timeout {
            req.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static(t));
        }
        svc.oneshot(req).await
    }

    fn reason(e: &BoxError) -> ErrorKind {
        e.downcast_ref::<Error>().unwrap().kind().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_spike_sheds_nothing_a_standing_queue_sheds_by_class() {
        let (queue, layer, reached) = setup();
        // Nothing counted as waiting: no service time is learnt, the expected wait is the head's.
        queue.head_wait_ms.store(50, Ordering::Relaxed);
        // Above target, but not yet for an interval: a spike.
        for class in ["sheddable", "standard", "critical"] {
            send(&layer, &reached, class, None).await.unwrap();
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        // Held for an interval: sheddable (50 > 10) and standard (50 > 20) go, critical stays.
        let e = send(&layer, &reached, "sheddable", None).await.unwrap_err();
        assert!(
            matches!(reason(&e), ErrorKind::Shed { retry_after: Some(d) } if d == Duration::from_millis(50))
        );
        send(&layer, &reached, "standard", None).await.unwrap_err();
        send(&layer, &reached, "critical", None).await.unwrap();
        // Between target and twice target: standard passes, sheddable still goes.
        queue.head_wait_ms.store(15, Ordering::Relaxed);
        send(&layer, &reached, "standard", None).await.unwrap();
        send(&layer, &reached, "sheddable", None).await.unwrap_err();
        // The queue drains below target: everyone passes again.
        queue.head_wait_ms.store(5, Ordering::Relaxed);
        send(&layer, &reached, "sheddable", None).await.unwrap();
        assert!(!layer.stats().overloaded);
        // Back above target within an interval of leaving overload: overloaded at once.
        tokio::time::advance(Duration::from_millis(50)).await;
        queue.head_wait_ms.store(50, Ordering::Relaxed);
        send(&layer, &reached, "sheddable", None).await.unwrap_err();
        assert!(layer.stats().overloaded);
        // Drained for longer than an interval, a new rise is a spike again.
        queue.head_wait_ms.store(5, Ordering::Relaxed);
        send(&layer, &reached, "sheddable", None).await.unwrap();
        tokio::time::advance(Duration::from_millis(150)).await;
        queue.head_wait_ms.store(50, Ordering::Relaxed);
        send(&layer, &reached, "sheddable", None).await.unwrap();
        // A head that has waited a whole interval is no spike: standard goes, critical stays.
        queue.head_wait_ms.store(150, Ordering::Relaxed);
        send(&layer, &reached, "standard", None).await.unwrap_err();
        send(&layer, &reached, "critical", None).await.unwrap();
        queue.head_wait_ms.store(5, Ordering::Relaxed);
        let stats = layer.stats();
        assert_eq!(stats.refused(Reason::Delay, Priority::Sheddable), 3);
        assert_eq!(stats.refused(Reason::Delay, Priority::Standard), 2);
        assert_eq!(stats.refused_in(Priority::Critical), 0);
        assert_eq!(reached.load(Ordering::Relaxed), 9);
        assert!(!stats.overloaded);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_and_hopeless_requests_never_reach_the_server() {
        let (queue, layer, reached) = setup();
        let e = send(&layer, &reached, "critical", Some("0m")).await.unwrap_err();
        assert_eq!(reason(&e), ErrorKind::DeadlineExceeded);
        // The head has waited 300 ms: a request with 200 ms left would expire in the queue.
        queue.head_wait_ms.store(300, Ordering::Relaxed);
        let e = send(&layer, &reached, "critical", Some("200m")).await.unwrap_err();
        assert!(matches!(reason(&e), ErrorKind::Shed { .. }));
        send(&layer, &reached, "critical", Some("1S")).await.unwrap();
        assert_eq!(reached.load(Ordering::Relaxed), 1);
        let stats = layer.stats();
        assert_eq!(stats.refused(Reason::Expired, Priority::Critical), 1);
        assert_eq!(stats.refused(Reason::Deadline, Priority::Critical), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_all_but_critical() {
        let (queue, layer, reached) = setup();
        queue.waiting.store(8, Ordering::Relaxed);
        send(&layer, &reached, "sheddable", None).await.unwrap_err();
        send(&layer, &reached, "standard", None).await.unwrap_err();
        send(&layer, &reached, "critical", None).await.unwrap();
        assert_eq!(layer.stats().refused(Reason::QueueFull, Priority::Standard), 1);
        assert_eq!(layer.stats().admitted_in(Priority::Critical), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn judges_the_expected_wait_not_the_heads() {
        let (queue, layer, reached) = setup();
        queue.waiting.store(4, Ordering::Relaxed);
        queue.head_wait_ms.store(5, Ordering::Relaxed);
        // Nothing learnt yet: the head's wait (5 ms) stands for the expected wait.
        send(&layer, &reached, "critical", Some("30m")).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        // A completion 10 ms after the last, with a busy queue: a newcomer behind four expects
        // 5 + 4 x 10 = 45 ms, more than its 30 ms deadline.
        send(&layer, &reached, "critical", None).await.unwrap();
        let e = send(&layer, &reached, "critical", Some("30m")).await.unwrap_err();
        assert!(
            matches!(reason(&e), ErrorKind::Shed { retry_after: Some(d) } if d == Duration::from_millis(45))
        );
        assert_eq!(layer.stats().refused(Reason::Deadline, Priority::Critical), 1);
        // A gap that began with an empty queue (a cold start) is not learnt as slow service.
        queue.waiting.store(0, Ordering::Relaxed);
        send(&layer, &reached, "critical", None).await.unwrap();
        tokio::time::advance(Duration::from_millis(1000)).await;
        queue.waiting.store(4, Ordering::Relaxed);
        send(&layer, &reached, "critical", Some("50m")).await.unwrap();
        send(&layer, &reached, "critical", Some("50m")).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_queue_behind_a_fresh_head_counts_as_overload() {
        let (queue, layer, reached) = setup();
        // Four wait behind a head that has waited 2 ms: what a server of several slots shows
        // when arrivals outpace it (the head is fresh, the queue is not).
        queue.waiting.store(4, Ordering::Relaxed);
        queue.head_wait_ms.store(2, Ordering::Relaxed);
        // Critical calls complete every 10 ms while the queue is busy: the layer learns 10 ms
        // between completions, so a newcomer expects 2 + 4 x 10 = 42 ms, above the 10 ms target.
        send(&layer, &reached, "critical", None).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        send(&layer, &reached, "critical", None).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        // Above target, not yet for an interval: a spike, sheddable passes.
        send(&layer, &reached, "sheddable", None).await.unwrap();
        assert!(!layer.stats().overloaded);
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(10)).await;
            send(&layer, &reached, "critical", None).await.unwrap();
        }
        // The expected wait has stayed above target for an interval, though the head's never
        // did: overloaded; sheddable (42 > 10) and standard (42 > 20) go, critical stays.
        let e = send(&layer, &reached, "sheddable", None).await.unwrap_err();
        assert!(
            matches!(reason(&e), ErrorKind::Shed { retry_after: Some(d) } if d == Duration::from_millis(42))
        );
        send(&layer, &reached, "standard", None).await.unwrap_err();
        send(&layer, &reached, "critical", None).await.unwrap();
        assert!(layer.stats().overloaded);
        // A new head that has not waited at all does not end the overload while four wait.
        queue.head_wait_ms.store(0, Ordering::Relaxed);
        send(&layer, &reached, "sheddable", None).await.unwrap_err();
        assert!(layer.stats().overloaded);
        // The queue drains: everyone passes again.
        queue.waiting.store(0, Ordering::Relaxed);
        send(&layer, &reached, "sheddable", None).await.unwrap();
        let stats = layer.stats();
        assert!(!stats.overloaded);
        assert_eq!(stats.refused(Reason::Delay, Priority::Sheddable), 2);
        assert_eq!(stats.refused(Reason::Delay, Priority::Standard), 1);
        assert_eq!(stats.refused_in(Priority::Critical), 0);
        assert_eq!(reached.load(Ordering::Relaxed), 15);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spike_queues_no_one_longer_than_the_service_takes() {
        let (queue, layer, reached) = setup();
        // A request that finds nobody waiting is answered in 30 ms: the service time learnt.
        send_served_in(&layer, &reached, "standard", None, Duration::from_millis(30)).await.unwrap();
        // A burst: two wait, the head for 40 ms. Above target only for a moment, so no standing
        // queue, but a newcomer would wait 40 ms for a 30 ms service: more than a spike may
        // bring (at least twice the 10 ms target, at most the 100 ms interval). Sheddable and
        // standard requests go, critical ones stay.
        queue.waiting.store(2, Ordering::Relaxed);
        queue.head_wait_ms.store(40, Ordering::Relaxed);
        let e = send(&layer, &reached, "standard", None).await.unwrap_err();
        assert!(
            matches!(reason(&e), ErrorKind::Shed { retry_after: Some(d) } if d == Duration::from_millis(40))
        );
        send(&layer, &reached, "sheddable", None).await.unwrap_err();
        send(&layer, &reached, "critical", None).await.unwrap();
        assert!(!layer.stats().overloaded);
        // Within the service time, a spike passes whatever the class.
        queue.head_wait_ms.store(25, Ordering::Relaxed);
        send(&layer, &reached, "standard", None).await.unwrap();
        send(&layer, &reached, "sheddable", None).await.unwrap();
        let stats = layer.stats();
        assert_eq!(stats.refused(Reason::Delay, Priority::Standard), 1);
        assert_eq!(stats.refused(Reason::Delay, Priority::Sheddable), 1);
        assert_eq!(reached.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_counts_its_own_requests_before_the_server_queues_them() {
        let (queue, layer, reached) = setup();
        // The server runs nothing and has queued nothing: the burst's requests are judged
        // before any of them reaches its queue.
        *queue.running.lock().unwrap() = Some(0);
        let mut calls = Vec::new();
        for _ in 0..10 {
            let (layer, reached) = (layer.clone(), reached.clone());
            calls.push(tokio::spawn(async move {
                send_served_in(&layer, &reached, "standard", None, Duration::from_secs(1)).await
            }));
            tokio::task::yield_now().await;
        }
        // The first eight fill the 8 places; the ninth and tenth find them taken, though the
        // server's own queue still reads empty.
        let stats = layer.stats();
        assert_eq!(stats.admitted_in(Priority::Standard), 8);
        assert_eq!(stats.refused(Reason::QueueFull, Priority::Standard), 2);
        send(&layer, &reached, "critical", None).await.unwrap();
        // Answered (or gone), they no longer count.
        let mut ok = 0;
        for call in calls {
            ok += usize::from(call.await.unwrap().is_ok());
        }
        assert_eq!(ok, 8);
        send(&layer, &reached, "standard", None).await.unwrap();
        // A server that does not tell what runs is read as it says.
        *queue.running.lock().unwrap() = None;
        let held: Vec<_> = (0..10)
            .map(|_| {
                let (layer, reached) = (layer.clone(), reached.clone());
                tokio::spawn(async move {
                    send_served_in(&layer, &reached, "standard", None, Duration::from_secs(1)).await
                })
            })
            .collect();
        for call in held {
            call.await.unwrap().unwrap();
        }
        assert_eq!(reached.load(Ordering::Relaxed), 20);
    }
}
