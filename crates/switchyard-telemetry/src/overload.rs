//! A pool's overload protection as series: the limit in force and the shed queue's refusals,
//! read from the layers' own figures at scrape time.

use metrics::{Key, Label, Recorder, Unit};
use switchyard_limit::Limiter;
use switchyard_shed::{CLASSES, Reason, ShedLayer};

use crate::names;
use crate::registry::{LayerState, METADATA, ScrapeSource};

fn gauge(recorder: &dyn Recorder, name: &'static str, labels: Vec<Label>, value: f64) {
    recorder.register_gauge(&Key::from_parts(name, labels), &METADATA).set(value);
}

fn counter(recorder: &dyn Recorder, name: &'static str, labels: Vec<Label>, value: u64) {
    recorder.register_counter(&Key::from_parts(name, labels), &METADATA).absolute(value);
}

/// A [`ScrapeSource`] that publishes a pool's concurrency limit ([`Limiter::stats`]): the limit
/// in force, the requests holding a place, those admitted and those the algorithm saw as drops.
#[derive(Debug)]
pub struct LimitMetrics {
    pool: String,
    layer: Option<String>,
    limiter: Limiter,
}

impl LimitMetrics {
    /// The limit `limiter` keeps over the pool `pool`.
    pub fn new(pool: impl Into<String>, limiter: Limiter) -> Self {
        Self { pool: pool.into(), layer: None, limiter }
    }

    /// The same, its series labelled `layer` = `layer` too (its position among the pool's
    /// layers, say), so that two limits over one pool keep apart.
    pub fn with_layer(mut self, layer: impl Into<String>) -> Self {
        self.layer = Some(layer.into());
        self
    }
}

/// `pool` and, if given, `layer`.
fn layer_labels(pool: &str, layer: Option<&str>) -> Vec<Label> {
    let mut labels = vec![Label::new(names::POOL, pool.to_owned())];
    if let Some(layer) = layer {
        labels.push(Label::new(names::LAYER, layer.to_owned()));
    }
    labels
}

impl ScrapeSource for LimitMetrics {
    fn publish(&self, recorder: &dyn Recorder) {
        recorder.describe_gauge(
            names::POOL_LIMIT.into(),
            Some(Unit::Count),
            "Concurrency limit in force over the pool (its limit layer).".into(),
        );
        recorder.describe_gauge(
            names::POOL_LIMIT_IN_FLIGHT.into(),
            Some(Unit::Count),
            "Requests holding a place of the pool's concurrency limit.".into(),
        );
        recorder.describe_counter(
            names::POOL_LIMIT_ADMITTED.into(),
            Some(Unit::Count),
            "Requests the pool's concurrency limit let through.".into(),
        );
        recorder.describe_counter(
            names::POOL_LIMIT_DROPPED.into(),
            Some(Unit::Count),
            "Requests that fed the pool's limit algorithm as drops (overload seen).".into(),
        );
        let stats = self.limiter.stats();
        let pool = || layer_labels(&self.pool, self.layer.as_deref());
        gauge(recorder, names::POOL_LIMIT, pool(), stats.limit as f64);
        gauge(recorder, names::POOL_LIMIT_IN_FLIGHT, pool(), stats.in_flight as f64);
        counter(recorder, names::POOL_LIMIT_ADMITTED, pool(), stats.admitted);
        counter(recorder, names::POOL_LIMIT_DROPPED, pool(), stats.dropped);
    }

    fn layer_state(&self) -> Option<LayerState> {
        let stats = self.limiter.stats();
        Some(LayerState {
            layer: "limit",
            label: self.layer.clone(),
            algorithm: Some(self.limiter.algorithm()),
            figures: vec![
                ("limit", stats.limit as f64),
                ("in_flight", stats.in_flight as f64),
                ("admitted", stats.admitted as f64),
                ("dropped", stats.dropped as f64),
            ],
        })
    }
}

/// A [`ScrapeSource`] that publishes a pool's shed queue ([`ShedLayer::stats`]): requests
/// waiting, whether it is overloaded, and requests admitted per class and refused per reason
/// and class.
#[derive(Debug)]
pub struct ShedMetrics {
    pool: String,
    label: Option<String>,
    layer: ShedLayer,
}

impl ShedMetrics {
    /// The queue of `layer` (and of every clone of it) in front of the pool `pool`.
    pub fn new(pool: impl Into<String>, layer: ShedLayer) -> Self {
        Self { pool: pool.into(), label: None, layer }
    }

    /// The same, its series labelled `layer` = `label` too (its position among the pool's
    /// layers, say), so that two shed queues in one pool keep apart.
    pub fn with_layer(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

impl ScrapeSource for ShedMetrics {
    fn publish(&self, recorder: &dyn Recorder) {
        recorder.describe_gauge(
            names::SHED_WAITING.into(),
            Some(Unit::Count),
            "Requests waiting in the pool's shed queue.".into(),
        );
        recorder.describe_gauge(
            names::SHED_OVERLOADED.into(),
            None,
            "1 while the pool's shed queue is overloaded (waits above its target for an interval).".into(),
        );
        recorder.describe_counter(
            names::SHED_ADMITTED.into(),
            Some(Unit::Count),
            "Requests the pool's shed queue passed on, by priority class.".into(),
        );
        recorder.describe_counter(
            names::SHED_REFUSED.into(),
            Some(Unit::Count),
            "Requests the pool's shed queue refused, by reason and priority class.".into(),
        );
        let stats = self.layer.stats();
        let pool = layer_labels(&self.pool, self.label.as_deref());
        let with = |extra: &[Label]| pool.iter().chain(extra).cloned().collect::<Vec<_>>();
        gauge(recorder, names::SHED_WAITING, pool.clone(), stats.waiting as f64);
        gauge(recorder, names::SHED_OVERLOADED, pool.clone(), if stats.overloaded { 1.0 } else { 0.0 });
        for class in CLASSES {
            let class_label = Label::new("class", class.as_str());
            counter(
                recorder,
                names::SHED_ADMITTED,
                with(std::slice::from_ref(&class_label)),
                stats.admitted_in(class),
            );
            for reason in Reason::ALL {
                counter(
                    recorder,
                    names::SHED_REFUSED,
                    with(&[Label::new("reason", reason.as_str()), class_label.clone()]),
                    stats.refused(reason, class),
                );
            }
        }
    }

    fn layer_state(&self) -> Option<LayerState> {
        let stats = self.layer.stats();
        Some(LayerState {
            layer: "shed",
            label: self.label.clone(),
            algorithm: None,
            figures: vec![
                ("waiting", stats.waiting as f64),
                ("overloaded", if stats.overloaded { 1.0 } else { 0.0 }),
                ("admitted", stats.admitted.iter().sum::<u64>() as f64),
                ("refused", stats.refused_total() as f64),
            ],
        })
    }
}
