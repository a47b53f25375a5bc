//! The autoscaled cluster (the default): the gateway in this process, its pool fed by
//! `switchyard_autoscale`'s process scaler through a discovery channel, and Switchyard's
//! LLM-aware recommender reading the pool's board once a second (the three wired together in
//! [`LocalAutoscaler`], which `switchyard bench scale` runs too).
//!
//! ```text
//! loadgen ─▶ gateway (in process) ─▶ pool ─▶ worker-0 .. worker-N (child processes)
//!                          │ LoadBoard        ▲ discovery Insert when SERVING / Remove to drain
//!                          ▼                  │
//!              BoardSignals ─▶ LlmAware ─▶ ProcessScaler
//! ```
//!
//! The recommender's windows are those of [`LlmAwareConfig::default`] (made for 30 s cold starts
//! over minutes of load) shrunk to the run: for a `--duration` of `d` seconds, the rate's EWMA
//! has `τ = d / 30`, the trend window is `d / 12`, a scale-down needs the demand of the last
//! `d / 6` to fit in fewer replicas, and the pool scales down at most once every `d / 20`;
//! 2 s, 5 s, 10 s and 3 s for the default minute. Its target utilisation is calibrated as the
//! lab's `burst` scenario calibrates it (one simulated replica at 70 % of its capacity on the
//! trace's mix, in virtual time). The trend is projected one `--cold-start` ahead.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use switchyard_autoscale::scaler::process::{ProcessConfig, ProcessScaler};
use switchyard_autoscale::{Bounds, LlmAwareConfig, Scaler};
use switchyard_balance::PolicySpec;
use switchyard_sim::trace::TraceRecord;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::local_autoscaler::{LocalAutoscaler, recommender_config_for_run};
use super::report::{
    ClusterReport, ClusterSetup, PromptTokens, ReplicaSetup, ReplicaShare, ScalePoint, ScalingReport,
};
use super::stretch::swinging_stretch;
use super::{ClusterArgs, ClusterError, HIT_RATE_PNG, LATENCY_PNG, SCALING_PNG, SHARES_PNG};
use crate::gateway::{Gateway, GatewayConfig, GatewayTelemetry};
use crate::loadgen::{self, LoadgenArgs};
use crate::worker::ReplicaKindArg;

/// The busiest bin of the replayed stretch offers this many replicas' capacity by default: the
/// pool grows to about `PEAK_LOAD / 0.7` replicas at the peak (the recommender is calibrated at
/// 70 % of a replica), about what today's fixed pool of four carries.
pub const PEAK_LOAD: f64 = 3.5;

/// How long the first `--min-replicas` workers may take to be ready.
const FIRST_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The recommender's settings for a run of `duration` seconds (see the module docs and
/// [`recommender_config_for_run`]).
pub fn recommender_config(args: &ClusterArgs, target_utilisation: f64) -> LlmAwareConfig {
    recommender_config_for_run(
        args.duration,
        args.cold_start,
        Bounds::new(args.min_replicas, args.max_replicas),
        target_utilisation,
    )
}

/// The gateway's configuration: the flags the fixed cluster gives its gateway process, read by
/// the gateway's own parser (so `--shed`, `--limit` and `--endpoint-limit` mean the same), with
/// the pool's endpoints left to the autoscaler's discovery channel.
fn gateway_config(args: &ClusterArgs, policy: &PolicySpec) -> Result<GatewayConfig, ClusterError> {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct GatewayFlags {
        #[command(flatten)]
        gateway: crate::gateway::GatewayArgs,
    }
    // A placeholder backend, removed below: the gateway's flags want one.
    let mut argv: Vec<String> =
        ["gateway", "--backend", "127.0.0.1:1", "--policy", policy.name()].map(String::from).into();
    argv.extend(args.gateway_protection_args());
    let flags = GatewayFlags::try_parse_from(argv).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    let mut config = flags.gateway.gateway_config().map_err(|e| ClusterError::Invalid(e.to_string()))?;
    for pool in &mut config.pools {
        pool.endpoints.clear();
    }
    Ok(config)
}

