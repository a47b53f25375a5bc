//! AIMD: additive increase, multiplicative decrease, as Netflix's concurrency-limits `AIMDLimit`.
//!
//! The loss-based algorithm of TCP Reno applied to concurrency: each successful request that
//! found the limit at least half used adds one; a drop, or an RTT above `timeout`, multiplies the
//! limit by `backoff_ratio`.
//!
//! ```text
//! dropped or rtt > timeout   → limit = limit × backoff_ratio
//! else if in_flight × 2 ≥ limit → limit = limit + 1
//! limit = clamp(limit, min_limit, max_limit)
//! ```
//!
//! Defaults are Netflix's: initial 20, min 20, max 200, backoff 0.9, timeout 5 s. AIMD knows
//! nothing about latency below `timeout`: it finds the capacity only by being refused, so it
//! needs a service that drops (or a shed queue in front that refuses) when full.
//!
//! Source: Netflix/concurrency-limits, `com.netflix.concurrency.limits.limit.AIMDLimit`.

use std::time::Duration;

use crate::algorithm::{LimitAlgorithm, Sample};

/// The parameters of [`Aimd`] (a `{ name = "aimd", ... }` spec's fields).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AimdParams {
    /// The limit to start from.
    pub initial_limit: usize,
    /// The lowest limit.
    pub min_limit: usize,
    /// The highest limit.
    pub max_limit: usize,
    /// The factor a drop multiplies the limit by, in (0, 1).
    pub backoff_ratio: f64,
    /// An RTT above this counts as a drop, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for AimdParams {
    fn default() -> Self {
        Self { initial_limit: 20, min_limit: 20, max_limit: 200, backoff_ratio: 0.9, timeout_ms: 5_000 }
    }
}

/// Netflix's AIMD limit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Aimd {
    params: AimdParams,
    limit: usize,
}

impl Aimd {
    /// An AIMD limit with `params` (bounds made consistent: `1 ≤ min ≤ max`, ratio in (0, 1)).
    pub fn new(mut params: AimdParams) -> Self {
        params.min_limit = params.min_limit.max(1);
        params.max_limit = params.max_limit.max(params.min_limit);
        if !(params.backoff_ratio > 0.0 && params.backoff_ratio < 1.0) {
            params.backoff_ratio = AimdParams::default().backoff_ratio;
        }
        let limit = params.initial_limit.clamp(params.min_limit, params.max_limit);
        Self { params, limit }
    }
}

impl Default for Aimd {
    fn default() -> Self {
        Self::new(AimdParams::default())
    }
}

impl LimitAlgorithm for Aimd {
    fn name(&self) -> &'static str {
        "aimd"
    }

    fn limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let p = &self.params;
        let mut limit = self.limit;
        if sample.dropped || sample.rtt > Duration::from_millis(p.timeout_ms) {
            limit = (limit as f64 * p.backoff_ratio) as usize;
        } else if sample.in_flight * 2 >= limit {
            limit += 1;
        }
        self.limit = limit.clamp(p.min_limit, p.max_limit);
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    fn aimd() -> Aimd {
        Aimd::new(AimdParams { initial_limit: 50, min_limit: 5, max_limit: 100, ..AimdParams::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn grows_by_one_while_used_and_ignores_latency_below_its_timeout() {
        let mut a = aimd();
        assert_eq!(a.update(&sample(10, 50, false)), 51);
        assert_eq!(a.update(&sample(4_000, 51, false)), 52, "a slow success still grows it");
        assert_eq!(a.update(&sample(10, 10, false)), 52, "app-limited: not grown");
        assert_eq!(a.update(&sample(6_000, 52, false)), 46, "past the timeout: a drop");
    }

    #[tokio::test(start_paused = true)]
    async fn drops_cut_it_by_the_backoff_ratio_down_to_the_floor() {
        let mut a = aimd();
        assert_eq!(a.update(&sample(10, 50, true)), 45);
        let mut limit = 45;
        for _ in 0..40 {
            limit = a.update(&sample(10, limit, true));
        }
        assert_eq!(limit, 5);
    }
}
