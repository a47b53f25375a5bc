//! Knative's Pod Autoscaler (KPA), on concurrency: requests in flight across the pool.
//!
//! # Formula
//!
//! From the Knative Serving documentation (*Configuring the autoscaler*, *Configuring scale
//! bounds*, the panic-mode description) and `pkg/autoscaler/scaling/autoscaler.go`:
//!
//! ```text
//! target per pod  = container-concurrency-target × target-utilization   (default 0.7)
//! stable desired  = ceil(average concurrency over the stable window (60 s) / target per pod)
//! panic desired   = ceil(average concurrency over the panic window (10 % of 60 s = 6 s) / target per pod)
//! both clamped to [floor(ready / max-scale-down-rate 2), ceil(ready × max-scale-up-rate 1000)]
//! ```
//!
//! **Panic**: when the panic window's desired pods reach the panic threshold (200 %) of the ready
//! pods, the autoscaler enters panic mode: it follows the panic window and never scales down
//! while panicking. It leaves panic once a whole stable window (60 s) has passed without the
//! threshold being reached again. Outside panic it follows the stable window. Decisions are made
//! every 2 s (the tick interval); the average is taken over the samples of each window (one per
//! tick here; Knative buckets per second). A missing metric gives no decision (the count stays).
//! Knative scales to zero after a grace period by default; the comparison in the lab keeps at
//! least one replica, as `min-scale: 1` does.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{Bounds, PoolSize, Recommendation, Recommender};
use crate::Signals;

/// Settings of the [`Kpa`] (defaults: Knative's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KpaConfig {
    /// Requests in flight one pod is meant to hold (`container-concurrency-target-default`,
    /// 100 in Knative; set it to the replica's useful concurrency).
    pub target: f64,
    /// Share of the target to aim at (0.7).
    pub target_utilization: f64,
    /// The stable window (60 s).
    pub stable_window: Duration,
    /// The panic window (6 s: 10 % of the stable window).
    pub panic_window: Duration,
    /// Panic when the panic window asks for this share of the ready pods (2.0: 200 %).
    pub panic_threshold: f64,
    /// Decision interval (2 s).
    pub tick: Duration,
    /// At most this many times the ready pods after one decision (1000).
    pub max_scale_up_rate: f64,
    /// At least the ready pods divided by this after one decision (2).
    pub max_scale_down_rate: f64,
    /// Replica bounds.
    pub bounds: Bounds,
}

impl Default for KpaConfig {
    fn default() -> Self {
        Self {
            target: 100.0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            tick: Duration::from_secs(2),
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            bounds: Bounds::default(),
        }
    }
}

/// Knative's KPA (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Kpa {
    config: KpaConfig,
    /// Concurrency samples within the stable window (one per tick: bounded by the window).
    samples: VecDeque<(Instant, f64)>,
    /// When the panic threshold was last reached, while panicking.
    panic_since: Option<Instant>,
    /// The highest count asked for while panicking.
    max_panic_pods: u32,
}

impl Kpa {
    /// A KPA with `config`.
    pub fn new(config: KpaConfig) -> Self {
        Self { config, samples: VecDeque::new(), panic_since: None, max_panic_pods: 0 }
    }

    /// Whether it is in panic mode.
    pub fn is_panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    fn average(&self, now: Instant, window: Duration) -> f64 {
        let inside: Vec<f64> = self
            .samples
            .iter()
            .filter(|&&(at, _)| now.saturating_duration_since(at) < window)
            .map(|&(_, v)| v)
            .collect();
        if inside.is_empty() { 0.0 } else { inside.iter().sum::<f64>() / inside.len() as f64 }
    }
}

impl Default for Kpa {
    fn default() -> Self {
        Self::new(KpaConfig::default())
    }
}

