//! How a shed queue is set up.

use std::sync::Arc;
use std::time::Duration;

/// The settings of a shed queue (a `{ name = "shed", ... }` spec's fields, durations as
/// `"50ms"`, read by the gateway).
#[derive(Debug, Clone, PartialEq)]
pub struct ShedConfig {
    /// Most requests waiting at once; a full queue displaces a lower class's newest waiter or
    /// refuses the newcomer.
    pub max_queue: usize,
    /// The queueing delay the queue aims at (CoDel's target).
    pub target: Duration,
    /// How long waits must stay above `target` before the queue counts as overloaded (CoDel's
    /// interval).
    pub interval: Duration,
    /// The pool (or service) named in refusals.
    pub pool: Option<Arc<str>>,
}

impl Default for ShedConfig {
    /// 128 waiters; target 50 ms over an interval of 500 ms. CoDel's network defaults (5 ms over
    /// 100 ms) and Facebook's RPC queues (5 ms over 100 ms) are sized for millisecond requests;
    /// an LLM request runs for hundreds of milliseconds, so its queue gets ten times as long.
    fn default() -> Self {
        Self {
            max_queue: 128,
            target: Duration::from_millis(50),
            interval: Duration::from_millis(500),
            pool: None,
        }
    }
}
