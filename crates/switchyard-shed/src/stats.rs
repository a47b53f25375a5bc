//! Every refusal counted, by reason and class.

use std::sync::atomic::{AtomicU64, Ordering};

use switchyard_core::Priority;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Its deadline had passed (on arrival, while waiting, or at dispatch): `DEADLINE_EXCEEDED`.
    Expired,
    /// Its expected wait exceeded its remaining deadline.
    Deadline,
    /// The queue had been above its target delay for an interval, and its expected wait exceeded
    /// the target (on arrival), or it waited past the target (while waiting).
    Delay,
    /// The queue was full of requests of its class or above.
    QueueFull,
    /// It was waiting when a more important request needed its place in a full queue.
    Displaced,
}

impl Reason {
    /// Every reason, in the order [`ShedStats::refused`] indexes them.
    pub const ALL: [Reason; 5] =
        [Reason::Expired, Reason::Deadline, Reason::Delay, Reason::QueueFull, Reason::Displaced];

    /// A short name for metrics: `expired`, `deadline`, `delay`, `queue-full`, `displaced`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Expired => "expired",
            Reason::Deadline => "deadline",
            Reason::Delay => "delay",
            Reason::QueueFull => "queue-full",
            Reason::Displaced => "displaced",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub(crate) fn class(priority: Priority) -> usize {
    match priority {
        Priority::Sheddable => 0,
        Priority::Standard => 1,
        Priority::Critical => 2,
    }
}

/// The classes, in the order the per-class figures index them: sheddable, standard, critical.
pub const CLASSES: [Priority; 3] = [Priority::Sheddable, Priority::Standard, Priority::Critical];

#[derive(Debug, Default)]
pub(crate) struct Counters {
    admitted: [AtomicU64; 3],
    refused: [[AtomicU64; 3]; 5],
}

impl Counters {
    pub(crate) fn admit(&self, priority: Priority) {
        self.admitted[class(priority)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refuse(&self, reason: Reason, priority: Priority) {
        self.refused[reason.index()][class(priority)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, waiting: usize, overloaded: bool) -> ShedStats {
        ShedStats {
            waiting,
            overloaded,
            admitted: self.admitted.each_ref().map(|a| a.load(Ordering::Relaxed)),
            refused: self.refused.each_ref().map(|r| r.each_ref().map(|a| a.load(Ordering::Relaxed))),
        }
    }
}

/// A shed queue's figures, for telemetry and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShedStats {
    /// Requests waiting now.
    pub waiting: usize,
    /// Whether the queue is overloaded (waits above the target for an interval).
    pub overloaded: bool,
    /// Requests passed to the service, per class (indexed as [`CLASSES`]).
    pub admitted: [u64; 3],
    /// Requests refused, per reason (indexed as [`Reason::ALL`]) and class.
    pub refused: [[u64; 3]; 5],
}

impl ShedStats {
    /// Requests refused for `reason` in `priority`'s class.
    pub fn refused(&self, reason: Reason, priority: Priority) -> u64 {
        self.refused[reason.index()][class(priority)]
    }

    /// Requests refused in `priority`'s class, for any reason.
    pub fn refused_in(&self, priority: Priority) -> u64 {
        self.refused.iter().map(|r| r[class(priority)]).sum()
    }

    /// Requests passed to the service in `priority`'s class.
    pub fn admitted_in(&self, priority: Priority) -> u64 {
        self.admitted[class(priority)]
    }

    /// All refusals.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().flatten().sum()
    }
}
