//! Vegas: delay-based, from TCP Vegas, as Netflix's concurrency-limits `VegasLimit`.
//!
//! Vegas estimates how many requests wait in the service's queue from the ratio of the smallest
//! RTT seen (`rtt_noload`, the RTT with no queue) to the current one, and keeps that queue small:
//!
//! ```text
//! queue = ceil(limit × (1 − rtt_noload / rtt))
//! dropped               → limit = limit − log10(limit)
//! in_flight × 2 < limit → unchanged (the caller, not the service, is the bottleneck)
//! queue ≤ threshold     → limit = limit + beta       (far below capacity: grow fast)
//! queue < alpha         → limit = limit + log10(limit)
//! queue > beta          → limit = limit − log10(limit)
//! limit = clamp(limit, 1, max_limit); smoothed: limit = (1 − s) × old + s × limit
//! ```
//!
//! with `log10(x) = max(1, ⌊log10 x⌋)` and, as Netflix's builder takes `alpha`, `beta` and
//! `threshold` as functions of the limit,
//!
//! ```text
//! alpha     = alpha_log × log10(limit) + alpha_share × limit        (written `alpha`, `alpha_share`)
//! beta      = beta_log × log10(limit) + beta_share × limit          (`beta`, `beta_share`)
//! threshold = threshold_log × log10(limit) + threshold_share × limit (`threshold`, `threshold_share`)
//! ```
//!
//! A limit `L` above the service's true concurrency `k` leaves about `L − k` requests queued, so
//! Vegas settles between `k + alpha` and `k + beta`.
//!
//! `rtt_noload` only falls; so that it can follow a service that became slower, it is reset to
//! the current RTT every `probe_multiplier × limit × U(0.5, 1)` samples (the probe).
//!
//! # Defaults, and Netflix's
//!
//! [`VegasParams::netflix`] (and [`Vegas::netflix`]) are Netflix's exactly: initial 20, max
//! 1000, smoothing 1, probe multiplier 30, `alpha = 3·log10`, `beta = 6·log10`,
//! `threshold = log10`. Fed every request of a replica with `k` slots whose service time varies
//! by ±10 % (`tests/convergence.rs`, offered twice its capacity), they find the knee of a 40-slot
//! replica (2-6 % off after 30 s) but not of 8 or 128 slots (52-93 % off), because alpha and
//! beta are absolute queue lengths while the noise of the estimate grows with the limit:
//!
//! - `rtt_noload` is the smallest RTT, 0.9 × the mean service time here, so with no queue at all
//!   the estimate is `L × (1 − 0.9 / u)` for `u` in 0.9..1.1, up to 18 % of `L` (about 10 % on
//!   average). At 128 slots that exceeds `beta = 6·2 = 12` on half the samples and the limit
//!   sinks to 55-60, half the knee;
//! - at 8 slots, `alpha` and `beta` (3 and 6) are as large as the knee itself: the limit settles
//!   at `0.9 k + 3..6` = 10-13 and the `+beta` step (+6 at once whenever the estimate rounds
//!   to ≤ 1) throws it about, to 20 and beyond.
//!
//! [`VegasParams::knee`] (and [`Vegas::knee`]), **the default**, keeps the formula, Netflix's
//! initial limit, ceiling and probe, and scales the queue bounds with the limit:
//! `alpha = log10 + 5 % of the limit`, `beta = log10 + 15 % of the limit` (so that the noise of
//! ~10 % of `L` sits between them and a real queue of a few percent of `L` above `beta`),
//! `threshold = 0` (the `+beta` jump only when the RTT is the no-load one exactly, so a quiet
//! sample does not throw a large limit up by 15 %), and smoothing 0.2 (a step of at most
//! `0.2 × log10` a sample, under 20 % of the limit a round trip). In `tests/convergence.rs`
//! (replicas of 8 to 128 slots) it is within 1-17 % of the knee after 30 s (figures in
//! `reports/lab/limit-convergence.md`). Like Gradient2's `knee`, it reads a per-request RTT: the
//! noise it tolerates is the ±10 % of a classic server; LLM requests of very different sizes
//! need [`Windowed`](crate::Windowed) or Netflix's parameters: in lab `overload` (LLM requests
//! of the Azure trace, fed per request) the limit sinks (goodput 0.009 of capacity at 3×,
//! against 0.101 with Netflix's; behind `Windowed` 0.105, against 0.071). As a config:
//! `{ name = "vegas", smoothing = 0.2, alpha = 1, alpha_share = 0.05, beta = 1,
//! beta_share = 0.15, threshold = 0 }`; Netflix's: `{ name = "vegas", smoothing = 1, alpha = 3,
//! alpha_share = 0, beta = 6, beta_share = 0, threshold = 1 }`.
//!
//! Source: Netflix/concurrency-limits, `com.netflix.concurrency.limits.limit.VegasLimit`;
//! Brakmo and Peterson, "TCP Vegas: end to end congestion avoidance on a global internet",
//! IEEE JSAC 1995.

