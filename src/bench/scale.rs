//! Scenario `scale`: the pool scaled up and down under load over real worker processes, every
//! request's outcome counted: the issue's "scale-down fails no request".
//!
//! The gateway runs in the bench process (`Gateway::start_with_sources`), its pool fed by a
//! discovery channel; its replicas are `switchyard worker` processes that
//! [`ProcessScaler`] starts and stops: a new one joins discovery once its health is SERVING (after
//! its `--cold-start` of [`COLD_START`]); a removed one drains (out of discovery, its requests in
//! flight finish, then SIGTERM, and the worker's own drain grace).
//!
//! The load rises and falls through [`PHASES`], each `--duration` seconds long: unary `ModelInfer`
//! calls at Poisson arrivals at the phase's rate, each with a deadline of [`DEADLINE`]. The
//! replica count is set by explicit scale steps interleaved with the load, not by a recommender
//! (the lab's `burst` scenario measures the recommenders): a rise scales up first and raises the
//! rate once the new replicas are ready (as a predictive autoscaler would have them); a fall
//! lowers the rate and scales down at the same moment, so that the replicas removed still have
//! calls in flight. Workers are of the parallel kind ([`PARALLEL`] calls at once at
//! [`SERVICE_MS`] each: [`PARALLEL`] / [`SERVICE_MS`] calls a second), the rate of each phase
//! about 70 % of its replicas' capacity.
//!
//! Reported: requests sent and their outcomes (failures by gRPC status), the scale events, the
//! replicas (desired, current, ready, draining on the board) and the calls in flight every
//! [`SAMPLE_EVERY`], and the replicas that drained, with the calls each had in flight when it
//! left discovery (read off the board, sampled every [`DRAIN_SAMPLE_EVERY`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use switchyard_autoscale::Scaler;
use switchyard_autoscale::scaler::process::{ProcessConfig, ProcessScaler};
use switchyard_balance::LoadBoard;
use switchyard_core::EndpointId;
use switchyard_sim::{LengthSampler, Pattern, Synthetic};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{BenchArgs, BenchError};
use crate::gateway::{Gateway, GatewayConfig};
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::report::{Percentiles, Table};

/// Calls a worker serves at once.
pub const PARALLEL: u32 = 8;
/// Milliseconds a call takes (long enough that a replica leaving has calls in flight).
pub const SERVICE_MS: f64 = 400.0;
/// Each worker's simulated weight loading (`--cold-start`).
pub const COLD_START: Duration = Duration::from_secs(1);
/// Every call's deadline.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The phases: replicas, and calls a second (about 70 % of their capacity, 20 calls/s each).
pub const PHASES: [(u32, f64); 7] =
    [(1, 14.0), (3, 42.0), (1, 14.0), (4, 56.0), (2, 28.0), (3, 42.0), (1, 14.0)];
/// How often the timeline is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How often the board is read for replicas leaving discovery.
pub const DRAIN_SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// HTTP/2 connections the load generator spreads its calls over.
const CONNECTIONS: usize = 4;
/// Most calls in flight at once in the load generator; more are counted as not sent.
const MAX_IN_FLIGHT: usize = 4096;
/// How long a scale-up may take to have its replicas ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One change of the desired replica count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleEvent {
    /// Seconds since the load began.
    pub at_s: f64,
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
    /// For a scale-up: seconds until every new replica was ready (SERVING, in discovery).
    pub ready_after_s: Option<f64>,
}

/// One sample of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the load began.
    pub at_s: f64,
    /// Calls a second being offered.
    pub offered_rps: f64,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas that exist (ready or starting).
    pub current: u32,
    /// Replicas ready (in discovery).
    pub ready: u32,
    /// Replicas out of discovery still finishing calls (draining on the board).
    pub draining: u32,
    /// Calls in flight on the board.
    pub in_flight: u64,
}

/// One replica that left discovery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drained {
    /// The replica.
    pub replica: String,
    /// Seconds since the load began when the board last showed it in discovery.
    pub at_s: f64,
    /// The calls it had in flight then, which it finished while draining.
    pub in_flight_at_removal: u32,
}

