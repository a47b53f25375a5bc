//! The worker's KV-cache event stream: `switchyard.kv.v1.KvEvents/Subscribe` over the sim
//! engine's prefix cache.
//!
//! Each subscriber gets a task that reads the engine's event ring from the subscriber's cursor:
//! a snapshot when it is new, another instance's, or behind the ring; then batches of events as
//! they come; an empty batch (heartbeat) after each second with nothing new. The task sends
//! through a channel of [`CHANNEL_MESSAGES`] messages of at most [`MAX_BATCH`] events and only
//! reads the ring when the channel has room, so a slow subscriber holds no more than that: while
//! it is stuck the ring moves on, and when it reads again it gets a snapshot.

use std::pin::Pin;
use std::time::Duration;

use switchyard_hash::precise::proto::{
    EventBatch, Snapshot, SubscribeRequest, SubscribeResponse, kv_events_server::KvEvents,
    subscribe_response::Body,
};
use switchyard_sim::{EngineHandle, KvRead};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub use switchyard_hash::precise::proto::kv_events_server::KvEventsServer;

/// Most events in one message.
pub const MAX_BATCH: usize = 1024;
/// Messages queued per subscriber.
pub const CHANNEL_MESSAGES: usize = 4;
/// With nothing new, a heartbeat this often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The `KvEvents` service of one engine.
#[derive(Debug, Clone)]
pub struct KvEventsService {
    engine: EngineHandle,
    instance: u64,
    stop: watch::Receiver<bool>,
}

impl KvEventsService {
    /// The service of `engine`, as replica instance `instance` (non-zero: a new one each time
    /// the engine starts). Open streams end when `stop` turns true (the worker drains).
    pub fn new(engine: EngineHandle, instance: u64, stop: watch::Receiver<bool>) -> Self {
        Self { engine, instance: instance.max(1), stop }
    }

    /// The instance id it streams as.
    pub fn instance(&self) -> u64 {
        self.instance
    }
}

/// A fresh instance id, never 0: a hash of the clock, the process id and a per-process count,
/// so that a restarted worker (or a second engine in one process) has another.
pub fn new_instance() -> u64 {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    switchyard_core::stable_hash(format!("{nanos}/{}/{count}", std::process::id()).as_bytes()).max(1)
}

type Responses = Pin<Box<dyn futures::Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl KvEvents for KvEventsService {
    type SubscribeStream = Responses;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Responses>, Status> {
        let SubscribeRequest { instance, after_sequence } = request.into_inner();
        let cursor = (instance == self.instance).then_some(after_sequence);
        let (tx, rx) = mpsc::channel(CHANNEL_MESSAGES);
        tokio::spawn(stream(self.clone(), cursor, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn stream(
    service: KvEventsService,
    mut cursor: Option<u64>,
    tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
) {
    let KvEventsService { engine, instance, mut stop } = service;
    let block_tokens = engine.config().block_tokens;
    let mut sequence = engine.watch_kv_sequence();
    let message = |body| SubscribeResponse { instance, block_tokens, body: Some(body) };
    loop {
        if *stop.borrow() {
            return;
        }
        // Room first: a slow subscriber reads the ring late (and gets a snapshot), it never
        // makes this task hold events for it.
        let permit = tokio::select! {
            permit = tx.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        sequence.borrow_and_update();
        let body = match engine.kv_read(cursor, MAX_BATCH) {
            KvRead::Snapshot { sequence, blocks } => {
                cursor = Some(sequence);
                Body::Snapshot(Snapshot { sequence, blocks })
            }
            KvRead::Events(events) if !events.is_empty() => {
                cursor = events.last().map(|e| e.sequence);
                Body::Events(EventBatch { events: events.into_iter().map(Into::into).collect() })
            }
            KvRead::Events(_) => {
                tokio::select! {
                    changed = sequence.changed() => {
                        drop(permit);
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                    () = tokio::time::sleep(HEARTBEAT) => Body::Events(EventBatch { events: Vec::new() }),
                    _ = stop.changed() => return,
                }
            }
        };
        permit.send(Ok(message(body)));
    }
}
