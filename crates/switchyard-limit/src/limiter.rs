//! The bookkeeping every adapter shares: requests in flight against the limit an algorithm sets.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use switchyard_core::Outcome;
use tokio::time::Instant;

use crate::algorithm::{LimitAlgorithm, Sample, Signal};

/// A concurrency limit in force: the requests in flight, the [`LimitAlgorithm`] that sets how many
/// may be, and the permits that admit them.
///
/// Cheap to clone (clones share the state). A request takes a [`Permit`] before it starts and
/// [finishes](Permit::finish) it with its [`Outcome`] when it ends; the algorithm gets the sample
/// then. A permit dropped unfinished (the caller went away) frees its place without a sample.
///
/// ```
/// use switchyard_core::Outcome;
/// use switchyard_limit::{Fixed, Limiter};
///
/// let limiter = Limiter::new(Fixed::new(1));
/// let permit = limiter.try_acquire().expect("room for one");
/// assert!(limiter.try_acquire().is_none(), "at its limit");
/// permit.finish(Outcome::Ok);
/// assert_eq!(limiter.stats().in_flight, 0);
/// ```
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    admitted: AtomicU64,
    samples: AtomicU64,
    dropped: AtomicU64,
    ignored: AtomicU64,
}

struct State {
    algorithm: Box<dyn LimitAlgorithm>,
    limit: usize,
    in_flight: usize,
    /// Callers waiting for a place; all are woken when one frees (each one's poll re-registers).
    waiters: Vec<Waker>,
}

/// A limiter's figures, for telemetry and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    /// The limit in force.
    pub limit: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Permits handed out since the start.
    pub admitted: u64,
    /// Requests that fed the algorithm as successes.
    pub samples: u64,
    /// Requests that fed the algorithm as drops.
    pub dropped: u64,
    /// Requests that ended without a sample (cancelled, never reached the service).
    pub ignored: u64,
}

impl Limiter {
    /// A limiter run by `algorithm`.
    pub fn new(algorithm: impl LimitAlgorithm + 'static) -> Self {
        Self::from_boxed(Box::new(algorithm))
    }

    /// A limiter run by a boxed algorithm (as [`crate::algorithm_from_spec`] builds).
    pub fn from_boxed(algorithm: Box<dyn LimitAlgorithm>) -> Self {
        let limit = algorithm.limit().max(1);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State { algorithm, limit, in_flight: 0, waiters: Vec::new() }),
                admitted: AtomicU64::new(0),
                samples: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                ignored: AtomicU64::new(0),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limit in force.
    pub fn limit(&self) -> usize {
        self.state().limit
    }

