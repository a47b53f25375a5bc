//! Requests held in front of the pool as a signal: what wakes a pool scaled to zero.
//!
//! A pool with no replica holds its requests in a queue in front of its balancer (the gateway's
//! `shed` queue, with `hold_when_empty`), each until its deadline. Those requests are on no
//! replica's board entry (no replica was picked for them), so the board shows no load at all:
//! [`WithHeld`] adds their count to each snapshot as [`Signals::held`], which the recommenders
//! read as demand (Switchyard's [`LlmAware`](crate::LlmAware) scales 0 → 1 on it). Nothing is
//! counted twice: a request leaves the queue when it is dispatched to a replica, and only then
//! appears on the board.

use crate::{SignalSource, Signals};

/// A [`SignalSource`] whose snapshots carry the requests held in front of the pool, read by
/// `held` at each sample (for a gateway pool: `|| pool.held_requests()`).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use switchyard_autoscale::{SignalSource, Signals, WithHeld};
///
/// struct Idle;
/// impl SignalSource for Idle {
///     fn sample(&mut self) -> Option<Signals> {
///         Some(Signals::empty(tokio::time::Instant::now()))
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let waiting = Arc::new(AtomicU64::new(2));
/// let queue = waiting.clone();
/// let mut source = WithHeld::new(Idle, move || queue.load(Ordering::Relaxed));
/// assert_eq!(source.sample().and_then(|s| s.held), Some(2));
/// # }
/// ```
pub struct WithHeld<S, F> {
    inner: S,
    held: F,
}

impl<S, F> WithHeld<S, F>
where
    S: SignalSource,
    F: FnMut() -> u64 + Send,
{
    /// `inner`'s snapshots, with `held()` as their [`Signals::held`].
    pub fn new(inner: S, held: F) -> Self {
        Self { inner, held }
    }

    /// The source it wraps.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S, F> SignalSource for WithHeld<S, F>
where
    S: SignalSource,
    F: FnMut() -> u64 + Send,
{
    fn sample(&mut self) -> Option<Signals> {
        // A source that cannot answer stays missing: held requests alone do not make a snapshot
        // (the recommenders would read "no replica, no load" into it).
        let mut signals = self.inner.sample()?;
        signals.held = Some((self.held)());
        Some(signals)
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for WithHeld<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithHeld").field("inner", &self.inner).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::test_support::size;
    use crate::{Bounds, LlmAware, LlmAwareConfig, Recommender};
    use tokio::time::Instant;

    struct Scripted(Vec<Option<Signals>>);

    impl SignalSource for Scripted {
        fn sample(&mut self) -> Option<Signals> {
            if self.0.is_empty() { None } else { self.0.remove(0) }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_wakes_a_pool_at_zero_and_a_missing_source_stays_missing() {
        let now = Instant::now();
        let mut held = 0;
        let mut source =
            WithHeld::new(Scripted(vec![Some(Signals::empty(now)), Some(Signals::empty(now)), None]), || {
                held += 1;
                held - 1
            });
        let mut aware =
            LlmAware::new(LlmAwareConfig { bounds: Bounds::new(0, 4), ..LlmAwareConfig::default() });
        let first = source.sample();
        assert_eq!(first.as_ref().and_then(|s| s.held), Some(0));
        assert_eq!(aware.recommend(now, size(0, 0), first.as_ref()).desired, 0, "nothing held: stay at zero");
        let second = source.sample();
        assert_eq!(second.as_ref().and_then(|s| s.held), Some(1));
        assert_eq!(aware.recommend(now, size(0, 0), second.as_ref()).desired, 1, "one held: wake");
        assert_eq!(source.sample(), None, "no snapshot is made up from the held count alone");
    }
}
