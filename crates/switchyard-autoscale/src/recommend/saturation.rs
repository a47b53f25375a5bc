//! llm-d's saturation-based autoscaler (the workload variant autoscaler's saturation analyzer),
//! on the replicas' own reports: KV-cache use and queue length.
//!
//! # Formula
//!
//! From llm-d's `workload-variant-autoscaler` documentation (*Saturation Analyzer*, *Capacity
//! Scaling Configuration*), with its defaults:
//!
//! - a replica is **saturated** when its KV-cache use ≥ `kvCacheThreshold` (0.8) or its queue
//!   length ≥ `queueLengthThreshold` (5);
//! - over the non-saturated replicas, the average spare KV is `0.8 − kv` and the average spare
//!   queue `5 − queue`; **scale up by one** when there is no non-saturated replica, or the average
//!   spare KV < `kvSpareTrigger` (0.1), or the average spare queue < `queueSpareTrigger` (3);
//! - **scale down by one** only when it is safe in the worst case: the pool's total KV use and
//!   queue spread over one replica fewer still leave the spare triggers, and every replica
//!   reported (a missing report blocks a scale-down);
//! - no scale-up while replicas are still starting (it would cascade), one replica per cycle, a
//!   cycle every 60 s (the controller's reconcile interval).

use std::time::Duration;

use tokio::time::Instant;

use super::{Bounds, PoolSize, Recommendation, Recommender};
use crate::Signals;

/// Settings of [`Saturation`] (defaults: llm-d's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaturationConfig {
    /// KV-cache use at which a replica is saturated (0.8).
    pub kv_threshold: f64,
    /// Queue length at which a replica is saturated (5).
    pub queue_threshold: f64,
    /// Scale up when the average spare KV falls below this (0.1).
    pub kv_spare_trigger: f64,
    /// Scale up when the average spare queue falls below this (3).
    pub queue_spare_trigger: f64,
    /// The cycle (60 s).
    pub cycle: Duration,
    /// Replica bounds.
    pub bounds: Bounds,
}

impl Default for SaturationConfig {
    fn default() -> Self {
        Self {
            kv_threshold: 0.8,
            queue_threshold: 5.0,
            kv_spare_trigger: 0.1,
            queue_spare_trigger: 3.0,
            cycle: Duration::from_secs(60),
            bounds: Bounds::default(),
        }
    }
}

/// llm-d's saturation-based autoscaler (see the [module docs](self)).
#[derive(Debug, Clone, Default)]
pub struct Saturation {
    config: SaturationConfig,
}

impl Saturation {
    /// The autoscaler with `config`.
    pub fn new(config: SaturationConfig) -> Self {
        Self { config }
    }
}

impl Recommender for Saturation {
    fn name(&self) -> &'static str {
        "llm-d"
    }

    fn interval(&self) -> Duration {
        self.config.cycle
    }

    fn recommend(&mut self, _now: Instant, size: PoolSize, signals: Option<&Signals>) -> Recommendation {
        let c = &self.config;
        let current = size.desired;
        let Some(signals) = signals else {
            return Recommendation::keep(current, "metrics missing: keep");
        };
        if size.starting() > 0 {
            return Recommendation::keep(current, "replicas pending: keep");
        }
        let reports: Vec<(f64, f64)> = signals
            .replicas
            .iter()
            .filter_map(|r| r.report.as_ref())
            .map(|r| (r.kv_cache_utilization, f64::from(r.queue_depth)))
            .collect();
        if reports.is_empty() {
            return Recommendation::keep(current, "no report: keep");
        }
        let free: Vec<&(f64, f64)> =
            reports.iter().filter(|&&(kv, q)| kv < c.kv_threshold && q < c.queue_threshold).collect();
        let up = |reason| Recommendation { desired: c.bounds.clamp(current + 1), reason, metric: None };
        if free.is_empty() {
            return up("every replica saturated: +1");
        }
        let n = free.len() as f64;
        let spare_kv = free.iter().map(|&&(kv, _)| c.kv_threshold - kv).sum::<f64>() / n;
        let spare_queue = free.iter().map(|&&(_, q)| c.queue_threshold - q).sum::<f64>() / n;
        if spare_kv < c.kv_spare_trigger || spare_queue < c.queue_spare_trigger {
            return Recommendation { metric: Some(spare_kv), ..up("spare capacity low: +1") };
        }
        let all_reported = signals.reports_complete();
        let total = reports.len();
        if all_reported && total > 1 && current > c.bounds.min {
            let fewer = (total - 1) as f64;
            let kv_after = reports.iter().map(|&(kv, _)| kv).sum::<f64>() / fewer;
            let queue_after = reports.iter().map(|&(_, q)| q).sum::<f64>() / fewer;
            if c.kv_threshold - kv_after >= c.kv_spare_trigger
                && c.queue_threshold - queue_after >= c.queue_spare_trigger
            {
                return Recommendation {
                    desired: c.bounds.clamp(current - 1),
                    reason: "safe with one fewer: -1",
                    metric: Some(spare_kv),
                };
            }
        }
        Recommendation { desired: current, reason: "enough spare capacity", metric: Some(spare_kv) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::test_support::{pool, size};

    fn sat() -> Saturation {
        Saturation::new(SaturationConfig { bounds: Bounds::new(1, 10), ..SaturationConfig::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn saturated_at_kv_080_or_queue_5() {
        let now = Instant::now();
        let mut s = sat();
        assert_eq!(s.recommend(now, size(3, 3), Some(&pool(now, 3, 0, 0.8, 0))).desired, 4, "KV 0.8");
        assert_eq!(s.recommend(now, size(3, 3), Some(&pool(now, 3, 0, 0.1, 5))).desired, 4, "queue 5");
    }

    #[tokio::test(start_paused = true)]
    async fn spare_capacity_triggers() {
        // The documentation's example: non-saturated replicas at KV 0.75 leave 0.05 spare, under
        // the 0.1 trigger: scale up before any is saturated.
        let now = Instant::now();
        let mut s = sat();
        assert_eq!(s.recommend(now, size(2, 2), Some(&pool(now, 2, 0, 0.75, 0))).desired, 3);
        // Queue 3 leaves 2 spare, under 3.
        assert_eq!(s.recommend(now, size(2, 2), Some(&pool(now, 2, 0, 0.2, 3))).desired, 3);
        // KV 0.5 and queue 1: room enough, but not for one replica fewer (1.0 KV over 1 replica).
        assert_eq!(s.recommend(now, size(2, 2), Some(&pool(now, 2, 0, 0.5, 1))).desired, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn scale_down_only_when_one_fewer_is_safe() {
        let now = Instant::now();
        let mut s = sat();
        // 4 replicas at KV 0.3: 1.2 over 3 is 0.4, spare 0.4 ≥ 0.1: one fewer.
        assert_eq!(s.recommend(now, size(4, 4), Some(&pool(now, 4, 0, 0.3, 0))).desired, 3);
        // A replica without a report blocks it.
        let mut signals = pool(now, 4, 0, 0.3, 0);
        signals.replicas[0].report = None;
        assert_eq!(s.recommend(now, size(4, 4), Some(&signals)).desired, 4);
        assert_eq!(s.recommend(now, size(4, 4), None).desired, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn no_scale_up_while_replicas_start() {
        let now = Instant::now();
        let mut s = sat();
        let r =
            s.recommend(now, PoolSize { desired: 4, current: 4, ready: 3 }, Some(&pool(now, 3, 0, 0.9, 9)));
        assert_eq!(r.desired, 4);
    }
}
