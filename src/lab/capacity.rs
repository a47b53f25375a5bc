//! Measuring what a replica sustains on a workload, so that scenarios set their load as a share
//! of a measured capacity rather than a guessed one.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use switchyard_sim::{EngineConfig, EngineHandle, GenerationRequest, SubmitError, TraceRecord};
use tokio::time::Instant;

/// Requests a capacity measurement runs through the replica.
pub const CAPACITY_REQUESTS: usize = 3000;

/// Why a capacity could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// The replica's settings are invalid.
    #[error("replica settings: {0}")]
    Config(#[from] switchyard_sim::ConfigError),
    /// The replica refused a request of the workload.
    #[error("the replica refused a request: {0}")]
    Refused(#[from] SubmitError),
    /// A generation ended early.
    #[error("a generation ended before its last token")]
    EndedEarly,
    /// Too few requests, or no time elapsed, to measure a rate.
    #[error("the workload is too small to measure a rate")]
    TooSmall,
}

/// The requests per second one replica with `config` completes when it is never short of work,
/// on the mix of `records` (cycled up to [`CAPACITY_REQUESTS`] requests, in trace order). Call
/// inside a tokio runtime whose clock is paused, or the measurement takes real time.
///
/// The replica runs a closed loop: `2 × max_batch` requests outstanding (a full batch, and as
/// many waiting so that the batch refills at once), a new one submitted as each completes. The
/// rate is taken between the completion of the 10th percentile request and the last completion
/// while the loop was still full, so neither the ramp-up nor the final drain counts.
pub async fn measure_capacity(config: &EngineConfig, records: &[TraceRecord]) -> Result<f64, CapacityError> {
    if records.is_empty() {
        return Err(CapacityError::TooSmall);
    }
    let engine = EngineHandle::spawn(config.clone())?;
    let outstanding = (2 * config.max_batch as usize).min(config.max_queue + config.max_batch as usize);
    let total = CAPACITY_REQUESTS.max(4 * outstanding);
    let start = Instant::now();
    let mut requests = records.iter().cycle().take(total).map(GenerationRequest::from);
    let mut running = FuturesUnordered::new();
    let mut finished: Vec<Duration> = Vec::with_capacity(total);
    let submit = |req: GenerationRequest| -> Result<_, CapacityError> {
        let generation = engine.submit(req)?;
        Ok(generation.collect_outcome())
    };
    for req in requests.by_ref().take(outstanding) {
        running.push(submit(req)?);
    }
    while let Some(outcome) = running.next().await {
        outcome.map_err(|_| CapacityError::EndedEarly)?;
        finished.push(Instant::now().saturating_duration_since(start));
        if let Some(req) = requests.next() {
            running.push(submit(req)?);
        }
    }
    engine.shutdown();
    // The loop is full until the last request is submitted, at completion `total − outstanding`.
    let (from, to) = (total / 10, total - outstanding);
    if from == 0 || to <= from || finished.len() < to {
        return Err(CapacityError::TooSmall);
    }
    let span = finished[to - 1].saturating_sub(finished[from - 1]).as_secs_f64();
    if span <= 0.0 {
        return Err(CapacityError::TooSmall);
    }
    Ok((to - from) as f64 / span)
}
