//! The traffic and the observation of scenario `scale`: the gateway and its workers, the calls
//! at Poisson arrivals, and what the board shows of the replicas while they come and go.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchyard_autoscale::PoolSize;
use switchyard_autoscale::scaler::process::ProcessConfig;
use switchyard_balance::LoadBoard;
use switchyard_core::EndpointId;
use switchyard_discovery::Publisher;
use switchyard_sim::{LengthSampler, Pattern, Synthetic};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{
    DEADLINE, DRAIN_SAMPLE_EVERY, Drained, MAX_IN_FLIGHT, PARALLEL, SAMPLE_EVERY, SERVICE_MS, Sample,
};
use crate::bench::BenchError;
use crate::gateway::{Gateway, GatewayConfig};
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

fn request() -> tonic::Request<crate::proto::inference::ModelInferRequest> {
    let mut request = tonic::Request::new(crate::worker::request::text_request("sim-llm", "scale", 4));
    request.set_timeout(DEADLINE);
    request
}

/// One call: when it was sent and ended (seconds since the load began), and how: its latency in
/// µs, or its gRPC status.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) sent_s: f64,
    pub(super) ended_s: f64,
    pub(super) end: Result<u64, String>,
}

/// What the replicas and the board look like over a run, observed every
/// [`DRAIN_SAMPLE_EVERY`].
#[derive(Debug)]
pub(super) struct Watch {
    start: Instant,
    next_sample: Instant,
    pub(super) timeline: Vec<Sample>,
    pub(super) drained: Vec<Drained>,
    /// Replicas in discovery at the last observation, with their calls in flight.
    serving: BTreeMap<EndpointId, u32>,
    /// Replicas out of discovery still on the board, with their index in `drained`.
    leaving: BTreeMap<EndpointId, usize>,
}

impl Watch {
    pub(super) fn new(start: Instant) -> Self {
        Self {
            start,
            next_sample: start,
            timeline: Vec::new(),
            drained: Vec::new(),
            serving: BTreeMap::new(),
            leaving: BTreeMap::new(),
        }
    }

    /// Reads `board`; appends a timeline sample (with `size`, when known) every [`SAMPLE_EVERY`].
    pub(super) fn observe(&mut self, board: &LoadBoard, size: Option<PoolSize>, offered_rps: f64) {
        let now = Instant::now();
        let at_s = now.saturating_duration_since(self.start).as_secs_f64();
        let snapshot = board.snapshot();
        let mut now_serving = BTreeMap::new();
        for e in &snapshot {
            if !e.draining {
                now_serving.insert(e.endpoint.id.clone(), e.load.in_flight);
            }
        }
        for (id, in_flight) in &self.serving {
            if !now_serving.contains_key(id) {
                self.leaving.insert(id.clone(), self.drained.len());
                self.drained.push(Drained {
                    replica: id.to_string(),
                    at_s,
                    in_flight_at_removal: *in_flight,
                    left_board_at_s: None,
                });
            }
        }
        self.serving = now_serving;
        let drained = &mut self.drained;
        self.leaving.retain(|id, &mut i| {
            let on_board = snapshot.iter().any(|e| &e.endpoint.id == id);
            if !on_board {
                drained[i].left_board_at_s = Some(at_s);
            }
            on_board
        });
        if now >= self.next_sample
            && let Some(size) = size
        {
            self.next_sample += SAMPLE_EVERY;
            self.timeline.push(Sample {
                at_s,
                offered_rps,
                desired: size.desired,
                current: size.current,
                ready: size.ready,
                draining: snapshot.iter().filter(|e| e.draining).count() as u32,
                in_flight: snapshot.iter().map(|e| u64::from(e.load.in_flight)).sum(),
            });
        }
    }

    /// Replicas out of discovery still finishing calls.
    pub(super) fn draining(&self) -> usize {
        self.leaving.len()
    }
}