/// The target utilisation for the trace's mix (the lab's calibration, on a thread of its own).
async fn target_utilisation(
    args: &ClusterArgs,
    records: &[TraceRecord],
    replica_rps: f64,
) -> Result<f64, ClusterError> {
    if args.kind == ReplicaKindArg::Parallel {
        // The calibration simulates an LLM engine; a parallel server keeps the default.
        return Ok(LlmAwareConfig::default().target_utilisation);
    }
    let window: Vec<TraceRecord> = records.iter().take(crate::lab::CAPACITY_REQUESTS).cloned().collect();
    let calibrated = super::in_virtual_time(move || async move {
        crate::lab::burst::switchyard_target(replica_rps, &window, 1).await
    })
    .await;
    calibrated
        .map_err(|e| ClusterError::Invalid(format!("cannot calibrate the autoscaler on the trace: {e}")))
}

/// Runs the autoscaled cluster over `records` (see the module docs) and writes its report.
pub(super) async fn run(
    args: &ClusterArgs,
    policy: PolicySpec,
    records: Vec<TraceRecord>,
    trace_name: String,
    replica_rps: f64,
    shutdown: impl Future<Output = ()>,
) -> Result<ClusterReport, ClusterError> {
    let stretch = swinging_stretch(&records, args.duration, PEAK_LOAD * replica_rps, args.time_scale)
        .ok_or_else(|| ClusterError::Invalid("the trace is too short to pick a stretch from".into()))?;
    let replay = stretch.records(&records);
    if replay.is_empty() {
        return Err(ClusterError::Invalid("the trace's stretch holds no request".into()));
    }
    let target = target_utilisation(args, &records, replica_rps).await?;
    drop(records);
    let out = args.out.clone();
    std::fs::create_dir_all(&out).map_err(|source| ClusterError::Write { path: out.clone(), source })?;
    let exe = std::env::current_exe().map_err(ClusterError::CurrentExe)?;

    // The gateway, in process: its pool is fed by the scaler.
    let (publisher, source) = switchyard_discovery::channel(64);
    let bind = || async {
        TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ClusterError::Invalid(format!("cannot bind loopback: {e}")))
    };
    let (listener, admin) = (bind().await?, bind().await?);
    let telemetry = GatewayTelemetry::new(switchyard_telemetry::MetricsRegistry::default(), true, false);
    let gateway = Gateway::start_with_sources_and_telemetry(
        gateway_config(args, &policy)?,
        listener,
        Some(admin),
        vec![("default".to_string(), source)],
        telemetry,
    )
    .map_err(|e| ClusterError::Invalid(format!("gateway: {e}")))?;
    let (grpc, admin) =
        (gateway.local_addr(), gateway.admin_addr().map(|a| a.to_string()).unwrap_or_default());
    let board = gateway
        .pool("default")
        .map(|p| p.board().clone())
        .ok_or_else(|| ClusterError::Invalid("the gateway has no default pool".into()))?;
    eprintln!("cluster: gateway ({policy}) serving on {grpc}, admin on {admin}");
    eprintln!("cluster: metrics at gateway http://{admin}/metrics");

    let mut config = ProcessConfig::new(exe);
    config.cold_start = args.cold_start;
    config.metrics = true;
    config.worker_args = ["--speed", "1", "--model", "sim-llm"].map(String::from).into();
    config.worker_args.extend(args.worker_kind_args());
    let mut autoscaler =
        LocalAutoscaler::new(config, publisher, board.clone(), recommender_config(args, target));

    tokio::pin!(shutdown);
    // The first replicas, before any load.
    tokio::select! {
        ready = autoscaler.start(args.min_replicas, FIRST_READY_TIMEOUT) => {
            ready.map_err(|e| ClusterError::Invalid(e.to_string()))?;
        }
        () = &mut shutdown => return Err(ClusterError::Interrupted),
    }

    let loadgen_args = LoadgenArgs {
        target: format!("http://{grpc}"),
        time_scale: stretch.time_scale,
        duration: Some(args.duration),
        stream: true,
        ..LoadgenArgs::default()
    };
    let mean_rate = replay.len() as f64 / stretch.span_s;
    eprintln!(
        "cluster: autoscaling {}..{} replicas (cold start {:?}, target utilisation {target:.3}); replaying {trace_name} \
         seconds {:.0}..{:.0} sped up {:.1}x ({:.1} req/s on average, {:.1} at the peak, falling {:.1}x) for {} s",
        args.min_replicas,
        args.max_replicas,
        args.cold_start,
        stretch.start_s,
        stretch.start_s + stretch.span_s,
        1.0 / stretch.time_scale,
        mean_rate / stretch.time_scale,
        stretch.peak_rate / stretch.time_scale,
        stretch.swing(),
        args.duration,
    );
    let channel = loadgen::connect(&loadgen_args.target).await?;
    let source_name = format!("trace:{trace_name}");
    let started = Instant::now();
    let mut timeline = Vec::new();
    let mut addresses: BTreeMap<String, Seen> = BTreeMap::new();
    let driven = {
        let load = loadgen::drive_sampled(channel, replay, source_name, &loadgen_args);
        let scaling = async {
            autoscaler.begin();
            record(&mut timeline, &mut addresses, started, autoscaler.scaler(), &board);
            loop {
                if let Err(e) = autoscaler.decide_when_due().await {
                    return ClusterError::Invalid(format!("autoscaler: {e}"));
                }
                record(&mut timeline, &mut addresses, started, autoscaler.scaler(), &board);
                scrape(&mut addresses, autoscaler.scaler()).await;
            }
        };
        tokio::select! {
            done = load => Ok(done),
            failed = scaling => Err::<_, ClusterError>(failed),
            () = &mut shutdown => Err(ClusterError::Interrupted),
        }
    };
    let end_s = started.elapsed().as_secs_f64();
    let (loadgen, samples) = match driven {
        Ok(done) => done,
        Err(e) => {
            autoscaler.shutdown().await;
            let _ = gateway.shutdown().await;
            return Err(e);
        }
    };
    record(&mut timeline, &mut addresses, started, autoscaler.scaler(), &board);
    // The replicas still running, once every response is in: their final counts.
    scrape(&mut addresses, autoscaler.scaler()).await;

    // Each replica's requests, as the gateway's board last showed them (a drained replica
    // leaves the board, and the gateway's /metrics, with its last requests).
    let ids: Vec<String> = addresses.keys().cloned().collect();
    let counts: Vec<(u64, u64)> = addresses.values().map(|seen| (seen.completed, seen.failed)).collect();
    let events = autoscaler.scale_events();
    autoscaler.shutdown().await;
    let stopped = gateway.shutdown().await;

    let completed: Vec<u64> = counts.iter().map(|c| c.0).collect();
    let replicas: Vec<ReplicaShare> = super::report::shares(&completed)
        .into_iter()
        .zip(&counts)
        .zip(&addresses)
        .map(|((share, &(completed, failed)), (id, seen))| ReplicaShare {
            name: id.clone(),
            address: seen.address.clone(),
            speed: 1.0,
            completed,
            failed,
            share,
            speed_share: 1.0 / ids.len().max(1) as f64,
            prompt_tokens: seen.tokens.prompt,
            cached_prompt_tokens: seen.tokens.cached,
            prefix_hit_rate: seen.tokens.hit_rate(),
        })
        .collect();
    let total = addresses.values().fold(PromptTokens::default(), |sum, seen| PromptTokens {
        prompt: sum.prompt + seen.tokens.prompt,
        cached: sum.cached + seen.tokens.cached,
    });
    let (replica_seconds, ready_replica_seconds, ready_min, ready_max, desired_max) =
        ScalingReport::figures(&timeline, end_s);
    // Load against one replica's capacity (the pool's size changes over the run).
    let capacity = replica_rps;
    let scaling = ScalingReport {
        recommender: "llm-aware".to_string(),
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        cold_start_s: args.cold_start.as_secs_f64(),
        target_utilisation: target,
        stretch,
        peak_load_replicas: stretch.peak_rate / stretch.time_scale / replica_rps,
        replica_seconds,
        ready_replica_seconds,
        scale_events: events.0 + events.1,
        scale_ups: events.0,
        scale_downs: events.1,
        ready_min,
        ready_max,
        desired_max,
        timeline,
    };
    let report = ClusterReport {
        setup: ClusterSetup {
            policy: Some(policy.name().to_string()),
            replicas: replicas
                .iter()
                .map(|r| ReplicaSetup { name: r.name.clone(), address: r.address.clone(), speed: r.speed })
                .collect(),
            duration_s: args.duration,
            time_scale: stretch.time_scale,
            time_scale_from: if args.time_scale.is_some() { "flag" } else { "computed" }.to_string(),
            trace_rate: mean_rate,
            capacity_rps: capacity,
            offered_load: mean_rate / stretch.time_scale / capacity,
            trace: trace_name,
        },
        loadgen,
        replicas,
        shares_from: "the gateway's board, as last seen (sampled once a second)".to_string(),
        plots: vec![
            SCALING_PNG.to_string(),
            LATENCY_PNG.to_string(),
            SHARES_PNG.to_string(),
            HIT_RATE_PNG.to_string(),
        ],
        prefix_hit_rate: total.hit_rate(),
        scaling: Some(scaling),
    };
    write_report(&out, &report, &samples)?;
    stopped.map_err(|e| ClusterError::Invalid(format!("gateway: {e}")))?;
    Ok(report)
}

