//! Gradient2: Netflix's concurrency-limits `Gradient2Limit`.
//!
//! Gradient2 compares the current RTT (`short`) with a long exponential average of it (`long`,
//! over `long_window` samples) and shrinks the limit in proportion when the current one runs
//! ahead, while adding a fixed `queue_size` of headroom every sample so that it keeps probing:
//!
//! ```text
//! long = long + (rtt − long) × 2 / (long_window + 1)     (a plain average of the first 10)
//! long / rtt > 2        → long = long × 0.95             (recover quickly after a load spike)
//! in_flight < limit / 2 → unchanged                      (app-limited)
//! gradient = clamp(rtt_tolerance × long / rtt, 0.5, 1)
//! new      = limit × gradient + queue_size
//! limit    = limit × (1 − smoothing) + new × smoothing, clamped to [min_limit, max_limit]
//! ```
//!
//! The limit grows by `queue_size × smoothing` a sample while the RTT stays within
//! `rtt_tolerance` of its long average, and falls by up to half a sample when it runs ahead.
//! Gradient2 reads no drop signal: a dropped request counts by its RTT only, as in Netflix's.
//!
//! Defaults are Netflix's: initial 20, min 20, max 200, smoothing 0.2, queue size 4, long window
//! 600, RTT tolerance 1.5. The long window counts samples, not time: at hundreds of requests a
//! second, 600 samples is under a second, the long RTT follows the short one, and the limit
//! swings between the knee and several times it (this crate's `tests/convergence.rs`, a
//! 40-slot replica: 1× to 5×). A long window spanning minutes (60,000 samples there) and a
//! tolerance of 1.0 settle within 10 % of the knee; the tolerance is the queueing it accepts.
//!
//! Netflix's defaults do not aim at the knee. Fed one averaged sample a second (behind
//! [`Windowed`](crate::Windowed), as Netflix's `WindowedLimit` does), the 600-sample long window
//! spans ten minutes and no longer follows the short RTT, but the limit climbs by
//! `queue_size × smoothing` = 0.8 a window until the RTT is `rtt_tolerance` = 1.5 times the
//! long one: where the RTT grows as `L / k` past a knee `k`, the fixed point of
//! `L = L × 1.5 k / L + 4` is `1.5 k + 4`, 60 % above the knee, and the creeping long average
//! takes it higher (117 % above after two minutes in `tests/convergence.rs`); it crosses the
//! knee on the way up, about 26 s after starting at 20. Within 20 % of the knee takes a
//! tolerance near 1 and a long window far longer than the convergence time, as above.
//!
//! Source: Netflix/concurrency-limits, `com.netflix.concurrency.limits.limit.Gradient2Limit`.

use std::time::Duration;

use crate::algorithm::{LimitAlgorithm, Sample};

/// The parameters of [`Gradient2`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gradient2Params {
    /// The limit to start from.
    pub initial_limit: usize,
    /// The lowest limit.
    pub min_limit: usize,
    /// The highest limit.
    pub max_limit: usize,
    /// Weight of a new limit against the old one, in (0, 1].
    pub smoothing: f64,
    /// Headroom added every sample.
    pub queue_size: f64,
    /// Samples the long RTT averages over.
    pub long_window: usize,
    /// How far the current RTT may exceed the long one before the limit shrinks (≥ 1).
    pub rtt_tolerance: f64,
}

impl Default for Gradient2Params {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            smoothing: 0.2,
            queue_size: 4.0,
            long_window: 600,
            rtt_tolerance: 1.5,
        }
    }
}

/// Samples averaged plainly before the long RTT becomes exponential.
const WARMUP: usize = 10;

/// Netflix's Gradient2 limit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Gradient2 {
    params: Gradient2Params,
    limit: f64,
    long_rtt: f64,
    samples: usize,
}

impl Gradient2 {
    /// A Gradient2 limit with `params` (bounds made consistent).
    pub fn new(mut params: Gradient2Params) -> Self {
        params.min_limit = params.min_limit.max(1);
        params.max_limit = params.max_limit.max(params.min_limit);
        if !(params.smoothing > 0.0 && params.smoothing <= 1.0) {
            params.smoothing = Gradient2Params::default().smoothing;
        }
        params.rtt_tolerance = params.rtt_tolerance.max(1.0);
        params.long_window = params.long_window.max(1);
        if !params.queue_size.is_finite() || params.queue_size < 0.0 {
            params.queue_size = Gradient2Params::default().queue_size;
        }
        let limit = params.initial_limit.clamp(params.min_limit, params.max_limit) as f64;
        Self { params, limit, long_rtt: 0.0, samples: 0 }
    }

    /// The long RTT average, once a sample has come.
    pub fn long_rtt(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_secs_f64(self.long_rtt))
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Self::new(Gradient2Params::default())
    }
}

impl LimitAlgorithm for Gradient2 {
    fn name(&self) -> &'static str {
        "gradient2"
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let p = &self.params;
        let short = sample.rtt.as_secs_f64().max(1e-9);
        self.samples += 1;
        if self.samples <= WARMUP {
            self.long_rtt += (short - self.long_rtt) / self.samples as f64;
        } else {
            let factor = 2.0 / (p.long_window as f64 + 1.0);
            self.long_rtt += (short - self.long_rtt) * factor;
        }
        if self.long_rtt / short > 2.0 {
            self.long_rtt *= 0.95;
        }
        if (sample.in_flight as f64) < self.limit / 2.0 {
            return self.limit();
        }
        let gradient = (p.rtt_tolerance * self.long_rtt / short).clamp(0.5, 1.0);
        let new = self.limit * gradient + p.queue_size;
        let new = self.limit * (1.0 - p.smoothing) + new * p.smoothing;
        self.limit = new.clamp(p.min_limit as f64, p.max_limit as f64);
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    fn gradient2() -> Gradient2 {
        Gradient2::new(Gradient2Params { initial_limit: 50, min_limit: 5, ..Gradient2Params::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn grows_while_latency_holds_and_shrinks_when_it_rises() {
        let mut g = gradient2();
        let mut limit = 50;
        for _ in 0..50 {
            limit = g.update(&sample(100, limit, false));
        }
        assert!(limit > 80, "steady latency: it probes upwards ({limit})");
        let high = limit;
        // Latency triples: the gradient hits its floor of 0.5.
        for _ in 0..30 {
            limit = g.update(&sample(300, limit, false));
        }
        assert!(limit < high / 2, "rising latency: it backs off ({high} → {limit})");
        assert_eq!(g.update(&sample(300, 1, false)), limit, "app-limited: unchanged");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drop_counts_by_its_rtt_only() {
        let mut a = gradient2();
        let mut b = gradient2();
        for _ in 0..20 {
            a.update(&sample(100, 50, false));
            b.update(&sample(100, 50, false));
        }
        assert_eq!(a.update(&sample(100, 50, true)), b.update(&sample(100, 50, false)));
    }
}
