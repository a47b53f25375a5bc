//! What a retry layer counts, for telemetry and the admin API.

use std::sync::atomic::{AtomicU64, Ordering};

/// A retry layer's counts since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
    /// Calls the layer took.
    pub calls: u64,
    /// Attempts after the first (the requests retries added upstream).
    pub retries: u64,
    /// Retries (and hedges) the budget refused.
    pub budget_exhausted: u64,
    /// Hedges sent (attempts racing a slow first one).
    pub hedges: u64,
    /// Retries not made because the call was committed (its request body past the buffer bound).
    pub not_replayable: u64,
    /// Held responses (`hold_responses`) cut before their end (a stream reset, a connection
    /// lost): each failed its attempt, for a retry to take, where without the hold the caller
    /// would have had a response broken mid-way.
    pub held_cut: u64,
}

/// The counters behind [`RetryStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) not_replayable: AtomicU64,
    pub(crate) held_cut: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RetryStats {
        RetryStats {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            budget_exhausted: self.budget_exhausted.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
            not_replayable: self.not_replayable.load(Ordering::Relaxed),
            held_cut: self.held_cut.load(Ordering::Relaxed),
        }
    }
}
