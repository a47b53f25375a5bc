//! Vertical recommendations: the host CPU and memory a worker's container should request, emitted
//! beside the replica count.
//!
//! # What is and is not vertical scaling for an LLM replica
//!
//! A replica's serving capacity is fixed when its engine starts: the accelerator (GPU model and
//! count, tensor parallelism), the weights, the KV-cache pool carved out of GPU memory
//! (vLLM's `gpu_memory_utilization`) and the largest batch (`max_num_seqs`). None of these can
//! change under a running engine; changing them is a restart, which for an LLM is a new replica
//! with a cold start (weights to load): horizontal scaling by another name. Kubernetes agrees:
//! in-place pod resize (beta and on by default since 1.33) resizes only `cpu` and `memory`, never
//! an extended resource such as `nvidia.com/gpu`.
//!
//! What varies live, and is vertical here, is of two kinds:
//!
//! - **How much of the fixed replica a request gets**: the balancer learns it per endpoint (its
//!   slots, its no-load time per token, its concurrency limit): the
//!   [capacity](crate::ReplicaSignals::capacity_per_sec) the horizontal recommenders divide the
//!   demand by. That is the vertical half of the one loop: per-replica capacity is learnt live,
//!   and the count is sized from it.
//! - **The host resources around the engine**: tokenising prompts, detokenising and streaming
//!   answers, the scheduler's bookkeeping and the gRPC server use CPU and memory in proportion to
//!   the sequences the replica runs at once, up to its batch. These can be resized in place without
//!   a restart, and are what [`Vertical`] recommends: requests of `base + per_request × c`, where
//!   `c` is the most sequences a replica ran over the window (its reported `running`, or its
//!   requests in flight without a report), capped at the batch it reports
//!   ([`ReportedLoad::capacity`](switchyard_core::ReportedLoad::capacity)). The per-request costs
//!   are measured offline for an engine and a model (its CPU and RSS at a known concurrency) and
//!   configured; the defaults suit `switchyard worker`.
//!
//! So a bigger CPU request does not make a replica serve more tokens a second (its GPU does that);
//! it keeps the host side from throttling the engine when the replica runs a full batch, and a
//! smaller one returns idle cores to the node when it does not.
//!
//! # Rules
//!
//! Like the VPA's recommender: a larger recommendation is emitted at once; a smaller one only once
//! the window is full (its peak has had the window to show itself), and only when it differs from
//! the last one emitted by more than the tolerance (10 %). Missing signals (no snapshot, no
//! replica) emit nothing: requests are never lowered on a missing signal. Only requests are
//! recommended, never limits: Kubernetes refuses to lower a memory limit in place under a running
//! container.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::Signals;

/// CPU and memory of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Resources {
    /// `cpu_millis` millicores and `memory_mib` MiB.
    pub const fn new(cpu_millis: u64, memory_mib: u64) -> Self {
        Self { cpu_millis, memory_bytes: memory_mib * MIB }
    }

    /// The CPU as a Kubernetes quantity (`750m`).
    pub fn cpu_quantity(&self) -> String {
        format!("{}m", self.cpu_millis)
    }

    /// The memory as a Kubernetes quantity (`384Mi`, in whole MiB rounded up).
    pub fn memory_quantity(&self) -> String {
        format!("{}Mi", self.memory_bytes.div_ceil(MIB))
    }

    fn clamp(self, min: Self, max: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.clamp(min.cpu_millis, max.cpu_millis.max(min.cpu_millis)),
            memory_bytes: self.memory_bytes.clamp(min.memory_bytes, max.memory_bytes.max(min.memory_bytes)),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// Settings of [`Vertical`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerticalConfig {
    /// What an idle replica's host side uses (250m, 256 MiB).
    pub base: Resources,
    /// What each sequence running at once adds (50m, 16 MiB).
    pub per_request: Resources,
    /// The peak is taken over this window, and a smaller recommendation waits for it (5 min, the
    /// HPA's and VPA's order of stabilisation).
    pub window: Duration,
    /// A recommendation is emitted when it differs from the last by more than this share (0.1).
    pub tolerance: f64,
    /// Never below this (100m, 128 MiB).
    pub min: Resources,
    /// Never above this (8 cores, 16 GiB).
    pub max: Resources,
}

impl Default for VerticalConfig {
    fn default() -> Self {
        Self {
            base: Resources::new(250, 256),
            per_request: Resources::new(50, 16),
            window: Duration::from_secs(300),
            tolerance: 0.1,
            min: Resources::new(100, 128),
            max: Resources::new(8000, 16 * 1024),
        }
    }
}

/// A vertical recommendation: the requests each worker container should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerticalRecommendation {
    /// The container's resource requests.
    pub requests: Resources,
    /// The peak of sequences a replica ran at once over the window, which they are sized for.
    pub concurrency: u32,
    /// Why, in a few words.
    pub reason: &'static str,
}

/// Recommends the worker's CPU and memory requests from what a replica runs at once (see the
/// [module docs](self)).
#[derive(Debug, Clone)]
pub struct Vertical {
    config: VerticalConfig,
    /// The per-replica peak of each snapshot within the window (one a decision: bounded by it).
    samples: VecDeque<(Instant, u32)>,
    first: Option<Instant>,
    last: Option<Resources>,
}

impl Vertical {
    /// The recommender with `config`.
    pub fn new(config: VerticalConfig) -> Self {
        Self { config, samples: VecDeque::new(), first: None, last: None }
    }

