//! KV-event delivery in the lab: each simulated replica's prefix-cache events reach the precise
//! prefix-aware policy's feed in simulated time, as a worker's stream would, optionally late.
//!
//! Per replica, a reader task reads the engine's event ring whenever it has moved (or a
//! heartbeat every second, as the worker sends one) and queues what it read, stamped with when
//! it is due (`delay` later), in a bounded channel; an applier task applies each update to the
//! feed when it is due. A reader that finds the channel full waits: the ring moves on, and it
//! gets a snapshot when it reads again, as a slow subscriber does.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::EndpointId;
use switchyard_hash::KvFeed;
use switchyard_sim::{EngineHandle, KvRead};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Updates queued per replica between its reader and its applier.
const QUEUE: usize = 1024;
/// Most events per update.
const MAX_BATCH: usize = 1024;
/// A heartbeat this often when nothing happens.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The instance id every simulated replica streams as (each run starts fresh replicas and a
/// fresh feed).
const INSTANCE: u64 = 1;

/// Starts delivering the events of `engines` (named `names`, the balancer's endpoint ids) to
/// `feed`, each `delay` after it happened. Returns the tasks, to abort when the run ends.
pub(crate) fn deliver(
    feed: &Arc<KvFeed>,
    names: &[String],
    engines: &[EngineHandle],
    delay: Duration,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(2 * engines.len());
    for (name, engine) in names.iter().zip(engines) {
        let id = EndpointId::from(name.as_str());
        feed.follow(&id);
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.push(tokio::spawn(read(engine.clone(), delay, tx)));
        tasks.push(tokio::spawn(apply(feed.clone(), id, rx)));
    }
    tasks
}

async fn read(engine: EngineHandle, delay: Duration, tx: mpsc::Sender<(Instant, KvRead)>) {
    let mut sequence = engine.watch_kv_sequence();
    let mut cursor = None;
    loop {
        let Ok(permit) = tx.reserve().await else { return };
        sequence.borrow_and_update();
        let read = engine.kv_read(cursor, MAX_BATCH);
        match &read {
            KvRead::Snapshot { sequence, .. } => cursor = Some(*sequence),
            KvRead::Events(events) if !events.is_empty() => cursor = events.last().map(|e| e.sequence),
            KvRead::Events(_) => {
                tokio::select! {
                    changed = sequence.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                    () = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        }
        permit.send((Instant::now() + delay, read));
    }
}

async fn apply(feed: Arc<KvFeed>, id: EndpointId, mut rx: mpsc::Receiver<(Instant, KvRead)>) {
    while let Some((due, read)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        let applied = match read {
            KvRead::Snapshot { sequence, blocks } => feed.apply_snapshot(&id, INSTANCE, sequence, &blocks),
            KvRead::Events(events) => feed.apply_events(&id, INSTANCE, &events),
        };
        if let Err(e) = applied {
            // Cannot happen with one reader in order; it would show as a fallback, not a stop.
            tracing::warn!(endpoint = %id, "lab KV delivery: {e}");
        }
    }
}
