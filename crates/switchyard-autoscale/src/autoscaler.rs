//! The loop: signals → recommender → scaler, every decision logged with its inputs and exported
//! as metrics.

use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    PoolSize, Recommendation, Recommender, ScaleError, Scaler, SignalSource, Signals, Vertical,
    VerticalRecommendation,
};

/// Gauge: the replicas the recommender asked for (label `recommender`).
pub const DESIRED_METRIC: &str = "switchyard_autoscale_desired_replicas";
/// Gauge: the replicas that exist, ready or starting.
pub const CURRENT_METRIC: &str = "switchyard_autoscale_current_replicas";
/// Gauge: the replicas ready to serve.
pub const READY_METRIC: &str = "switchyard_autoscale_ready_replicas";
/// Gauge: the CPU request (millicores) the vertical recommendation gives each worker container.
pub const RECOMMENDED_CPU_METRIC: &str = "switchyard_autoscale_recommended_cpu_millicores";
/// Gauge: the memory request (bytes) the vertical recommendation gives each worker container.
pub const RECOMMENDED_MEMORY_METRIC: &str = "switchyard_autoscale_recommended_memory_bytes";
/// Counter: decisions that changed the desired count (label `direction`: up or down).
pub const SCALE_EVENTS_METRIC: &str = "switchyard_autoscale_scale_events_total";

/// One decision: what the recommender saw and what it asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// When.
    pub at: Instant,
    /// The pool's size before it.
    pub before: PoolSize,
    /// The recommendation.
    pub recommendation: Recommendation,
    /// Whether signals were there.
    pub had_signals: bool,
    /// A new vertical recommendation emitted beside the count, with
    /// [`Autoscaler::with_vertical`].
    pub vertical: Option<VerticalRecommendation>,
}

impl Decision {
    /// Whether it changed the desired count.
    pub fn changed(&self) -> bool {
        self.recommendation.desired != self.before.desired
    }
}

/// Drives a [`Recommender`] from a [`SignalSource`] and applies its decisions with a [`Scaler`].
#[derive(Debug)]
pub struct Autoscaler<S, R, C> {
    source: S,
    recommender: R,
    scaler: C,
    vertical: Option<(Vertical, bool)>,
}

impl<S, R, C> Autoscaler<S, R, C>
where
    S: SignalSource,
    R: Recommender,
    C: Scaler,
{
    /// The loop over `source`, `recommender` and `scaler`.
    pub fn new(source: S, recommender: R, scaler: C) -> Self {
        Self { source, recommender, scaler, vertical: None }
    }

    /// Also recommends the worker's resources with `vertical` at every decision (logged and
    /// exported as [`RECOMMENDED_CPU_METRIC`] and [`RECOMMENDED_MEMORY_METRIC`]); with `apply`,
    /// hands each new recommendation to [`Scaler::set_resources`].
    pub fn with_vertical(mut self, vertical: Vertical, apply: bool) -> Self {
        self.vertical = Some((vertical, apply));
        self
    }

    /// The scaler.
    pub fn scaler(&self) -> &C {
        &self.scaler
    }

    /// The scaler, mutably (to stop it at the end).
    pub fn scaler_mut(&mut self) -> &mut C {
        &mut self.scaler
    }

    /// The signal source, mutably (to tell it what the gateway holds).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The source, the recommender and the scaler back (to shut the scaler down at the end).
    pub fn into_parts(self) -> (S, R, C) {
        (self.source, self.recommender, self.scaler)
    }

    /// One decision now: sample, recommend, log, export, apply.
    pub async fn step(&mut self) -> Result<Decision, ScaleError> {
        let signals: Option<Signals> = self.source.sample();
        let now = Instant::now();
        let before = self.scaler.size();
        let recommendation = self.recommender.recommend(now, before, signals.as_ref());
        let (vertical, apply) = match &mut self.vertical {
            Some((v, apply)) => (v.recommend(now, signals.as_ref()), *apply),
            None => (None, false),
        };
        let decision = Decision { at: now, before, recommendation, had_signals: signals.is_some(), vertical };
        record(self.recommender.name(), &decision, signals.as_ref());
        if decision.changed() {
            self.scaler.set_desired(recommendation.desired).await?;
        }
        if let Some(v) = vertical {
            record_vertical(self.recommender.name(), &v);
            if apply {
                let resized = self.scaler.set_resources(v.requests).await?;
                tracing::info!(resized, "autoscale: worker resources applied");
            }
        }
        Ok(decision)
    }

    /// Decides every [`Recommender::interval`] until a scaler error, calling `on_decision` with
    /// each decision. The first decision comes one interval after the call, so that the signals
    /// (an arrival rate is a difference of two samples) cover one interval.
    pub async fn run(mut self, mut on_decision: impl FnMut(&Decision)) -> Result<(), ScaleError> {
        let every = self.recommender.interval();
        let _ = self.source.sample();
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let decision = self.step().await?;
            on_decision(&decision);
        }
    }
}