/// Observes `board` (see [`Watch`]) until `stop`, the pool's size read with `size` (`None` while
/// the scaler is busy).
pub(super) async fn watch(
    board: LoadBoard,
    start: Instant,
    size: impl Fn() -> Option<PoolSize>,
    rate: watch::Receiver<f64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Watch {
    let mut out = Watch::new(start);
    let mut tick = tokio::time::interval(DRAIN_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return out,
        }
        out.observe(&board, size(), *rate.borrow());
    }
}

/// Sends calls at Poisson arrivals at the rate in `rate` (none while it is 0) until `stop`. A
/// change of rate draws the next gap afresh at the new rate (the process is memoryless, so this
/// is exact).
pub(super) async fn generate(
    channels: Vec<Channel>,
    mut rate: watch::Receiver<f64>,
    stop: Arc<tokio::sync::Notify>,
    seed: u64,
    start: Instant,
) -> (Vec<Call>, u64) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let mut not_sent = 0u64;
    let mut index = 0u64;
    let mut changes = 0u64;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let arrivals = |r: f64, changes: u64| {
        Synthetic::new(
            Pattern::Poisson { rate: r },
            LengthSampler::fixed(16, 4),
            Duration::from_secs(1 << 30),
            seed.wrapping_add(changes),
        )
    };
    let mut current = *rate.borrow_and_update();
    let mut gaps = arrivals(current, changes);
    let mut last = Duration::ZERO;
    loop {
        let next = gaps.next().filter(|_| current > 0.0);
        let gap = next.as_ref().map(|a| a.at.saturating_sub(last));
        let wait = async {
            match gap {
                Some(gap) => tokio::time::sleep(gap).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wait => {}
            changed = rate.changed() => {
                if changed.is_err() {
                    break;
                }
                current = *rate.borrow_and_update();
                changes += 1;
                gaps = arrivals(current, changes);
                last = Duration::ZERO;
                continue;
            }
            () = &mut stopped => break,
        }
        last = next.map_or(last, |a| a.at);
        index += 1;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let mut client = GrpcInferenceServiceClient::new(channels[index as usize % channels.len()].clone());
        calls.spawn(async move {
            let sent = Instant::now();
            let end = match client.model_infer(request()).await {
                Ok(_) => Ok(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX)),
                Err(status) => Err(format!("{:?}", status.code())),
            };
            drop(permit);
            let since = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
            Call { sent_s: since(sent), ended_s: since(Instant::now()), end }
        });
    }
    let mut ends = Vec::new();
    while let Some(end) = calls.join_next().await {
        ends.push(end.unwrap_or_else(|e| Call { sent_s: 0.0, ended_s: 0.0, end: Err(format!("task: {e}")) }));
    }
    (ends, not_sent)
}

/// A gateway in this process whose `default` pool is fed by the returned publisher, and its
/// pool's board.
pub(super) async fn start_gateway(threads: usize) -> Result<(Gateway, Publisher, LoadBoard), BenchError> {
    let (publisher, source) = switchyard_discovery::channel(64);
    let config = GatewayConfig::from_toml(&format!(
        "threads = {threads}\n[[pool]]\nname = \"default\"\n[[pool.discovery]]\nkind = \"static\"\nendpoints = []\n"
    ))
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Io("bind the gateway".into(), e))?;
    let gateway = Gateway::start_with_sources(config, listener, None, vec![("default".into(), source)])
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let board = gateway
        .pool("default")
        .map(|p| p.board().clone())
        .ok_or_else(|| BenchError::Setup("no pool".into()))?;
    Ok((gateway, publisher, board))
}

/// The workers' settings: parallel kind, [`PARALLEL`] slots of [`SERVICE_MS`], `cold_start`.
pub(super) fn worker_process(exe: &Path, cold_start: Duration) -> ProcessConfig {
    let mut process = ProcessConfig::new(exe);
    process.cold_start = cold_start;
    process.worker_args = crate::bench::parallel_worker_args(PARALLEL, SERVICE_MS);
    process
}
