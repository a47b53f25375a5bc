//! Windowed: feeds an algorithm one aggregated sample per time window, as Netflix's
//! concurrency-limits `WindowedLimit` does.
//!
//! A per-request RTT is noisy where requests differ in size (an LLM prompt of 100 tokens and one
//! of 8,000), and a delay-based algorithm reads that noise as queueing. `Windowed` collects the
//! samples of a window and hands the inner algorithm one: the window's mean RTT, its largest
//! in-flight count, and whether any request in it was dropped. A window lasts twice its smallest
//! RTT, clamped to `[min_window, max_window]`, and counts only with at least `window_size`
//! samples (a window with fewer is dropped, as in Netflix's); RTTs below `min_rtt_threshold` are
//! ignored.
//!
//! Defaults are Netflix's: windows of 1 s (min and max), at least 10 samples, threshold 100 µs.
//!
//! Source: Netflix/concurrency-limits, `com.netflix.concurrency.limits.limit.WindowedLimit` and
//! `window.ImmutableAverageSampleWindow`.

use std::time::Duration;

use tokio::time::Instant;

use crate::algorithm::{LimitAlgorithm, Sample};

/// The parameters of [`Windowed`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowedParams {
    /// Shortest window, in milliseconds.
    pub min_window_ms: u64,
    /// Longest window, in milliseconds.
    pub max_window_ms: u64,
    /// Samples a window needs to count.
    pub window_size: usize,
    /// RTTs below this are ignored, in microseconds.
    pub min_rtt_threshold_us: u64,
}

impl Default for WindowedParams {
    fn default() -> Self {
        Self { min_window_ms: 1000, max_window_ms: 1000, window_size: 10, min_rtt_threshold_us: 100 }
    }
}

#[derive(Debug, Clone, Default)]
struct Window {
    min_rtt: Option<Duration>,
    sum_rtt: Duration,
    count: usize,
    max_in_flight: usize,
    dropped: bool,
}

/// An algorithm fed one aggregated sample per window. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Windowed<A> {
    inner: A,
    params: WindowedParams,
    window: Window,
    next_update: Option<Instant>,
}

impl<A: LimitAlgorithm> Windowed<A> {
    /// `inner`, fed by windows as `params` say (bounds made consistent).
    pub fn new(inner: A, mut params: WindowedParams) -> Self {
        params.min_window_ms = params.min_window_ms.max(1);
        params.max_window_ms = params.max_window_ms.max(params.min_window_ms);
        params.window_size = params.window_size.max(1);
        Self { inner, params, window: Window::default(), next_update: None }
    }

    /// The inner algorithm.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: LimitAlgorithm> LimitAlgorithm for Windowed<A> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn limit(&self) -> usize {
        self.inner.limit()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if sample.rtt < Duration::from_micros(self.params.min_rtt_threshold_us) {
            return self.limit();
        }
        let w = &mut self.window;
        w.min_rtt = Some(w.min_rtt.map_or(sample.rtt, |m| m.min(sample.rtt)));
        w.sum_rtt = w.sum_rtt.saturating_add(sample.rtt);
        w.count += 1;
        w.max_in_flight = w.max_in_flight.max(sample.in_flight);
        w.dropped |= sample.dropped;
        if self.next_update.is_some_and(|at| sample.now < at) {
            return self.limit();
        }
        let min = Duration::from_millis(self.params.min_window_ms);
        let max = Duration::from_millis(self.params.max_window_ms);
        let length = w.min_rtt.map_or(min, |m| (m * 2).clamp(min, max));
        self.next_update = Some(sample.now + length);
        let window = std::mem::take(&mut self.window);
        if window.count < self.params.window_size {
            return self.limit();
        }
        let count = u32::try_from(window.count).unwrap_or(u32::MAX);
        self.inner.update(&Sample {
            now: sample.now,
            rtt: window.sum_rtt / count,
            in_flight: window.max_in_flight,
            dropped: window.dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Aimd, AimdParams};

    /// A recording algorithm: the samples it was given.
    #[derive(Debug, Default)]
    struct Record(Vec<Sample>);

    impl LimitAlgorithm for Record {
        fn name(&self) -> &'static str {
            "record"
        }
        fn limit(&self) -> usize {
            10
        }
        fn update(&mut self, sample: &Sample) -> usize {
            self.0.push(*sample);
            10
        }
    }

    fn at(now: Instant, rtt_ms: u64, in_flight: usize, dropped: bool) -> Sample {
        Sample { now, rtt: Duration::from_millis(rtt_ms), in_flight, dropped }
    }

    #[tokio::test(start_paused = true)]
    async fn one_averaged_sample_per_window_with_enough_samples() {
        let mut w = Windowed::new(Record::default(), WindowedParams::default());
        let start = Instant::now();
        // The first sample opens the first window; it has too few samples to count.
        w.update(&at(start, 100, 1, false));
        for i in 0..20u64 {
            let now = start + Duration::from_millis(50 * i);
            w.update(&at(now, if i % 2 == 0 { 100 } else { 300 }, i as usize, i == 7));
        }
        // At 1 s: the window closes with 21 samples.
        w.update(&at(start + Duration::from_secs(1), 200, 3, false));
        let samples = &w.inner().0;
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert_eq!(samples[0].rtt, Duration::from_millis(200), "the window's mean");
        assert_eq!((samples[0].in_flight, samples[0].dropped), (19, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_windowed_aimd_moves_once_a_window_on_rising_latency_and_drops() {
        let params = AimdParams {
            initial_limit: 50,
            min_limit: 1,
            max_limit: 100,
            timeout_ms: 500,
            ..AimdParams::default()
        };
        let mut w = Windowed::new(Aimd::new(params), WindowedParams::default());
        let start = Instant::now();
        let mut limit = 50;
        for i in 0..=40u64 {
            limit = w.update(&at(start + Duration::from_millis(100 * i), 100, 50, false));
        }
        assert_eq!(limit, 54, "one step up a window, not one a sample");
        for i in 41..=60u64 {
            limit = w.update(&at(start + Duration::from_millis(100 * i), 900, 50, false));
        }
        assert!(limit < 54, "latency past the timeout backs it off: {limit}");
    }
}