fn record(name: &'static str, decision: &Decision, signals: Option<&Signals>) {
    let r = &decision.recommendation;
    let size = decision.before;
    let (in_flight, pending_work, arrival_rate) = match signals {
        Some(s) => (s.in_flight(), s.pending_work(), s.arrival_rate.unwrap_or(f64::NAN)),
        None => (0, 0, f64::NAN),
    };
    if decision.changed() {
        tracing::info!(
            recommender = name,
            from = size.desired,
            to = r.desired,
            ready = size.ready,
            current = size.current,
            reason = r.reason,
            metric = r.metric.unwrap_or(f64::NAN),
            in_flight,
            pending_work,
            arrival_rate,
            signals = decision.had_signals,
            "autoscale: scale"
        );
        let direction = if r.desired > size.desired { "up" } else { "down" };
        metrics::counter!(SCALE_EVENTS_METRIC, "recommender" => name, "direction" => direction).increment(1);
    } else {
        tracing::debug!(
            recommender = name,
            desired = r.desired,
            ready = size.ready,
            reason = r.reason,
            metric = r.metric.unwrap_or(f64::NAN),
            in_flight,
            pending_work,
            arrival_rate,
            "autoscale: keep"
        );
    }
    metrics::gauge!(DESIRED_METRIC, "recommender" => name).set(f64::from(r.desired));
    metrics::gauge!(CURRENT_METRIC, "recommender" => name).set(f64::from(size.current));
    metrics::gauge!(READY_METRIC, "recommender" => name).set(f64::from(size.ready));
}

