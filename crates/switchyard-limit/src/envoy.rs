//! Envoy's adaptive concurrency gradient controller.
//!
//! Envoy's controller measures the service's latency with no queue (`min_rtt`) directly: at
//! start and then every `min_rtt_interval` (jittered), it pins the limit to `min_concurrency`,
//! collects `min_rtt_requests` samples and takes their `percentile` as `min_rtt`. In between, every
//! `update_interval` it takes the `percentile` of the window's RTTs (`sample_rtt`) and sets
//!
//! ```text
//! gradient = clamp(min_rtt × (1 + buffer) / sample_rtt, 0.5, 2)
//! limit    = gradient × limit;  limit = clamp(limit + sqrt(limit), min_concurrency, max_limit)
//! ```
//!
//! so the limit grows by `1 + buffer` (plus headroom) a window while latency sits at `min_rtt`,
//! holds (plus headroom) at `min_rtt × (1 + buffer)`, and halves when latency is twice that. The `sqrt` headroom lets queueing build a little, so that the
//! measured latency tells the controller something.
//!
//! Envoy recalculates on timers; here a window closes at the first sample after its interval
//! ended (the state machine reads no clock). The controller has no drop signal: every finished
//! request counts by its RTT, as in Envoy. A window holds at most 4096 RTTs (the rest of a burst
//! is not sampled).
//!
//! Defaults are Envoy's: update interval 100 ms, percentile 50, max limit 1000, min-RTT interval
//! 60 s with 10 % jitter over 50 requests at concurrency 3, buffer 25 %.
//!
//! Source: Envoy, `source/extensions/filters/http/adaptive_concurrency/controller/
//! gradient_controller.cc` and the adaptive concurrency filter's documentation.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::algorithm::{LimitAlgorithm, Sample};

/// The parameters of [`EnvoyGradient`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvoyGradientParams {
    /// How often the limit is recalculated, in milliseconds.
    pub update_interval_ms: u64,
    /// The percentile of a window's RTTs it reads, in (0, 100].
    pub percentile: f64,
    /// The highest limit.
    pub max_limit: usize,
    /// How often `min_rtt` is measured again, in milliseconds.
    pub min_rtt_interval_ms: u64,
    /// Random extra delay of that measurement, as a share of its interval.
    pub jitter: f64,
    /// Samples `min_rtt` is taken from.
    pub min_rtt_requests: usize,
    /// The limit while `min_rtt` is measured, and the lowest limit.
    pub min_concurrency: usize,
    /// Latency above `min_rtt` taken as no queueing, as a share of it.
    pub buffer: f64,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for EnvoyGradientParams {
    fn default() -> Self {
        Self {
            update_interval_ms: 100,
            percentile: 50.0,
            max_limit: 1000,
            min_rtt_interval_ms: 60_000,
            jitter: 0.1,
            min_rtt_requests: 50,
            min_concurrency: 3,
            buffer: 0.25,
            seed: 0,
        }
    }
}

/// Most RTTs a window keeps.
const WINDOW_BOUND: usize = 4096;

#[derive(Debug, Clone)]
enum Phase {
    /// Measuring `min_rtt` at `min_concurrency`; the limit to go back to afterwards.
    MinRtt { resume_limit: f64 },
    /// Adjusting every `update_interval`.
    Sampling,
}

/// Envoy's gradient controller. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct EnvoyGradient {
    params: EnvoyGradientParams,
    limit: f64,
    phase: Phase,
    min_rtt: Option<Duration>,
    window: Vec<Duration>,
    /// When the current window closes (set by its first sample).
    window_ends: Option<Instant>,
    next_min_rtt: Option<Instant>,
    rng: rand::rngs::Xoshiro256PlusPlus,
}

impl EnvoyGradient {
    /// A controller with `params` (bounds made consistent). It starts by measuring `min_rtt`.
    pub fn new(mut params: EnvoyGradientParams) -> Self {
        params.min_concurrency = params.min_concurrency.max(1);
        params.max_limit = params.max_limit.max(params.min_concurrency);
        params.min_rtt_requests = params.min_rtt_requests.max(1);
        params.update_interval_ms = params.update_interval_ms.max(1);
        if !(params.percentile > 0.0 && params.percentile <= 100.0) {
            params.percentile = 50.0;
        }
        if !(params.jitter >= 0.0 && params.jitter.is_finite()) {
            params.jitter = 0.0;
        }
        if !(params.buffer >= 0.0 && params.buffer.is_finite()) {
            params.buffer = EnvoyGradientParams::default().buffer;
        }
        let rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(params.seed);
        let limit = params.min_concurrency as f64;
        Self {
            params,
            limit,
            phase: Phase::MinRtt { resume_limit: limit },
            min_rtt: None,
            window: Vec::new(),
            window_ends: None,
            next_min_rtt: None,
            rng,
        }
    }