/// The report of scenario `scale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleReport {
    /// The scenario.
    pub scenario: String,
    /// The workers.
    pub workers: String,
    /// Who decided the replica count.
    pub scaling: String,
    /// Seconds per phase.
    pub phase_s: f64,
    /// The phases: replicas and calls a second.
    pub phases: Vec<(u32, f64)>,
    /// Every call's deadline, in ms.
    pub deadline_ms: f64,
    /// Calls offered (sent, or not sent because too many were in flight).
    pub requests: u64,
    /// Calls answered.
    pub ok: u64,
    /// Calls that failed, by gRPC status (`not-sent` for calls the generator could not send).
    pub failures_by_status: BTreeMap<String, u64>,
    /// All failures.
    pub failures: u64,
    /// Latency of the answered calls, ms.
    pub latency_ms: Percentiles,
    /// The scale events.
    pub scale_events: Vec<ScaleEvent>,
    /// Scale-downs among them.
    pub scale_downs: usize,
    /// The replicas that left discovery, in order.
    pub drained: Vec<Drained>,
    /// How many of them had calls in flight when they left.
    pub drained_with_calls_in_flight: usize,
    /// The timeline.
    pub timeline: Vec<Sample>,
    /// `/proc/loadavg` before and after.
    pub loadavg: (String, String),
    /// The build the bench ran as: `release` or `debug` (the result is a count of failures,
    /// not a speed; both are valid runs).
    pub build: String,
}

impl ScaleReport {
    /// The scale events as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(["t (s)", "from", "to", "ready after (s)"]);
        for e in &self.scale_events {
            table.row([
                format!("{:.1}", e.at_s),
                e.from.to_string(),
                e.to.to_string(),
                e.ready_after_s.map_or_else(|| "-".to_string(), |s| format!("{s:.2}")),
            ]);
        }
        table
    }

    /// The figures and the verdict against the issue's target.
    pub fn summary(&self) -> String {
        let verdict = if self.failures == 0 { "met" } else { "NOT met" };
        let failures: Vec<String> =
            self.failures_by_status.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!(
            "bench scale: {}; {}; {} phases of {} s\n\n{}\n\
             requests {}, answered {}, failed {} ({}); latency p50 {:.0} ms, p99 {:.0} ms\n\
             scale-downs {}, replicas drained {} ({} with calls in flight, {} calls in all)\n\
             target: scale-down fails no request: {} failed ({verdict})\n",
            self.workers,
            self.scaling,
            self.phases.len(),
            self.phase_s,
            self.table(),
            self.requests,
            self.ok,
            self.failures,
            if failures.is_empty() { "none".to_string() } else { failures.join(", ") },
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.scale_downs,
            self.drained.len(),
            self.drained_with_calls_in_flight,
            self.drained.iter().map(|d| u64::from(d.in_flight_at_removal)).sum::<u64>(),
            self.failures,
        )
    }

    /// The markdown report (`reports/bench/scale.md`).
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Bench `scale`: scaling up and down under load over real processes\n\n");
        out.push_str(
            "Written by the bench itself:\n\n```sh\ncargo run --release -- bench scale --json reports/bench/scale.json\n```\n\n",
        );
        out.push_str(&format!(
            "This run: a {} build, on {} CPUs shared with other jobs (the load averages below).\n\n",
            self.build,
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        ));
        out.push_str(&format!(
            "Setup: the gateway in the bench process, its pool fed by a discovery channel; replicas are \
             `switchyard worker` processes ({}) started and stopped by `switchyard_autoscale`'s `ProcessScaler` \
             (a replica joins discovery once SERVING; a removed one drains: out of discovery, its calls in \
             flight finish, then SIGTERM and the worker's drain grace). Scaling: {}. Load: unary `ModelInfer` \
             calls at Poisson arrivals, {} phases of {} s, each call with a {} ms deadline. Machine load \
             average before / after: `{}` / `{}`.\n\n",
            self.workers,
            self.scaling,
            self.phases.len(),
            self.phase_s,
            self.deadline_ms,
            self.loadavg.0,
            self.loadavg.1,
        ));
        out.push_str("| phase | replicas | calls/s |\n| --- | --- | --- |\n");
        for (i, (n, rate)) in self.phases.iter().enumerate() {
            out.push_str(&format!("| {} | {n} | {rate} |\n", i + 1));
        }
        out.push_str("\n## Outcomes\n\n| requests | answered | failed | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- | --- |\n");
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} |\n\n",
            self.requests,
            self.ok,
            self.failures,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.max
        ));
        if self.failures_by_status.is_empty() {
            out.push_str("Failures by status: none.\n\n");
        } else {
            out.push_str("Failures by status:\n\n");
            for (status, n) in &self.failures_by_status {
                out.push_str(&format!("- `{status}`: {n}\n"));
            }
            out.push('\n');
        }
        out.push_str("## Scale events\n\n| t (s) | from | to | new replicas ready after (s) |\n| --- | --- | --- | --- |\n");
        for e in &self.scale_events {
            out.push_str(&format!(
                "| {:.1} | {} | {} | {} |\n",
                e.at_s,
                e.from,
                e.to,
                e.ready_after_s.map_or_else(|| "-".to_string(), |s| format!("{s:.2}"))
            ));
        }
        out.push_str("\n## Replicas drained\n\n| replica | left discovery at (s) | calls in flight then |\n| --- | --- | --- |\n");
        for d in &self.drained {
            out.push_str(&format!("| {} | {:.2} | {} |\n", d.replica, d.at_s, d.in_flight_at_removal));
        }
        out.push_str(&format!(
            "\n## Against the issue's target\n\n| target | measured | verdict |\n| --- | --- | --- |\n\
             | scale-down fails no request | {} failed of {} over {} scale-downs, {} replicas drained ({} with calls in flight) | {} |\n\n",
            self.failures,
            self.requests,
            self.scale_downs,
            self.drained.len(),
            self.drained_with_calls_in_flight,
            if self.failures == 0 { "met" } else { "not met" },
        ));
        out.push_str("The timeline (replicas desired, current, ready, draining, and calls in flight, every 0.5 s) is in `scale.json`.\n");
        out
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn request() -> tonic::Request<crate::proto::inference::ModelInferRequest> {
    let mut request = tonic::Request::new(crate::worker::request::text_request("sim-llm", "scale", 4));
    request.set_timeout(DEADLINE);
    request
}

