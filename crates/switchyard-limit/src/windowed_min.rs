//! A windowed minimum: the smallest sample of the last `window`, the way TCP Vegas keeps its base
//! RTT and BBR its `min_rtt` (the smallest round trip of the last 10 s).
//!
//! Delays on a shared machine (a process waiting for a core, a timer firing late) only ever add to
//! a measured time, so the fastest answers are the ones closest to what the server itself takes:
//! a minimum is not inflated by noise the way a mean is. It must still follow a server that truly
//! slows down, so it forgets: the samples are kept as the minima of [`BUCKETS`] consecutive
//! sub-windows of `window / BUCKETS` each, a sub-window is dropped once it began `window` ago, and
//! the value is the smallest of those left. A sample is remembered for between
//! `window × (1 − 1/BUCKETS)` and `window`; a slowdown is followed at the first sample taken once
//! every sub-window from before it has been dropped, that is within `window` of the slowdown. When
//! no sample comes for longer than `window`, the last value is kept (a stale baseline is better
//! than none) and the next sample replaces it.
//!
//! (Kathleen Nichols' windowed min-max filter, in Linux's `lib/win_minmax.c` and BBR, keeps three
//! samples for the same purpose; sub-window minima are simpler to reason about and to test.)

use std::time::Duration;

use tokio::time::Instant;

/// How many sub-windows the window is cut into.
pub const BUCKETS: usize = 4;

/// The smallest sample of the last window (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowedMin {
    /// Sub-windows, oldest first: when each began and its smallest sample. The first `len` are in
    /// use.
    buckets: [(Instant, f64); BUCKETS],
    len: usize,
}

impl WindowedMin {
    /// A filter holding one sample, `value`, taken at `now`.
    pub fn new(value: f64, now: Instant) -> Self {
        Self { buckets: [(now, value); BUCKETS], len: 1 }
    }

    /// The smallest sample of the last window, as of the last [`record`](Self::record) (or the
    /// last sample, if it is older than the window).
    pub fn get(&self) -> f64 {
        self.buckets[..self.len].iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min)
    }

    /// Adds `value`, taken at `now`, to a filter over the last `window`.
    pub fn record(&mut self, value: f64, now: Instant, window: Duration) {
        let expired = self.buckets[..self.len]
            .iter()
            .take_while(|(began, _)| now.saturating_duration_since(*began) >= window)
            .count();
        self.buckets.copy_within(expired..self.len, 0);
        self.len -= expired;
        let span = window / BUCKETS as u32;
        match self.len.checked_sub(1).map(|last| &mut self.buckets[last]) {
            Some((began, min)) if now.saturating_duration_since(*began) < span => *min = min.min(value),
            _ => {
                if self.len == BUCKETS {
                    // Only when `window` is not a multiple of `BUCKETS` nanoseconds or shrank since the
                    // oldest sub-window began: drop that one.
                    self.buckets.copy_within(1.., 0);
                    self.len -= 1;
                }
                self.buckets[self.len] = (now, value);
                self.len += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(8);

    #[tokio::test(start_paused = true)]
    async fn keeps_the_smallest_sample_of_the_window() {
        let mut m = WindowedMin::new(5.0, Instant::now());
        for v in [7.0, 3.0, 9.0, 4.0] {
            tokio::time::advance(Duration::from_millis(500)).await;
            m.record(v, Instant::now(), WINDOW);
        }
        assert_eq!(m.get(), 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_a_sample_within_the_window() {
        let mut m = WindowedMin::new(1.0, Instant::now());
        // One sample a second, all 10: the 1 is gone once its sub-window began 8 s ago.
        for second in 1..=8 {
            tokio::time::advance(Duration::from_secs(1)).await;
            m.record(10.0, Instant::now(), WINDOW);
            assert_eq!(m.get(), if second < 8 { 1.0 } else { 10.0 }, "after {second} s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn holds_its_value_through_a_silence_and_takes_the_next_sample() {
        let mut m = WindowedMin::new(2.0, Instant::now());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(m.get(), 2.0, "no sample, no change");
        m.record(6.0, Instant::now(), WINDOW);
        assert_eq!(m.get(), 6.0);
        assert_eq!(m.len, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_holds_more_than_its_buckets() {
        let mut m = WindowedMin::new(2.0, Instant::now());
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(700)).await;
            m.record(3.0, Instant::now(), WINDOW);
            assert!(m.len <= BUCKETS);
        }
        // A window that shrinks while its buckets are full.
        m.record(1.0, Instant::now(), Duration::from_millis(100));
        assert_eq!((m.get(), m.len), (1.0, 1));
    }
}