use std::time::Duration;

use rand::{RngExt, SeedableRng};

use crate::algorithm::{LimitAlgorithm, Sample, log10_step};

/// The parameters of [`Vegas`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VegasParams {
    /// The limit to start from.
    pub initial_limit: usize,
    /// The highest limit.
    pub max_limit: usize,
    /// Weight of a new limit against the old one, in (0, 1].
    pub smoothing: f64,
    /// Samples between probes, as a multiple of the limit.
    pub probe_multiplier: usize,
    /// Seed of the probe's jitter.
    pub seed: u64,
    /// `alpha` as a multiple of `log10(limit)`: with a queue estimate below `alpha` the limit
    /// grows by `log10(limit)`.
    pub alpha: f64,
    /// `beta` as a multiple of `log10(limit)`: with a queue estimate above `beta` the limit
    /// shrinks by `log10(limit)`.
    pub beta: f64,
    /// `threshold` as a multiple of `log10(limit)`: with a queue estimate at or below it the
    /// limit grows by `beta`.
    pub threshold: f64,
    /// Added to `alpha`, as a share of the limit.
    pub alpha_share: f64,
    /// Added to `beta`, as a share of the limit.
    pub beta_share: f64,
    /// Added to `threshold`, as a share of the limit.
    pub threshold_share: f64,
}

impl VegasParams {
    /// Parameters that find a replica's knee (see the [module docs](self)), the default:
    /// Netflix's initial 20, max 1000 and probe multiplier 30, with smoothing 0.2,
    /// `alpha = log10 + 5 %` and `beta = log10 + 15 %` of the limit, `threshold = 0`.
    pub fn knee() -> Self {
        Self {
            smoothing: 0.2,
            alpha: 1.0,
            beta: 1.0,
            threshold: 0.0,
            alpha_share: 0.05,
            beta_share: 0.15,
            threshold_share: 0.0,
            ..Self::netflix()
        }
    }

    /// Netflix's defaults, exactly: initial 20, max 1000, smoothing 1, probe multiplier 30,
    /// `alpha = 3·log10`, `beta = 6·log10`, `threshold = log10`.
    pub fn netflix() -> Self {
        Self {
            initial_limit: 20,
            max_limit: 1000,
            smoothing: 1.0,
            probe_multiplier: 30,
            seed: 0,
            alpha: 3.0,
            beta: 6.0,
            threshold: 1.0,
            alpha_share: 0.0,
            beta_share: 0.0,
            threshold_share: 0.0,
        }
    }
}

impl Default for VegasParams {
    /// The knee-finding parameters ([`VegasParams::knee`]).
    fn default() -> Self {
        Self::knee()
    }
}

/// Netflix's Vegas limit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Vegas {
    params: VegasParams,
    limit: f64,
    rtt_noload: Option<Duration>,
    probe_count: usize,
    probe_jitter: f64,
    rng: rand::rngs::Xoshiro256PlusPlus,
}

impl Vegas {
    /// A Vegas limit with `params` (bounds made consistent).
    pub fn new(mut params: VegasParams) -> Self {
        params.max_limit = params.max_limit.max(1);
        if !(params.smoothing > 0.0 && params.smoothing <= 1.0) {
            params.smoothing = 1.0;
        }
        params.probe_multiplier = params.probe_multiplier.max(1);
        let fallback = VegasParams::default();
        for (value, default) in [
            (&mut params.alpha, fallback.alpha),
            (&mut params.beta, fallback.beta),
            (&mut params.threshold, fallback.threshold),
            (&mut params.alpha_share, fallback.alpha_share),
            (&mut params.beta_share, fallback.beta_share),
            (&mut params.threshold_share, fallback.threshold_share),
        ] {
            if !(value.is_finite() && *value >= 0.0) {
                *value = default;
            }
        }
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(params.seed);
        let probe_jitter = rng.random_range(0.5..1.0);
        let limit = params.initial_limit.clamp(1, params.max_limit) as f64;
        Self { params, limit, rtt_noload: None, probe_count: 0, probe_jitter, rng }
    }

    /// Vegas with Netflix's defaults ([`VegasParams::netflix`]).
    pub fn netflix() -> Self {
        Self::new(VegasParams::netflix())
    }