/// How a call ended: its latency in µs, or its gRPC status.
type End = Result<u64, String>;

/// What the replicas and the board look like over the run.
#[derive(Default)]
struct Watch {
    timeline: Vec<Sample>,
    drained: Vec<Drained>,
}

/// Samples `board` every [`DRAIN_SAMPLE_EVERY`] (replicas leaving) and every [`SAMPLE_EVERY`]
/// (the timeline, with `size` and `rate`) until `stop`.
async fn watch(
    board: LoadBoard,
    start: Instant,
    size: impl Fn() -> Option<switchyard_autoscale::PoolSize>,
    rate: Arc<AtomicU64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Watch {
    let mut out = Watch::default();
    // Replicas in discovery at the last sample, with their calls in flight.
    let mut serving: BTreeMap<EndpointId, u32> = BTreeMap::new();
    let mut next_sample = start;
    let mut tick = tokio::time::interval(DRAIN_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return out,
        }
        let now = Instant::now();
        let at_s = now.saturating_duration_since(start).as_secs_f64();
        let snapshot = board.snapshot();
        let mut now_serving = BTreeMap::new();
        for e in &snapshot {
            if !e.draining {
                now_serving.insert(e.endpoint.id.clone(), e.load.in_flight);
            }
        }
        for (id, in_flight) in &serving {
            if !now_serving.contains_key(id) {
                out.drained.push(Drained { replica: id.to_string(), at_s, in_flight_at_removal: *in_flight });
            }
        }
        serving = now_serving;
        // The scaler is busy for a moment while a scale step is applied: sample next tick.
        if now >= next_sample
            && let Some(size) = size()
        {
            next_sample += SAMPLE_EVERY;
            out.timeline.push(Sample {
                at_s,
                offered_rps: f64::from_bits(rate.load(Ordering::Relaxed)),
                desired: size.desired,
                current: size.current,
                ready: size.ready,
                draining: snapshot.iter().filter(|e| e.draining).count() as u32,
                in_flight: snapshot.iter().map(|e| u64::from(e.load.in_flight)).sum(),
            });
        }
    }
}

/// Sends calls at the rate in `rate` (f64 bits; re-read after every arrival) until `stop`.
async fn generate(
    channels: Vec<Channel>,
    rate: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
    seed: u64,
) -> (Vec<End>, u64) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let mut not_sent = 0u64;
    let mut index = 0u64;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let r = f64::from_bits(rate.load(Ordering::Relaxed));
        // One exponential gap at the current rate (a Poisson process whose rate changes at the
        // phase boundaries).
        let gap = Synthetic::new(
            Pattern::Poisson { rate: r.max(1e-3) },
            LengthSampler::fixed(16, 4),
            Duration::from_secs(3600),
            seed.wrapping_add(index),
        )
        .next()
        .map_or(Duration::from_millis(100), |a| a.at);
        tokio::select! {
            () = tokio::time::sleep(gap) => {}
            () = &mut stopped => break,
        }
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
            end
        });
    }
    let mut ends = Vec::new();
    while let Some(end) = calls.join_next().await {
        ends.push(end.unwrap_or_else(|e| Err(format!("task: {e}"))));
    }
    (ends, not_sent)
}

