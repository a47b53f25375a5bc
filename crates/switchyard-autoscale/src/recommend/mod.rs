//! Recommenders: from the pool's [`Signals`] and its current size, how many replicas it should
//! have.
//!
//! Every recommender is a plain state machine behind one trait, [`Recommender`], driven by the
//! [`Autoscaler`](crate::Autoscaler) every [`interval`](Recommender::interval) with the time from
//! `tokio::time` (so the paused clock drives them in tests and in the lab):
//!
//! - [`Hpa`]: the Kubernetes Horizontal Pod Autoscaler's algorithm and defaults;
//! - [`Kpa`]: Knative's Pod Autoscaler (stable and panic windows);
//! - [`Saturation`]: llm-d's saturation-based workload variant autoscaler;
//! - [`LlmAware`]: Switchyard's default, sized from work in tokens over learnt capacity, counting
//!   replicas still starting, early on the trend and slow down.
//!
//! Each module documents its formula, its defaults and where they come from, and tests itself
//! against worked examples of that documentation.
//!
//! # What is and is not vertical scaling here
//!
//! An LLM replica's size is fixed by its accelerator and weights; what varies live is how much of
//! it a request gets, which the balancer's per-endpoint limit and capacity estimate learn (its
//! usable concurrency and speed: the vertical part). The recommenders size the count from that
//! learnt capacity (the horizontal part), in one loop. Resizing a replica's resources in place
//! does not make an engine's GPU faster; the host CPU and memory around the engine can be resized
//! in place, and [`Vertical`](crate::Vertical) recommends them beside the count (see
//! [`crate::vertical`]).

pub mod hpa;
pub mod kpa;
pub mod llm_aware;
pub mod saturation;

use std::time::Duration;

pub use hpa::{Hpa, HpaConfig};
pub use kpa::{Kpa, KpaConfig};
pub use llm_aware::{LlmAware, LlmAwareConfig};
pub use saturation::{Saturation, SaturationConfig};
use tokio::time::Instant;

use crate::Signals;

/// The pool's size as the scaler reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolSize {
    /// The replicas asked for last (ready, starting, not the draining ones).
    pub desired: u32,
    /// Replicas that exist: ready or still starting.
    pub current: u32,
    /// Replicas ready to serve (health SERVING, in discovery).
    pub ready: u32,
}

impl PoolSize {
    /// Replicas started and not ready yet.
    pub fn starting(&self) -> u32 {
        self.current.saturating_sub(self.ready)
    }
}

/// A recommendation: the replicas the pool should have, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    /// The replicas the pool should have.
    pub desired: u32,
    /// Why, in a few words (logged with the decision).
    pub reason: &'static str,
    /// The figure the recommender compared with its target (its metric, in its own units), if it
    /// had one.
    pub metric: Option<f64>,
}

impl Recommendation {
    /// Keep `desired` as it is, for `reason`.
    pub fn keep(desired: u32, reason: &'static str) -> Self {
        Self { desired, reason, metric: None }
    }
}

/// The smallest and largest pool a recommender may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// At least this many replicas (0 allows scale to zero where the recommender supports it).
    pub min: u32,
    /// At most this many.
    pub max: u32,
}

impl Bounds {
    /// From `min` to `max` (a `max` below `min` is raised to it).
    pub fn new(min: u32, max: u32) -> Self {
        Self { min, max: max.max(min) }
    }

    /// `n` clamped into the bounds.
    pub fn clamp(&self, n: u32) -> u32 {
        n.clamp(self.min, self.max)
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Self::new(1, 8)
    }
}

/// An autoscaling algorithm.
pub trait Recommender: Send {
    /// Its name in reports and metrics.
    fn name(&self) -> &'static str;

    /// How often it decides.
    fn interval(&self) -> Duration;

    /// The replicas the pool should have at `now`, given its `size` and `signals` (`None`: the
    /// signals are missing, which never lowers the count).
    fn recommend(&mut self, now: Instant, size: PoolSize, signals: Option<&Signals>) -> Recommendation;
}

impl Recommender for Box<dyn Recommender> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn interval(&self) -> Duration {
        (**self).interval()
    }
    fn recommend(&mut self, now: Instant, size: PoolSize, signals: Option<&Signals>) -> Recommendation {
        (**self).recommend(now, size, signals)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use switchyard_core::{EndpointId, ReportedLoad};

    use super::*;
    use crate::ReplicaSignals;

    /// `n` replicas with `in_flight` each, a fresh report of `kv` and `queue`, and no capacity.
    pub(crate) fn pool(now: Instant, n: u32, in_flight: u32, kv: f64, queue: u32) -> Signals {
        let replicas = (0..n)
            .map(|i| ReplicaSignals {
                id: EndpointId::new(format!("r{i}")),
                in_flight,
                awaiting_first_byte: 0,
                pending_work: 0,
                capacity_per_sec: None,
                report: Some(ReportedLoad {
                    queue_depth: queue,
                    kv_cache_utilization: kv,
                    ..ReportedLoad::default()
                }),
            })
            .collect();
        Signals::new(now, replicas).with_arrival_rate(0.0)
    }

    pub(crate) fn size(desired: u32, ready: u32) -> PoolSize {
        PoolSize { desired, current: desired, ready }
    }
}