/// A replica as the board last showed it.
#[derive(Debug, Clone, Default)]
struct Seen {
    address: String,
    completed: u64,
    failed: u64,
    /// Its prompt tokens and prefix-cache hits, from its worker's `/metrics` as last read.
    tokens: PromptTokens,
}

/// Reads every running replica's prompt tokens and prefix-cache hits from its worker's
/// `/metrics` and keeps them as its last reading (a replica stopped later keeps the reading of
/// the second before it was told to drain; one that does not answer keeps its previous one).
async fn scrape(addresses: &mut BTreeMap<String, Seen>, scaler: &ProcessScaler) {
    let reads = scaler.replica_metrics().into_iter().map(|(id, metrics)| async move {
        let text = super::fetch_metrics(&metrics.to_string()).await;
        (id, text.ok().and_then(|t| super::report::prompt_tokens_from_metrics(&t)))
    });
    for (id, tokens) in futures::future::join_all(reads).await {
        if let Some(tokens) = tokens {
            addresses.entry(id.to_string()).or_default().tokens = tokens;
        }
    }
}

/// Appends the pool's size now, and remembers every replica on the board: its address and the
/// requests it has completed and failed.
fn record(
    timeline: &mut Vec<ScalePoint>,
    addresses: &mut BTreeMap<String, Seen>,
    started: Instant,
    scaler: &ProcessScaler,
    board: &switchyard_balance::LoadBoard,
) {
    let size = scaler.size();
    timeline.push(ScalePoint {
        t_s: started.elapsed().as_secs_f64(),
        desired: size.desired,
        current: size.current,
        ready: size.ready,
    });
    for entry in board.snapshot() {
        let seen = addresses.entry(entry.endpoint.id.to_string()).or_default();
        seen.address.clone_from(&entry.endpoint.address);
        seen.completed = seen.completed.max(entry.load.completed);
        seen.failed = seen.failed.max(entry.load.failed);
    }
}

/// Writes `cluster.json`, the scaling plot, the latency plot and the share plot.
fn write_report(
    out: &Path,
    report: &ClusterReport,
    samples: &[loadgen::RequestSample],
) -> Result<(), ClusterError> {
    let json = out.join(super::CLUSTER_JSON);
    crate::report::write_json(&json, report).map_err(|source| ClusterError::Write { path: json, source })?;
    let Some(scaling) = &report.scaling else { return Ok(()) };
    let title = format!(
        "autoscaled {}..{} replicas (ready {}..{}), gateway {}, cold start {:.1} s",
        scaling.min_replicas,
        scaling.max_replicas,
        scaling.ready_min,
        scaling.ready_max,
        report.setup.policy.as_deref().unwrap_or("-"),
        scaling.cold_start_s,
    );
    super::scaling_plot::scaling_plot(&out.join(SCALING_PNG), &title, samples, &scaling.timeline)?;
    super::write_plots(out, &title, report, samples)
}
