//! The Kubernetes Horizontal Pod Autoscaler's algorithm, on a per-replica metric: requests in
//! flight per ready replica (the custom "concurrency" metric teams give the HPA for model
//! servers), against a target value.
//!
//! # Formula
//!
//! From the Kubernetes documentation, *Horizontal Pod Autoscaling*, "Algorithm details", and the
//! controller's `replica_calculator.go`:
//!
//! ```text
//! desiredReplicas = ceil[currentReplicas × (currentMetricValue / desiredMetricValue)]
//! ```
//!
//! where `currentMetricValue` is the average over ready pods. The ratio is skipped when within the
//! tolerance (`|ratio − 1| ≤ 0.1`). On a scale-up, pods not yet ready count as using nothing
//! (the ratio is computed again with them at 0; if that reverses the direction or falls within
//! the tolerance, nothing changes). A missing metric never causes a scale-down: the replica count
//! is kept.
//!
//! Then the default `behavior`:
//! - **scale-down stabilisation** of 300 s: the recommendation is the highest of those made over
//!   the last 300 s, so the pool shrinks only after 5 minutes of lower ones;
//! - **scale-up** without stabilisation, at most `max(4 pods, 100 %)` per 15 s period
//!   (`selectPolicy: Max` over the two default policies);
//! - **scale-down** at most 100 % per 15 s (no limit beyond `minReplicas`);
//! - the controller syncs every 15 s (`--horizontal-pod-autoscaler-sync-period`).
//!
//! Defaults in [`HpaConfig::default`]; the target (in flight per replica) is the one setting a
//! team has to choose, as with any HPA custom metric.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{Bounds, PoolSize, Recommendation, Recommender};
use crate::Signals;

/// Settings of the [`Hpa`] (defaults: the Kubernetes defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HpaConfig {
    /// Target requests in flight per ready replica.
    pub target: f64,
    /// Ratios within `1 ± tolerance` change nothing (0.1).
    pub tolerance: f64,
    /// The sync period (15 s).
    pub sync: Duration,
    /// Scale-down stabilisation window (300 s).
    pub scale_down_stabilisation: Duration,
    /// Scale-up policy: at most this many pods more per period (4)...
    pub scale_up_pods: u32,
    /// ...or this percentage more (100 %), whichever allows more.
    pub scale_up_percent: u32,
    /// The policies' period (15 s).
    pub period: Duration,
    /// Replica bounds.
    pub bounds: Bounds,
}

impl Default for HpaConfig {
    fn default() -> Self {
        Self {
            target: 8.0,
            tolerance: 0.1,
            sync: Duration::from_secs(15),
            scale_down_stabilisation: Duration::from_secs(300),
            scale_up_pods: 4,
            scale_up_percent: 100,
            period: Duration::from_secs(15),
            bounds: Bounds::default(),
        }
    }
}

/// The Kubernetes HPA algorithm (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Hpa {
    config: HpaConfig,
    /// Recommendations made within the stabilisation window (bounded by it: one per sync).
    history: VecDeque<(Instant, u32)>,
    /// Replica counts decided within the last period, to bound scale-ups per period.
    decided: VecDeque<(Instant, u32)>,
}

impl Hpa {
    /// An HPA with `config`.
    pub fn new(config: HpaConfig) -> Self {
        Self { config, history: VecDeque::new(), decided: VecDeque::new() }
    }

    /// The raw recommendation (before stabilisation and rate limits), or `None` to keep the count.
    fn raw(&self, size: PoolSize, signals: &Signals) -> Option<(u32, f64)> {
        let ready = signals.replicas.len() as u32;
        if ready == 0 || self.config.target.is_nan() || self.config.target <= 0.0 {
            return None;
        }
        let total = signals.in_flight() as f64;
        let average = total / f64::from(ready);
        let mut ratio = average / self.config.target;
        let mut pods = ready;
        let unready = size.current.saturating_sub(ready);
        if ratio > 1.0 && unready > 0 {
            // Pods not ready yet count as using nothing on a scale-up.
            pods = ready + unready;
            ratio = total / (f64::from(pods) * self.config.target);
            if ratio <= 1.0 + self.config.tolerance {
                return None;
            }
        }
        if (ratio - 1.0).abs() <= self.config.tolerance {
            return None;
        }
        Some(((ratio * f64::from(pods)).ceil() as u32, average))
    }
}

impl Default for Hpa {
    fn default() -> Self {
        Self::new(HpaConfig::default())
    }
}