    /// The settings.
    pub fn config(&self) -> &VerticalConfig {
        &self.config
    }

    /// The last recommendation emitted, if any.
    pub fn last(&self) -> Option<Resources> {
        self.last
    }

    /// The requests for a replica running `c` sequences at once.
    pub fn requests_for(&self, c: u32) -> Resources {
        let c = u64::from(c);
        let (base, per) = (self.config.base, self.config.per_request);
        Resources {
            cpu_millis: base.cpu_millis.saturating_add(per.cpu_millis.saturating_mul(c)),
            memory_bytes: base.memory_bytes.saturating_add(per.memory_bytes.saturating_mul(c)),
        }
        .clamp(self.config.min, self.config.max)
    }

    /// A new recommendation at `now`, or `None` to keep the last (within the tolerance, a smaller
    /// one before the window is full, or signals missing).
    pub fn recommend(&mut self, now: Instant, signals: Option<&Signals>) -> Option<VerticalRecommendation> {
        let signals = signals.filter(|s| !s.replicas.is_empty())?;
        let peak = signals
            .replicas
            .iter()
            .map(|r| match &r.report {
                Some(report) if report.capacity > 0 => report.running.min(report.capacity),
                Some(report) => report.running,
                None => r.in_flight,
            })
            .max()
            .unwrap_or(0);
        let window = self.config.window;
        while self.samples.front().is_some_and(|&(at, _)| now.saturating_duration_since(at) >= window) {
            self.samples.pop_front();
        }
        self.samples.push_back((now, peak));
        let first = *self.first.get_or_insert(now);
        let concurrency = self.samples.iter().map(|&(_, c)| c).max().unwrap_or(peak);
        let wanted = self.requests_for(concurrency);
        let differs = |a: u64, b: u64| (a as f64 - b as f64).abs() > self.config.tolerance * b as f64;
        let (requests, reason) = match self.last {
            None => (wanted, "first recommendation"),
            Some(last) => {
                let grows = |a: u64, b: u64| a > b && differs(a, b);
                if grows(wanted.cpu_millis, last.cpu_millis) || grows(wanted.memory_bytes, last.memory_bytes)
                {
                    // Growing one resource never lowers the other.
                    let requests = Resources {
                        cpu_millis: wanted.cpu_millis.max(last.cpu_millis),
                        memory_bytes: wanted.memory_bytes.max(last.memory_bytes),
                    };
                    (requests, "grow: more sequences at once")
                } else if (differs(wanted.cpu_millis, last.cpu_millis)
                    || differs(wanted.memory_bytes, last.memory_bytes))
                    && now.saturating_duration_since(first) >= window
                {
                    (wanted, "shrink: the window's peak fits in less")
                } else {
                    return None;
                }
            }
        };
        self.last = Some(requests);
        Some(VerticalRecommendation { requests, concurrency, reason })
    }
}

impl Default for Vertical {
    fn default() -> Self {
        Self::new(VerticalConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::test_support::pool;

    #[tokio::test(start_paused = true)]
    async fn grows_at_once_shrinks_after_a_full_window_and_never_on_missing_signals() {
        let mut v = Vertical::default();
        // 4 replicas running 8 each (their reports): 250m + 8 × 50m, 256 + 8 × 16 MiB.
        let mut busy = pool(Instant::now(), 4, 8, 0.5, 0);
        for r in &mut busy.replicas {
            r.report.as_mut().unwrap().running = 8;
            r.report.as_mut().unwrap().capacity = 16;
        }
        let first = v.recommend(Instant::now(), Some(&busy)).unwrap();
        assert_eq!(first.requests, Resources::new(650, 384));
        assert_eq!(
            (first.requests.cpu_quantity(), first.requests.memory_quantity()),
            ("650m".into(), "384Mi".into())
        );
        assert_eq!(first.concurrency, 8);
        // The same again, or a missing signal: nothing new.
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(v.recommend(Instant::now(), Some(&busy)), None);
        assert_eq!(v.recommend(Instant::now(), None), None);
        // 30 running but a batch of 16: sized for 16, at once.
        for r in &mut busy.replicas {
            r.report.as_mut().unwrap().running = 30;
        }
        let grown = v.recommend(Instant::now(), Some(&busy)).unwrap();
        assert_eq!((grown.requests, grown.concurrency), (Resources::new(1050, 512), 16));
        // Idle: no shrink until the peak has left the window.
        let mut idle = busy.clone();
        for r in &mut idle.replicas {
            r.report.as_mut().unwrap().running = 0;
        }
        for _ in 0..19 {
            tokio::time::advance(Duration::from_secs(15)).await;
            assert_eq!(v.recommend(Instant::now(), Some(&idle)), None, "the window's peak holds");
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        let shrunk = v.recommend(Instant::now(), Some(&idle)).unwrap();
        assert_eq!((shrunk.requests, shrunk.concurrency), (Resources::new(250, 256), 0));
        // Without reports, requests in flight stand in for the running sequences.
        let mut unreported = pool(Instant::now(), 2, 40, 0.0, 0);
        for r in &mut unreported.replicas {
            r.report = None;
        }
        let r = v.recommend(Instant::now(), Some(&unreported)).unwrap();
        assert_eq!((r.requests, r.concurrency), (Resources::new(2250, 896), 40));
    }
}
