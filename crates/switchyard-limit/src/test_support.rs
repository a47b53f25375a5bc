//! Samples for the algorithms' unit tests.

use std::time::Duration;

use tokio::time::Instant;

use crate::algorithm::Sample;

/// A sample taken now (call under tokio's paused clock).
pub(crate) fn sample(rtt_ms: u64, in_flight: usize, dropped: bool) -> Sample {
    Sample { now: Instant::now(), rtt: Duration::from_millis(rtt_ms), in_flight, dropped }
}