fn record_vertical(name: &'static str, v: &VerticalRecommendation) {
    tracing::info!(
        recommender = name,
        cpu = %v.requests.cpu_quantity(),
        memory = %v.requests.memory_quantity(),
        concurrency = v.concurrency,
        reason = v.reason,
        "autoscale: worker resources"
    );
    metrics::gauge!(RECOMMENDED_CPU_METRIC, "recommender" => name).set(v.requests.cpu_millis as f64);
    metrics::gauge!(RECOMMENDED_MEMORY_METRIC, "recommender" => name).set(v.requests.memory_bytes as f64);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::recommend::test_support::pool;
    use crate::{Hpa, HpaConfig};

    /// A scaler that follows every request at once.
    #[derive(Debug, Default)]
    struct Following {
        asked: Vec<u32>,
        size: PoolSize,
        resized: Vec<crate::Resources>,
    }

    impl Scaler for Following {
        async fn set_desired(&mut self, replicas: u32) -> Result<(), ScaleError> {
            self.asked.push(replicas);
            self.size = PoolSize { desired: replicas, current: replicas, ready: replicas };
            Ok(())
        }
        fn size(&self) -> PoolSize {
            self.size
        }
        async fn set_resources(&mut self, requests: crate::Resources) -> Result<u32, ScaleError> {
            self.resized.push(requests);
            Ok(self.size.ready)
        }
    }

    /// Signals from a list, `None` when it runs out (a source that cannot answer).
    struct Scripted(Vec<Option<Signals>>);

    impl SignalSource for Scripted {
        fn sample(&mut self) -> Option<Signals> {
            if self.0.is_empty() { None } else { self.0.remove(0) }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_decision_reaches_the_scaler_and_a_missing_signal_keeps_the_count() {
        let now = Instant::now();
        let source = Scripted(vec![Some(pool(now, 2, 20, 0.0, 0)), None]);
        let scaler = Following {
            asked: Vec::new(),
            size: PoolSize { desired: 2, current: 2, ready: 2 },
            resized: Vec::new(),
        };
        let hpa = Hpa::new(HpaConfig { target: 10.0, ..HpaConfig::default() });
        let mut autoscaler = Autoscaler::new(source, hpa, scaler);
        let first = autoscaler.step().await.unwrap();
        assert!(first.changed() && first.had_signals);
        assert_eq!(autoscaler.scaler().asked, vec![4], "twice the target: twice the replicas");
        tokio::time::advance(Duration::from_secs(15)).await;
        let second = autoscaler.step().await.unwrap();
        assert!(!second.had_signals);
        assert!(!second.changed(), "a missing signal keeps the count");
        assert_eq!(autoscaler.scaler().asked, vec![4]);
    }

    /// A scaler whose every change fails (the API server is gone).
    #[derive(Debug)]
    struct Refusing(PoolSize);

    impl Scaler for Refusing {
        async fn set_desired(&mut self, _replicas: u32) -> Result<(), ScaleError> {
            Err(ScaleError::Api("connection refused".into()))
        }
        fn size(&self) -> PoolSize {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_decides_once_an_interval_from_one_interval_on_and_stops_at_a_scaler_error() {
        let start = Instant::now();
        // The load asks for the same two replicas three times, then for four.
        let steady = || Some(pool(start, 2, 10, 0.0, 0));
        let source = Scripted(vec![steady(), steady(), steady(), steady(), Some(pool(start, 2, 20, 0.0, 0))]);
        let hpa = Hpa::new(HpaConfig { target: 10.0, ..HpaConfig::default() });
        let every = hpa.interval();
        let autoscaler =
            Autoscaler::new(source, hpa, Refusing(PoolSize { desired: 2, current: 2, ready: 2 }));
        let mut seen = Vec::new();
        let ended =
            autoscaler.run(|d| seen.push((d.at.duration_since(start), d.recommendation.desired))).await;
        assert!(matches!(ended, Err(ScaleError::Api(_))), "{ended:?}");
        // The first sample (taken at the call) only starts the rate; decisions follow one
        // interval apart, and the one the scaler refused is not reported.
        assert_eq!(seen, vec![(every, 2), (every * 2, 2), (every * 3, 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vertical_recommendation_is_emitted_beside_the_count_and_applied_when_asked() {
        let now = Instant::now();
        // Two replicas with 20 in flight and reports of 0 running: sized for 0 running.
        let source = Scripted(vec![Some(pool(now, 2, 20, 0.0, 0)), Some(pool(now, 2, 20, 0.0, 0)), None]);
        let scaler = Following {
            asked: Vec::new(),
            size: PoolSize { desired: 2, current: 2, ready: 2 },
            resized: Vec::new(),
        };
        let hpa = Hpa::new(HpaConfig { target: 10.0, ..HpaConfig::default() });
        let mut autoscaler =
            Autoscaler::new(source, hpa, scaler).with_vertical(crate::Vertical::default(), true);
        let first = autoscaler.step().await.unwrap();
        let vertical = first.vertical.expect("a first vertical recommendation");
        assert_eq!(vertical.requests, crate::Resources::new(250, 256));
        assert_eq!(autoscaler.scaler().asked, vec![4]);
        assert_eq!(autoscaler.scaler().resized, vec![vertical.requests], "applied");
        // Unchanged, then missing: nothing more is emitted or applied.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(15)).await;
            assert_eq!(autoscaler.step().await.unwrap().vertical, None);
        }
        assert_eq!(autoscaler.scaler().resized.len(), 1);
    }
}