impl Recommender for Kpa {
    fn name(&self) -> &'static str {
        "kpa"
    }

    fn interval(&self) -> Duration {
        self.config.tick
    }

    fn recommend(&mut self, now: Instant, size: PoolSize, signals: Option<&Signals>) -> Recommendation {
        let Some(signals) = signals else {
            return Recommendation::keep(size.desired, "metric missing: keep");
        };
        let c = &self.config;
        let per_pod = c.target * c.target_utilization;
        if per_pod.is_nan() || per_pod <= 0.0 {
            return Recommendation::keep(size.desired, "no target");
        }
        let stable_window = c.stable_window;
        while self.samples.front().is_some_and(|&(at, _)| now.saturating_duration_since(at) >= stable_window)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, signals.in_flight() as f64));
        let stable = self.average(now, c.stable_window);
        let panic = self.average(now, c.panic_window);
        let ready = f64::from(size.ready.max(1));
        let up = (ready * c.max_scale_up_rate).ceil();
        let down = (ready / c.max_scale_down_rate).floor();
        let bound = |x: f64| x.ceil().clamp(down, up) as u32;
        let stable_pods = bound(stable / per_pod);
        let panic_pods = bound(panic / per_pod);
        let over = panic / per_pod / ready >= c.panic_threshold;
        match self.panic_since {
            None if over => {
                self.panic_since = Some(now);
                self.max_panic_pods = size.desired;
            }
            Some(_) if over => self.panic_since = Some(now),
            Some(since) if now.saturating_duration_since(since) >= c.stable_window => {
                self.panic_since = None;
                self.max_panic_pods = 0;
            }
            _ => {}
        }
        let (desired, reason, metric) = if self.panic_since.is_some() {
            // Never scale down while panicking.
            let n = panic_pods.max(self.max_panic_pods);
            self.max_panic_pods = n;
            (n, "panic window", panic)
        } else {
            (stable_pods, "stable window", stable)
        };
        Recommendation { desired: c.bounds.clamp(desired), reason, metric: Some(metric) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::test_support::{pool, size};

    fn kpa() -> Kpa {
        // Target 10 in flight a pod at 70 %: 7 a pod.
        Kpa::new(KpaConfig { target: 10.0, bounds: Bounds::new(1, 100), ..KpaConfig::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn the_stable_window_sizes_by_concurrency_over_the_utilised_target() {
        // 5 pods holding 7 each: exactly on target, stays at 5.
        let mut k = kpa();
        for _ in 0..30 {
            let r = k.recommend(Instant::now(), size(5, 5), Some(&pool(Instant::now(), 5, 7, 0.0, 0)));
            assert_eq!(r.desired, 5);
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // Concurrency rises to 5 × 10 = 50 over the minute: ceil(50 / 7) = 8 once it fills the window.
        let mut last = 0;
        for _ in 0..30 {
            last =
                k.recommend(Instant::now(), size(5, 5), Some(&pool(Instant::now(), 5, 10, 0.0, 0))).desired;
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert!(!k.is_panicking(), "10 per pod is under twice 7");
        assert_eq!(last, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn panic_at_twice_the_capacity_and_exit_after_a_stable_window() {
        let mut k = kpa();
        for _ in 0..30 {
            k.recommend(Instant::now(), size(2, 2), Some(&pool(Instant::now(), 2, 7, 0.0, 0)));
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // A burst: 2 pods now hold 35 each (70 in all, 10 pods' worth): the 6 s window sees it
        // at once and asks for 5 times the ready pods: panic.
        let r = k.recommend(Instant::now(), size(2, 2), Some(&pool(Instant::now(), 2, 35, 0.0, 0)));
        assert!(k.is_panicking());
        assert_eq!(r.reason, "panic window");
        // The panic window averages its three samples (14, 14, 70): ceil(32.7 / 7) = 5 pods,
        // 2.3 times the 2 ready.
        assert_eq!(r.desired, 5);
        let entered = Instant::now();
        // The burst ends (one request a pod): panic never scales down, and ends one stable
        // window after the threshold was last reached.
        let (mut desired, mut highest) = (r.desired, r.desired);
        while k.is_panicking() {
            tokio::time::advance(Duration::from_secs(2)).await;
            let now = Instant::now();
            let r = k.recommend(now, size(desired, desired), Some(&pool(now, desired, 1, 0.0, 0)));
            if k.is_panicking() {
                assert!(r.desired >= highest, "no scale-down in panic: {} < {highest}", r.desired);
                highest = r.desired;
            }
            desired = r.desired;
        }
        assert_eq!(Instant::now() - entered, Duration::from_secs(60), "left panic one stable window later");
        assert!(desired < highest, "then the stable window rules: {desired}");
        assert!(desired >= highest / 2, "at most halved at once: {desired}");
    }

    #[tokio::test(start_paused = true)]
    async fn scale_down_is_at_most_halving() {
        let mut k = kpa();
        let r = k.recommend(Instant::now(), size(8, 8), Some(&pool(Instant::now(), 8, 0, 0.0, 0)));
        assert_eq!(r.desired, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_signals_keep_the_count() {
        let mut k = kpa();
        let r = k.recommend(Instant::now(), size(8, 8), None);
        assert_eq!(r.desired, 8);
    }
}