/// Waits until `scaler` has `n` replicas ready, at most [`READY_TIMEOUT`].
async fn until_ready(scaler: &tokio::sync::Mutex<ProcessScaler>, n: u32) -> Result<(), BenchError> {
    let give_up = Instant::now() + READY_TIMEOUT;
    while scaler.lock().await.size().ready < n {
        if Instant::now() >= give_up {
            return Err(BenchError::Setup(format!("{n} replicas not ready within {READY_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling the scaler's observable size
    }
    Ok(())
}

/// Runs the scenario.
pub(crate) async fn run(args: &BenchArgs, exe: &Path) -> Result<ScaleReport, BenchError> {
    let phase = Duration::from_secs_f64(args.duration);
    let loadavg_before = loadavg();
    let (publisher, source) = switchyard_discovery::channel(64);
    let threads = args.proxy_threads();
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

    let worker_args: Vec<String> = [
        "--model",
        "sim-llm",
        "--kind",
        "parallel",
        "--parallel",
        &PARALLEL.to_string(),
        "--service-ms",
        &SERVICE_MS.to_string(),
    ]
    .map(String::from)
    .into();
    let mut process = ProcessConfig::new(exe);
    process.cold_start = COLD_START;
    process.worker_args = worker_args.clone();
    let scaler = Arc::new(tokio::sync::Mutex::new(ProcessScaler::new(process, publisher, board.clone())));

    // The first phase's replicas, ready before the load begins.
    let (first_n, first_rate) = PHASES[0];
    scaler.lock().await.set_desired(first_n).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    until_ready(&scaler, first_n).await?;
    let channels = super::load::connect(&[gateway.local_addr().to_string()], CONNECTIONS)
        .await
        .map_err(BenchError::Setup)?;
    let rate = Arc::new(AtomicU64::new(first_rate.to_bits()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let size_of = {
        let scaler = scaler.clone();
        move || scaler.try_lock().ok().map(|s| s.size())
    };
    let (watch_stop, watch_stopped) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(watch(board.clone(), start, size_of, rate.clone(), watch_stopped));
    let generator = tokio::spawn(generate(channels, rate.clone(), stop.clone(), 7));

    let mut events = Vec::new();
    let mut current = first_n;
    for (i, &(n, r)) in PHASES.iter().enumerate().skip(1) {
        tokio::time::sleep_until(start + phase * i as u32).await;
        let at = Instant::now();
        scaler.lock().await.set_desired(n).await.map_err(|e| BenchError::Setup(e.to_string()))?;
        let ready_after_s = if n > current {
            // Up: the rate rises once the new replicas are ready.
            until_ready(&scaler, n).await?;
            Some(at.elapsed().as_secs_f64())
        } else {
            None
        };
        rate.store(r.to_bits(), Ordering::Relaxed);
        eprintln!("bench: scale: {current} -> {n} replicas, {r} calls/s");
        events.push(ScaleEvent {
            at_s: at.saturating_duration_since(start).as_secs_f64(),
            from: current,
            to: n,
            ready_after_s,
        });
        current = n;
    }
    tokio::time::sleep_until(start + phase * PHASES.len() as u32).await;
    stop.notify_one();
    let (ends, not_sent) = generator.await.map_err(|e| BenchError::Setup(format!("load generator: {e}")))?;
    // Let the last sample see the end, then stop the watcher and the replicas.
    tokio::time::sleep(SAMPLE_EVERY).await;
    let _ = watch_stop.send(());
    let watched = watcher.await.map_err(|e| BenchError::Setup(format!("watcher: {e}")))?;
    let scaler =
        Arc::try_unwrap(scaler).map_err(|_| BenchError::Setup("the scaler is still shared".into()))?;
    scaler.into_inner().shutdown().await;
    if let Err(e) = gateway.shutdown().await {
        eprintln!("bench: warning: gateway: {e}");
    }

    let mut failures_by_status = BTreeMap::new();
    let mut latencies = Vec::new();
    for end in &ends {
        match end {
            Ok(us) => latencies.push(*us as f64 / 1e3),
            Err(status) => *failures_by_status.entry(status.clone()).or_insert(0) += 1,
        }
    }
    if not_sent > 0 {
        failures_by_status.insert("not-sent".into(), not_sent);
    }
    let ok = latencies.len() as u64;
    let failures = failures_by_status.values().sum();
    let drained = watched.drained;
    Ok(ScaleReport {
        scenario: "scale".into(),
        workers: format!(
            "workers --kind parallel --parallel {PARALLEL} --service-ms {SERVICE_MS} ({:.0} calls/s each), --cold-start {:?}",
            f64::from(PARALLEL) / (SERVICE_MS / 1e3),
            COLD_START
        ),
        scaling: "explicit scale steps interleaved with the load (up: rate raised once the new replicas are ready; \
                  down: rate lowered and replicas removed at once)"
            .into(),
        phase_s: args.duration,
        phases: PHASES.to_vec(),
        deadline_ms: DEADLINE.as_secs_f64() * 1e3,
        requests: ends.len() as u64 + not_sent,
        ok,
        failures_by_status,
        failures,
        latency_ms: Percentiles::of(&mut latencies),
        scale_downs: events.iter().filter(|e| e.to < e.from).count(),
        scale_events: events,
        drained_with_calls_in_flight: drained.iter().filter(|d| d.in_flight_at_removal > 0).count(),
        drained,
        timeline: watched.timeline,
        loadavg: (loadavg_before, loadavg()),
        build: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
    })
}