impl Recommender for Hpa {
    fn name(&self) -> &'static str {
        "hpa"
    }

    fn interval(&self) -> Duration {
        self.config.sync
    }

    fn recommend(&mut self, now: Instant, size: PoolSize, signals: Option<&Signals>) -> Recommendation {
        let current = size.desired;
        let Some(signals) = signals else {
            return Recommendation::keep(current, "metric missing: keep");
        };
        let (raw, metric) = match self.raw(size, signals) {
            Some((n, m)) => (n, Some(m)),
            None => (current, None),
        };
        let raw = self.config.bounds.clamp(raw);
        // Scale-down stabilisation: the highest recommendation of the window.
        let window = self.config.scale_down_stabilisation;
        while self.history.front().is_some_and(|&(at, _)| now.saturating_duration_since(at) >= window) {
            self.history.pop_front();
        }
        self.history.push_back((now, raw));
        let stabilised = self.history.iter().map(|&(_, n)| n).max().unwrap_or(raw);
        // Scale-up rate: relative to the count at the start of the period.
        let period = self.config.period;
        while self.decided.front().is_some_and(|&(at, _)| now.saturating_duration_since(at) >= period) {
            self.decided.pop_front();
        }
        let base = self.decided.iter().map(|&(_, n)| n).min().unwrap_or(current).min(current);
        let by_pods = base.saturating_add(self.config.scale_up_pods);
        let by_percent = base.saturating_add(base.saturating_mul(self.config.scale_up_percent) / 100);
        let up_limit = by_pods.max(by_percent);
        let (desired, reason) = if stabilised > current {
            if stabilised > up_limit {
                (up_limit, "scale up, rate-limited")
            } else {
                (stabilised, "scale up")
            }
        } else if stabilised < current {
            (stabilised, "scale down after stabilisation")
        } else if raw < current {
            (current, "lower, held by the stabilisation window")
        } else {
            (current, "within tolerance")
        };
        let desired = self.config.bounds.clamp(desired);
        self.decided.push_back((now, current));
        Recommendation { desired, reason, metric }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::test_support::{pool, size};

    fn hpa(target: f64) -> Hpa {
        Hpa::new(HpaConfig { target, bounds: Bounds::new(1, 100), ..HpaConfig::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn double_the_metric_doubles_the_replicas() {
        // The documentation's example: current 200m against a desired 100m doubles the replicas.
        let mut h = hpa(100.0);
        let r = h.recommend(Instant::now(), size(3, 3), Some(&pool(Instant::now(), 3, 200, 0.0, 0)));
        assert_eq!(r.desired, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn within_the_tolerance_nothing_changes() {
        let mut h = hpa(100.0);
        let r = h.recommend(Instant::now(), size(4, 4), Some(&pool(Instant::now(), 4, 109, 0.0, 0)));
        assert_eq!(r.desired, 4, "ratio 1.09 is within 0.1");
        let r = h.recommend(Instant::now(), size(4, 4), Some(&pool(Instant::now(), 4, 111, 0.0, 0)));
        assert_eq!(r.desired, 5, "ratio 1.11 is not: ceil(4 × 1.11)");
    }

    #[tokio::test(start_paused = true)]
    async fn half_the_metric_halves_the_replicas_after_the_stabilisation_window() {
        // The documentation's other example: 50m against 100m halves, but only once every
        // recommendation of the last 300 s is lower.
        let mut h = hpa(100.0);
        let mut desired = 4;
        let start = Instant::now();
        let r =
            h.recommend(Instant::now(), size(desired, desired), Some(&pool(Instant::now(), 4, 100, 0.0, 0)));
        assert_eq!(r.desired, 4);
        loop {
            tokio::time::advance(Duration::from_secs(15)).await;
            let r = h.recommend(
                Instant::now(),
                size(desired, desired),
                Some(&pool(Instant::now(), 4, 50, 0.0, 0)),
            );
            if r.desired < desired {
                desired = r.desired;
                break;
            }
            assert_eq!(r.reason, "lower, held by the stabilisation window");
        }
        assert_eq!(desired, 2);
        assert_eq!(Instant::now() - start, Duration::from_secs(300), "after exactly the 300 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn scale_up_is_at_most_four_pods_or_double_per_period() {
        let mut h = hpa(10.0);
        let r = h.recommend(Instant::now(), size(1, 1), Some(&pool(Instant::now(), 1, 1000, 0.0, 0)));
        assert_eq!((r.desired, r.reason), (5, "scale up, rate-limited"), "1 pod: max(1 + 4, 2)");
        tokio::time::advance(Duration::from_secs(15)).await;
        let r = h.recommend(Instant::now(), size(10, 10), Some(&pool(Instant::now(), 10, 1000, 0.0, 0)));
        assert_eq!(r.desired, 20, "10 pods: max(14, 20)");
    }

    #[tokio::test(start_paused = true)]
    async fn unready_pods_count_as_idle_on_a_scale_up() {
        // 2 ready pods at 150 each against 100, 2 more starting: 300 over 4 pods is 0.75, which
        // reverses the direction: no change.
        let mut h = hpa(100.0);
        let r = h.recommend(
            Instant::now(),
            PoolSize { desired: 4, current: 4, ready: 2 },
            Some(&pool(Instant::now(), 2, 150, 0.0, 0)),
        );
        assert_eq!(r.desired, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_metric_never_scales_down() {
        let mut h = hpa(100.0);
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(15)).await;
            let r = h.recommend(Instant::now(), size(6, 6), None);
            assert_eq!(r.desired, 6);
        }
    }
}
