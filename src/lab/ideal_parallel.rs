//! The ideal for replicas of the parallel kind: earliest finish with perfect knowledge.
//!
//! A parallel-kind replica ([`ReplicaKind::Parallel`](switchyard_sim::ReplicaKind)) serves `k`
//! requests at once in a fixed `service_time / speed` each, in FIFO order. Nothing about a
//! request's size matters, so its latency is fixed by one thing: when a slot frees for it. The
//! ideal keeps an exact ledger of every slot of every replica (when it frees), which it can
//! because it is the only client and the service time is exact, and sends each request on
//! arrival to the replica where it would **finish first**: `max(now, earliest free slot) +
//! service time`, ties to the faster replica, then to the lower index. The engine's own FIFO
//! queue then starts it exactly when the ledger says.
//!
//! This is list scheduling by earliest finish time, the rule a central dispatcher that knew every
//! replica's speed and slots would use: it uses the slow replica only when a request finishes
//! there sooner than it could anywhere else (all fast slots busy for longer than the slow
//! replica's extra service time), and never makes a request wait behind a slot when another is
//! free on a replica as fast. It cannot know later arrivals, so it is a reference, not a proven
//! optimum of the p99.

use std::time::Duration;

use futures::StreamExt;
use switchyard_sim::{ConfigError, GenerationRequest, TraceRecord, workload};
use tokio::time::Instant;

use super::cluster::{ReplicaSpec, read_tokens, spawn_engines};
use super::report::{RequestOutcome, RunRecord};

/// The slots of one replica: when each frees, and how long a request takes there.
#[derive(Debug, Clone)]
struct Slots {
    free_at: Vec<Instant>,
    service: Duration,
    speed: f64,
}

impl Slots {
    /// The slot a request arriving `now` would take, and when the request would finish there.
    fn earliest(&self, now: Instant) -> Option<(usize, Instant)> {
        let (slot, free) = self.free_at.iter().enumerate().min_by_key(|&(i, &at)| (at, i))?;
        Some((slot, (*free).max(now) + self.service))
    }
}

/// Replays `records` at `time_scale` through the earliest-finish dispatcher over `replicas`
/// (all of the parallel kind) and records every request. Call inside a paused runtime.
pub(crate) async fn run_ideal_parallel(
    replicas: &[ReplicaSpec],
    records: &[TraceRecord],
    time_scale: f64,
) -> Result<RunRecord, ConfigError> {
    let mut slots = Vec::with_capacity(replicas.len());
    for spec in replicas {
        let Some(service) = spec.config.parallel_service_time() else {
            return Err(ConfigError {
                field: "kind",
                reason: format!("{} is not of the parallel kind", spec.name),
            });
        };
        let start = Instant::now();
        slots.push(Slots {
            free_at: vec![start; spec.config.max_batch as usize],
            service,
            speed: spec.config.speed,
        });
    }
    let engines = spawn_engines(replicas)?;
    let start = Instant::now();
    let mut outcomes = vec![RequestOutcome::default(); records.len()];
    let mut tasks = Vec::with_capacity(records.len());
    let arrivals = workload::paced(records.iter().cloned(), time_scale).enumerate();
    let mut arrivals = std::pin::pin!(arrivals);
    while let Some((id, record)) = arrivals.next().await {
        let now = Instant::now();
        let arrived = now.saturating_duration_since(start);
        outcomes[id] = RequestOutcome { arrived, dispatched: arrived, ..RequestOutcome::default() };
        let best = slots
            .iter()
            .enumerate()
            .filter_map(|(r, s)| s.earliest(now).map(|(slot, end)| (end, s.speed, r, slot)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
        let Some((end, _, r, slot)) = best else { continue };
        let Ok(generation) = engines[r].submit(GenerationRequest::from(&record)) else {
            continue; // refused: the outcome stays a failure
        };
        slots[r].free_at[slot] = end;
        outcomes[id].replica = Some(r);
        tasks.push((id, tokio::spawn(read_tokens(generation, now, |_| {}))));
    }
    for (id, task) in tasks {
        // A task only ends by finishing its body: a join error would be a panic, already reported.
        if let Ok(times) = task.await {
            outcomes[id].ttft = times.first;
            outcomes[id].latency = times.last;
        }
    }
    for engine in &engines {
        engine.shutdown();
    }
    Ok(RunRecord { outcomes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_goes_where_it_finishes_first() {
        let now = Instant::now();
        let ms = Duration::from_millis(1);
        let fast_busy = Slots { free_at: vec![now + 35 * ms], service: 10 * ms, speed: 1.0 };
        let slow_idle = Slots { free_at: vec![now], service: 40 * ms, speed: 0.25 };
        assert_eq!(fast_busy.earliest(now), Some((0, now + 45 * ms)));
        assert_eq!(slow_idle.earliest(now), Some((0, now + 40 * ms)), "the slow replica finishes first");
        let two = Slots { free_at: vec![now + 5 * ms, now + 2 * ms], service: 10 * ms, speed: 1.0 };
        assert_eq!(two.earliest(now), Some((1, now + 12 * ms)));
    }
}