    /// Vegas that finds a replica's knee ([`VegasParams::knee`]), as `default()`.
    pub fn knee() -> Self {
        Self::new(VegasParams::knee())
    }

    /// The no-load RTT in use, once a sample has come.
    pub fn rtt_noload(&self) -> Option<Duration> {
        self.rtt_noload
    }
}

impl Default for Vegas {
    fn default() -> Self {
        Self::new(VegasParams::default())
    }
}

impl LimitAlgorithm for Vegas {
    fn name(&self) -> &'static str {
        "vegas"
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let rtt = sample.rtt.max(Duration::from_nanos(1));
        self.probe_count += 1;
        let probe_at = self.params.probe_multiplier as f64 * self.limit * self.probe_jitter;
        if self.probe_count as f64 >= probe_at {
            self.probe_jitter = self.rng.random_range(0.5..1.0);
            self.probe_count = 0;
            self.rtt_noload = Some(rtt);
            return self.limit();
        }
        let noload = match self.rtt_noload {
            Some(noload) if rtt >= noload => noload,
            _ => {
                self.rtt_noload = Some(rtt);
                return self.limit();
            }
        };
        let limit = self.limit;
        let p = &self.params;
        let log = log10_step(limit);
        let alpha = p.alpha * log + p.alpha_share * limit;
        let beta = p.beta * log + p.beta_share * limit;
        let threshold = p.threshold * log + p.threshold_share * limit;
        let queue = (limit * (1.0 - noload.as_secs_f64() / rtt.as_secs_f64())).ceil();
        let new = if sample.dropped {
            limit - log
        } else if (sample.in_flight as f64) * 2.0 < limit {
            return self.limit();
        } else if queue <= threshold {
            limit + beta
        } else if queue < alpha {
            limit + log
        } else if queue > beta {
            limit - log
        } else {
            return self.limit();
        };
        let new = new.clamp(1.0, self.params.max_limit as f64);
        self.limit = (1.0 - self.params.smoothing) * limit + self.params.smoothing * new;
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    fn vegas() -> Vegas {
        // No probe during the test.
        Vegas::new(VegasParams { initial_limit: 40, probe_multiplier: 1_000, ..VegasParams::netflix() })
    }

    #[tokio::test(start_paused = true)]
    async fn grows_fast_with_no_queue_and_shrinks_as_latency_rises() {
        let mut v = vegas();
        assert_eq!(v.update(&sample(100, 40, false)), 40, "the first sample sets rtt_noload");
        assert_eq!(v.rtt_noload(), Some(Duration::from_millis(100)));
        assert_eq!(v.update(&sample(100, 40, false)), 46, "no queue: + beta (6 × log10)");
        // 46 × (1 − 100/110) = 4.2 → queue 5, between alpha (3) and beta (6): unchanged.
        assert_eq!(v.update(&sample(110, 46, false)), 46);
        // Latency up by half: queue 16 > beta: one step down per sample.
        let mut limit = 46;
        for _ in 0..10 {
            limit = v.update(&sample(150, limit, false));
        }
        assert_eq!(limit, 36);
        assert_eq!(v.update(&sample(100, 5, false)), 36, "app-limited: unchanged");
    }

    #[tokio::test(start_paused = true)]
    async fn drops_step_it_down() {
        let mut v = vegas();
        v.update(&sample(100, 40, false));
        assert_eq!(v.update(&sample(100, 40, true)), 39);
        assert_eq!(v.update(&sample(100, 1, true)), 38, "a drop counts even when app-limited");
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_lets_rtt_noload_rise() {
        let mut v =
            Vegas::new(VegasParams { initial_limit: 10, probe_multiplier: 1, ..VegasParams::netflix() });
        v.update(&sample(50, 10, false));
        let mut saw_probe = false;
        for _ in 0..20 {
            v.update(&sample(80, 10, false));
            saw_probe |= v.rtt_noload() == Some(Duration::from_millis(80));
        }
        assert!(saw_probe, "rtt_noload followed the slower service");
    }

    #[test]
    fn netflix_and_knee_are_reachable_from_a_config() {
        let netflix: VegasParams = serde_json::from_str(
            r#"{"smoothing": 1, "alpha": 3, "alpha_share": 0, "beta": 6, "beta_share": 0, "threshold": 1}"#,
        )
        .unwrap();
        assert_eq!(netflix, VegasParams::netflix());
        assert_eq!(serde_json::from_str::<VegasParams>("{}").unwrap(), VegasParams::knee());
        let bad: VegasParams = serde_json::from_str(r#"{"beta_share": -1}"#).unwrap();
        assert_eq!(Vegas::new(bad).params.beta_share, VegasParams::knee().beta_share);
    }
}
