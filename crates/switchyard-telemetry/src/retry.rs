//! The series of a pool's retry layer.

use metrics::{Key, Label, Recorder, Unit};
use switchyard_retry::RetryLayer;

use crate::names;
use crate::registry::{LayerState, METADATA, ScrapeSource};

/// A [`ScrapeSource`] that publishes a pool's retry layer ([`RetryLayer::stats`]): the calls it
/// took, the retries it made and those its budget refused. Retries over calls is the share the
/// layer added to the requests sent upstream (at most the budget's ratio at steady state).
#[derive(Debug)]
pub struct RetryMetrics {
    pool: String,
    layer: RetryLayer,
}

impl RetryMetrics {
    /// The series of `layer`, labelled with `pool`.
    pub fn new(pool: impl Into<String>, layer: RetryLayer) -> Self {
        Self { pool: pool.into(), layer }
    }
}

impl ScrapeSource for RetryMetrics {
    fn publish(&self, recorder: &dyn Recorder) {
        let series = [
            (names::POOL_RETRY_CALLS, "Calls the pool's retry layer took."),
            (names::POOL_RETRIES, "Attempts the pool's retry layer made after a call's first."),
            (names::POOL_RETRY_BUDGET_EXHAUSTED, "Retries the pool's retry budget refused."),
            (names::POOL_HEDGES, "Hedges the pool's retry layer sent."),
            (names::POOL_RETRY_HELD_CUT, "Held responses cut before their end, for a retry to take."),
        ];
        for (name, help) in series {
            recorder.describe_counter(name.into(), Some(Unit::Count), help.into());
        }
        let stats = self.layer.stats();
        for (name, value) in [
            (names::POOL_RETRY_CALLS, stats.calls),
            (names::POOL_RETRIES, stats.retries),
            (names::POOL_RETRY_BUDGET_EXHAUSTED, stats.budget_exhausted),
            (names::POOL_HEDGES, stats.hedges),
            (names::POOL_RETRY_HELD_CUT, stats.held_cut),
        ] {
            let labels = vec![Label::new(names::POOL, self.pool.clone())];
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA).absolute(value);
        }
    }

    fn layer_state(&self) -> Option<LayerState> {
        let stats = self.layer.stats();
        Some(LayerState {
            layer: "retry",
            label: None,
            algorithm: None,
            figures: vec![
                ("calls", stats.calls as f64),
                ("retries", stats.retries as f64),
                ("budget_exhausted", stats.budget_exhausted as f64),
                ("hedges", stats.hedges as f64),
                ("not_replayable", stats.not_replayable as f64),
                ("held_cut", stats.held_cut as f64),
            ],
        })
    }
}