    /// The measured no-queue latency, once measured.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    fn percentile(&mut self) -> Option<Duration> {
        if self.window.is_empty() {
            return None;
        }
        self.window.sort_unstable();
        let rank = (self.params.percentile / 100.0 * self.window.len() as f64).ceil() as usize;
        let at = rank.clamp(1, self.window.len()) - 1;
        let value = self.window[at];
        self.window.clear();
        Some(value)
    }

    fn record(&mut self, rtt: Duration) {
        if self.window.len() < WINDOW_BOUND {
            self.window.push(rtt);
        }
    }
}

impl Default for EnvoyGradient {
    fn default() -> Self {
        Self::new(EnvoyGradientParams::default())
    }
}

impl LimitAlgorithm for EnvoyGradient {
    fn name(&self) -> &'static str {
        "envoy-gradient"
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let p = self.params.clone();
        match self.phase {
            Phase::MinRtt { resume_limit } => {
                self.record(sample.rtt);
                if self.window.len() >= p.min_rtt_requests {
                    self.min_rtt = self.percentile();
                    self.limit = resume_limit;
                    self.phase = Phase::Sampling;
                    self.window_ends = None;
                    let interval = p.min_rtt_interval_ms as f64 / 1000.0;
                    let jitter = interval * p.jitter * self.rng.random_range(0.0..1.0);
                    self.next_min_rtt = Some(sample.now + Duration::from_secs_f64(interval + jitter));
                }
            }
            Phase::Sampling => {
                if self.next_min_rtt.is_some_and(|at| sample.now >= at) {
                    self.window.clear();
                    self.phase = Phase::MinRtt { resume_limit: self.limit };
                    self.limit = p.min_concurrency as f64;
                    return self.limit();
                }
                let ends =
                    *self.window_ends.get_or_insert(sample.now + Duration::from_millis(p.update_interval_ms));
                if sample.now >= ends {
                    if let (Some(sample_rtt), Some(min_rtt)) = (self.percentile(), self.min_rtt) {
                        let buffered = min_rtt.as_secs_f64() * (1.0 + p.buffer);
                        let gradient = (buffered / sample_rtt.as_secs_f64().max(1e-9)).clamp(0.5, 2.0);
                        let limit = self.limit * gradient;
                        self.limit = (limit + limit.sqrt())
                            .clamp(p.min_concurrency as f64, p.max_limit as f64)
                            .floor();
                    }
                    self.window_ends = Some(sample.now + Duration::from_millis(p.update_interval_ms));
                }
                self.record(sample.rtt);
            }
        }
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    /// Feeds `n` samples of `rtt_ms`, one per millisecond of virtual time.
    async fn feed(e: &mut EnvoyGradient, n: usize, rtt_ms: u64) -> usize {
        let mut limit = e.limit();
        for _ in 0..n {
            tokio::time::advance(Duration::from_millis(1)).await;
            limit = e.update(&sample(rtt_ms, limit, false));
        }
        limit
    }

    #[tokio::test(start_paused = true)]
    async fn measures_min_rtt_then_grows_and_backs_off_as_latency_rises() {
        let mut e = EnvoyGradient::default();
        assert_eq!(e.limit(), 3, "starts measuring min_rtt at min_concurrency");
        feed(&mut e, 50, 100).await;
        assert_eq!(e.min_rtt(), Some(Duration::from_millis(100)));
        // Latency at min_rtt: the gradient is 1.25 (the buffer) each 100 ms window.
        let grown = feed(&mut e, 1000, 100).await;
        assert!(grown > 60, "{grown}");
        // Latency four times min_rtt: gradient 0.5 (its floor) each window.
        let cut = feed(&mut e, 500, 400).await;
        assert!(cut < grown / 4, "{grown} → {cut}");
        // At min_rtt × 1.25 the gradient is 1: only the sqrt headroom is added.
        let before = feed(&mut e, 101, 125).await;
        let after = feed(&mut e, 100, 125).await;
        assert_eq!(after, before + (before as f64).sqrt() as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn drops_count_by_their_rtt_and_min_rtt_is_measured_again() {
        let params = EnvoyGradientParams { min_rtt_interval_ms: 1_000, jitter: 0.0, ..Default::default() };
        let mut a = EnvoyGradient::new(params.clone());
        let mut b = EnvoyGradient::new(params);
        for i in 0..300 {
            tokio::time::advance(Duration::from_millis(1)).await;
            let limit = a.update(&sample(100, 3, i % 2 == 0));
            assert_eq!(limit, b.update(&sample(100, 3, false)));
        }
        // One second after the first measurement, it measures again at min_concurrency.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.update(&sample(100, 3, false)), 3);
        feed(&mut a, 50, 200).await;
        assert_eq!(a.min_rtt(), Some(Duration::from_millis(200)));
        assert!(a.limit() > 3, "back to the limit it had");
    }
}
