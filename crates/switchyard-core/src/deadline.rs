//! The request's deadline and model, as request keys.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// When the caller stops waiting for the request: its `grpc-timeout` counted from when the
/// request arrived.
///
/// The key-extraction layer inserts it; the coming shedding layer is to drop a request whose
/// deadline has passed before it reaches an endpoint, and its queues to order by it. Time is
/// `tokio::time`'s, so tests run it under the paused clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline `timeout` after `now`.
    pub fn after(now: Instant, timeout: Duration) -> Self {
        Self(now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365)))
    }

    /// The time left at `now` (zero once passed).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether the deadline has passed at `now`.
    pub fn is_past(&self, now: Instant) -> bool {
        now >= self.0
    }
}

/// Parses a gRPC `grpc-timeout` header value: an integer of at most 8 digits followed by a unit
/// (`H`, `M`, `S`, `m` for milliseconds, `u` for microseconds, `n` for nanoseconds). `None` for
/// anything else.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The model a request is for: the model header, or the `model_name` of a KServe request's first
/// message. Gateway routes match on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(Arc<str>);

impl ModelName {
    /// A model name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(b"123456789S"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout(b"S"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
        assert_eq!(parse_grpc_timeout(b"-1S"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_counts_down() {
        let now = Instant::now();
        let d = Deadline::after(now, Duration::from_millis(50));
        assert_eq!(d.remaining(now), Duration::from_millis(50));
        assert!(!d.is_past(now));
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(d.is_past(Instant::now()));
        assert_eq!(d.remaining(Instant::now()), Duration::ZERO);
    }
}