    /// The name of the algorithm.
    pub fn algorithm(&self) -> &'static str {
        self.state().algorithm.name()
    }

    /// The limiter's figures.
    pub fn stats(&self) -> LimiterStats {
        let (limit, in_flight) = {
            let s = self.state();
            (s.limit, s.in_flight)
        };
        LimiterStats {
            limit,
            in_flight,
            admitted: self.shared.admitted.load(Ordering::Relaxed),
            samples: self.shared.samples.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            ignored: self.shared.ignored.load(Ordering::Relaxed),
        }
    }

    /// A permit if a request may start now.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut s = self.state();
        if s.in_flight >= s.limit {
            return None;
        }
        Some(self.admit(&mut s))
    }

    /// A permit if a request may start now; otherwise `cx` is woken when a place frees.
    pub fn poll_acquire(&self, cx: &mut Context<'_>) -> Poll<Permit> {
        let mut s = self.state();
        if s.in_flight >= s.limit {
            if !s.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                s.waiters.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(self.admit(&mut s))
    }

    fn admit(&self, s: &mut State) -> Permit {
        s.in_flight += 1;
        self.shared.admitted.fetch_add(1, Ordering::Relaxed);
        Permit {
            limiter: self.clone(),
            start: Instant::now(),
            first_byte: None,
            in_flight: s.in_flight,
            done: false,
            settled: false,
        }
    }

    /// Feeds `sample` (if any) to the algorithm and, with `free`, gives back a place.
    fn release(&self, sample: Option<Sample>, free: bool) {
        let counter = match sample {
            Some(Sample { dropped: true, .. }) => &self.shared.dropped,
            Some(_) => &self.shared.samples,
            None => &self.shared.ignored,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let waiters = {
            let mut s = self.state();
            if free {
                s.in_flight = s.in_flight.saturating_sub(1);
            }
            if let Some(sample) = sample {
                s.limit = s.algorithm.update(&sample).max(1);
            }
            if s.in_flight < s.limit { std::mem::take(&mut s.waiters) } else { Vec::new() }
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

impl Limiter {
    /// Gives back a place whose request fed the algorithm already.
    fn release_place(&self) {
        let waiters = {
            let mut s = self.state();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight < s.limit { std::mem::take(&mut s.waiters) } else { Vec::new() }
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("Limiter")
            .field("algorithm", &s.algorithm)
            .field("limit", &s.limit)
            .field("in_flight", &s.in_flight)
            .finish()
    }
}

/// One request's place under a [`Limiter`], held until the request ends.
#[derive(Debug)]
#[must_use = "a permit frees its place when dropped"]
pub struct Permit {
    limiter: Limiter,
    start: Instant,
    first_byte: Option<Instant>,
    in_flight: usize,
    done: bool,
    /// The algorithm was fed already ([`Permit::settle`]).
    settled: bool,
}

impl Permit {
    /// Restarts the request's clock (it was admitted before it was sent).
    pub fn start_now(&mut self) {
        self.start = Instant::now();
    }

    /// Marks the first byte of the response: the RTT the sample carries ends here (the first
    /// mark counts).
    pub fn first_byte(&mut self) {
        self.first_byte.get_or_insert_with(Instant::now);
    }

    /// Ends the request with `outcome`, feeding the algorithm as [`Signal::of`] says (unless
    /// [`settle`](Self::settle) fed it already).
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        if self.settled {
            self.limiter.release_place();
            return;
        }
        let sample = self.sample(&outcome);
        self.limiter.release(sample, true);
    }

    /// Feeds the algorithm the request's `outcome` now, while it still runs: for a caller that
    /// knows before the end how the request will go (a stream whose pace can no longer make
    /// its deadline is a drop as soon as that is seen, not a deadline later). The place is kept
    /// until the permit is finished or dropped, which then feed nothing more. Only the first
    /// call counts.
    pub fn settle(&mut self, outcome: Outcome) {
        if self.settled || self.done {
            return;
        }
        self.settled = true;
        let sample = self.sample(&outcome);
        self.limiter.release(sample, false);
    }

    /// Whether [`settle`](Self::settle) fed the algorithm already.
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    fn sample(&self, outcome: &Outcome) -> Option<Sample> {
        let now = Instant::now();
        match Signal::of(outcome) {
            Signal::Ignored => None,
            signal => Some(Sample {
                now,
                rtt: self.first_byte.unwrap_or(now).saturating_duration_since(self.start),
                in_flight: self.in_flight,
                dropped: signal == Signal::Dropped,
            }),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            if self.settled {
                self.limiter.release_place();
            } else {
                self.limiter.release(None, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Aimd, AimdParams};

    #[tokio::test(start_paused = true)]
    async fn permits_feed_the_algorithm_and_wake_a_waiter() {
        let params = AimdParams { initial_limit: 2, min_limit: 1, max_limit: 10, ..AimdParams::default() };
        let limiter = Limiter::new(Aimd::new(params));
        let mut a = limiter.try_acquire().unwrap();
        let b = limiter.try_acquire().unwrap();
        assert!(limiter.try_acquire().is_none());

        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(limiter.poll_acquire(&mut cx).is_pending());

        tokio::time::advance(Duration::from_millis(10)).await;
        a.first_byte();
        a.finish(Outcome::Ok);
        // A success at 2 of 2 in flight: AIMD adds one.
        assert_eq!(limiter.limit(), 3);
        drop(b);
        let stats = limiter.stats();
        assert_eq!((stats.in_flight, stats.admitted, stats.samples, stats.ignored), (0, 2, 1, 1));
        let c = limiter.try_acquire().unwrap();
        c.finish(Outcome::Overloaded { pushback: None });
        assert_eq!(limiter.limit(), 2, "a drop: × 0.9, truncated");
        assert_eq!(limiter.stats().dropped, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_permit_feeds_the_algorithm_once_and_keeps_its_place_until_it_ends() {
        let params = AimdParams { initial_limit: 4, min_limit: 1, max_limit: 10, ..AimdParams::default() };
        let limiter = Limiter::new(Aimd::new(params));
        let mut a = limiter.try_acquire().unwrap();
        a.settle(Outcome::DeadlineExceeded);
        assert_eq!(limiter.limit(), 3, "the drop counts at once: 4 × 0.9, truncated");
        assert_eq!(limiter.stats().in_flight, 1, "the request still runs");
        a.settle(Outcome::DeadlineExceeded);
        a.finish(Outcome::DeadlineExceeded);
        let stats = limiter.stats();
        assert_eq!((stats.limit, stats.in_flight, stats.dropped), (3, 0, 1), "fed once: {stats:?}");
        let mut b = limiter.try_acquire().unwrap();
        b.settle(Outcome::Unavailable);
        drop(b);
        assert_eq!(limiter.stats().in_flight, 0);
    }
}
