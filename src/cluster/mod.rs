//! `switchyard cluster`: a small cluster on this machine, loaded through the gateway with a
//! production trace, measured, and plotted. By default the pool is **autoscaled**; with
//! `--fixed N` (or `--replicas N`) it is a fixed, heterogeneous pool.
//!
//! # Autoscaled (the default)
//!
//! The gateway runs in this process; its `default` pool is fed through a discovery channel by
//! `switchyard_autoscale`'s process scaler, which starts `switchyard worker --cold-start D`
//! processes (speed 1; `--cold-start`, [`DEFAULT_COLD_START`] = 2 s by default, models loading
//! the weights), adds each to the pool only once its health says SERVING, and on scale-down
//! removes a replica from the pool first, lets its requests in flight finish, then stops it
//! (SIGTERM). Switchyard's LLM-aware recommender reads the pool's `LoadBoard` once a second and
//! keeps the pool between `--min-replicas` (1) and `--max-replicas` (8); its windows are shrunk
//! to the run's length and its target calibrated as the lab's `burst` scenario does (see
//! [`recommender_config`]). The pool starts at its minimum, ready before the first request.
//!
//! The load is a stretch of the trace whose load swings ([`swinging_stretch`]): among the
//! stretches whose busiest [`STRETCH_BINS`]-th offers [`PEAK_LOAD`] (3.5) replicas' capacity when
//! replayed over `--duration`, the one whose load falls most after a peak. For the bundled Azure
//! trace and the default minute that is trace seconds 2381..2920 (minutes 40 to 49), sped up
//! about 9×: 59 requests/s at its peak, falling to 30, about 48 on average (today's fixed pool
//! ran at 43). `--time-scale` fixes the speed-up (and so the span) instead.
//!
//! Beside the fixed pool's report (below; each worker's prompt tokens and prefix-cache hits are
//! read once a second from its `/metrics`, whose address the process scaler gives
//! (`ProcessScaler::replica_metrics`), and once more when the load ends: a replica stopped
//! before then keeps its last reading), `cluster.json` gains
//! `scaling` ([`ScalingReport`]: replica-seconds, scale events up and down, the fewest and most
//! replicas ready, the stretch, and the pool's desired, current and ready count after every
//! decision), and `scaling.png` plots offered load, replicas desired and ready, and TTFT p99
//! over the run. No request may fail while the pool grows or drains;
//! `tests/cluster_autoscale.rs` checks that over real processes.
//!
//! # Fixed (`--fixed N`, `--replicas N`, `--no-gateway`)
//!
//! The cluster is made of child processes of the running executable:
//! - `N` workers (`switchyard worker --listen 127.0.0.1:0 --speed S --metrics-listen
//!   127.0.0.1:0`), four with `--no-gateway`, the last one `--slow-speed` (0.333: three times
//!   slower, an older or shared GPU); LLM engines, or with `--kind parallel --parallel K
//!   --service-ms T` classic servers of `K` slots at `T` ms a request (the default time scale
//!   then follows their capacity);
//! - the gateway over them (`switchyard gateway --listen 127.0.0.1:0 --admin 127.0.0.1:0
//!   --rpc-metrics --backend http://WORKER ... --policy P`), load-report by default.
//!
//! Each child logs its bound address (`worker serving on ADDR`, `metrics serving on ADDR`,
//! `gateway serving on ADDR`, `admin serving on ADDR`); the cluster prints where Prometheus can
//! scrape each of them while it runs (`cluster: metrics at gateway http://ADMIN/metrics, worker-0
//! http://ADDR/metrics, ...`; `deploy/prometheus/` and `deploy/grafana/` have a scrape config and
//! a dashboard), waits for those lines, then the load generator replays
//! the trace (the bundled Azure LLM 2023 conversation trace by default) through the gateway with
//! streaming calls, so that TTFT is measured at the first token. When the last response is in,
//! the cluster reads each replica's completed requests from the gateway's `GET /metrics` (the
//! `switchyard_endpoint_requests_total` series Prometheus scrapes) and each worker's prompt
//! tokens and prefix-cache hits from its own `GET /metrics`
//! (`switchyard_replica_prompt_tokens_total`, `switchyard_replica_cached_prompt_tokens_total`:
//! the hit rate is cached prompt tokens over prompt tokens, per replica and overall),
//! stops the children (SIGTERM, then a wait for a clean exit), prints a summary and writes the
//! report folder (`--out`, by default [`DEFAULT_OUT`], which git ignores, so that a run leaves a
//! fresh clone clean; the committed report is regenerated with `--out reports/cluster`):
//! `cluster.json` ([`ClusterReport`]),
//! `latency.png` (TTFT and latency of every request over the run), `shares.png` (each
//! replica's share of the requests against the share its speed would give it) and `hit_rate.png`
//! (each replica's prefix-cache hit rate and the cluster's; a trace with prefix blocks, such as
//! `traces/mooncake_conversation.jsonl` under `--policy prefix-aware`, is where it matters).
//!
//! # Load (fixed pool)
//!
//! The trace is time-compressed so that the cluster runs at [`TARGET_LOAD`] (70 %) of its
//! capacity: busy enough that the policy matters, with headroom for the trace's bursts. The
//! capacity is not measured at each run but taken from the policy lab, which measures what one
//! speed-1 replica sustains on the bundled trace in a saturated closed loop
//! ([`REPLICA_CAPACITY_RPS`], about 18.4 requests/s); a replica of speed `s` sustains `s` times
//! that. So
//!
//! ```text
//! time_scale = trace_rate / (TARGET_LOAD × REPLICA_CAPACITY_RPS × Σ speeds)
//! ```
//!
//! Four replicas of speeds 1, 1, 1 and 0.333 sustain about 61 requests/s, 70 % of that is about
//! 43. With `trace_rate` the bundled Azure trace's mean rate, 5.5 requests/s, the time scale
//! would be about 0.13; but a minute of load replays only the first eight minutes or so, which
//! run at 4.7 requests/s, so `trace_rate` is taken over the window actually replayed
//! ([`time_scale_for_window`]) and the default time scale comes out near 0.11. With `--trace FILE`
//! a worker's capacity is measured on that trace's own mix the same way (a closed loop on the
//! simulator in virtual time, about a second of wall time), since its prompts may be far longer
//! than the Azure trace's; `--time-scale` sets the factor directly.
//!
//! `--no-gateway` starts no gateway and drives the first worker directly, at 70 % of that one
//! worker's capacity: a check of the workers, the load generator and the report without the
//! gateway.
//!
//! Children are spawned with `kill_on_drop`, so an error on any path kills them; a child that
//! exits while the cluster runs is an error that names it and shows its last stderr lines.

mod autoscale;
pub mod local_autoscaler;
mod plots;
pub(crate) mod processes;
mod report;
mod scaling_plot;
mod stretch;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use autoscale::{PEAK_LOAD, recommender_config};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
pub use plots::{HIT_RATE_PNG, LATENCY_PNG, SHARES_PNG};
use processes::ChildProcess;
pub use processes::ProcessError;
pub use report::{
    ClusterReport, ClusterSetup, PromptTokens, ReplicaSetup, ReplicaShare, ScalePoint, ScalingReport,
    prompt_tokens_from_metrics,
};
pub(crate) use report::{metric_values, shares};
pub use scaling_plot::SCALING_PNG;
pub use stretch::{STRETCH_BINS, Stretch, swinging_stretch};
use switchyard_balance::{PolicyKind, PolicySpec};
use switchyard_core::Spec;
use switchyard_sim::trace::{TraceRecord, read_trace};

use crate::loadgen::{self, LoadgenArgs, LoadgenError};
use crate::report::PlotError;
use crate::worker::ReplicaKindArg;

/// Requests per second one speed-1 worker sustains on the bundled Azure conversation trace, as
/// the policy lab measured it (`replica_capacity_rps` in `reports/lab/hetero.json`: 18.38).
pub const REPLICA_CAPACITY_RPS: f64 = 18.4;

/// The load the cluster is run at by default, as a share of its capacity.
pub const TARGET_LOAD: f64 = 0.7;

/// The workers of a fixed pool without `--fixed N` (with `--no-gateway`).
pub const FIXED_REPLICAS: usize = 4;

/// A new worker's cold start in an autoscaled cluster unless `--cold-start` says otherwise:
/// short, so that a minute's run shows several scale-ups (the lab's `burst` scenario measures
/// the recommenders with 30 s).
pub const DEFAULT_COLD_START: Duration = Duration::from_secs(2);

/// File name of the JSON report in the report folder.
pub const CLUSTER_JSON: &str = "cluster.json";

/// How long a child may take to log its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a child may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Largest `GET /metrics` answer read, in bytes.
const MAX_METRICS_BODY: usize = 4 * 1024 * 1024;

/// Where `switchyard cluster` writes its report unless `--out` says otherwise: a scratch folder
/// that `.gitignore` lists, so a run does not change the committed `reports/cluster/`.
pub const DEFAULT_OUT: &str = "reports/tmp/cluster";

/// Flags of `switchyard cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The gateway's balancing policy, one of the registered ones (see `--help`).
    #[arg(long, default_value_t = PolicyKind::DEFAULT.name().to_string(), help = crate::gateway::policy_help("The gateway's balancing policy"))]
    pub policy: String,
    /// A fixed pool of N workers instead of autoscaling (the last one at `--slow-speed`, the
    /// others at speed 1; four with `--no-gateway`); `--replicas N` is the same.
    #[arg(long = "fixed", visible_alias = "replicas", value_name = "N", conflicts_with_all = ["min_replicas", "max_replicas"])]
    pub fixed: Option<usize>,
    /// Autoscaling: the fewest workers (at least 1).
    #[arg(long, default_value_t = 1)]
    pub min_replicas: u32,
    /// Autoscaling: the most workers.
    #[arg(long, default_value_t = 8)]
    pub max_replicas: u32,
    /// Autoscaling: how long a new worker loads its weights before it serves (`worker
    /// --cold-start`), e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,
    /// Speed of the last worker (1 = H100; 0.333 is three times slower).
    #[arg(long, default_value_t = 0.333)]
    pub slow_speed: f64,
    /// Seconds of load to send.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Multiplies the trace's arrival times. Default: autoscaled, computed with the stretch of
    /// the trace replayed (its peak at 3.5 replicas' capacity: about 0.11); fixed, computed so
    /// that the load is 70% of the cluster's capacity (about 0.11 for four workers, one at
    /// speed 0.333).
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Trace to replay: `.csv` (Azure LLM trace) or `.jsonl` (Mooncake). Default: the bundled
    /// Azure conversation trace.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Folder to write `cluster.json` and the plots to (the default is ignored by git;
    /// `--out reports/cluster` regenerates the committed report).
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Start no gateway and drive the first worker directly (to check everything but the
    /// gateway).
    #[arg(long)]
    pub no_gateway: bool,
    /// What the workers are: LLM engines (`llm`), or classic servers (`parallel`) of
    /// `--parallel` slots at `--service-ms` a request (the default time scale then follows
    /// their capacity, `parallel / service time × speed`).
    #[arg(long, value_enum, default_value_t = ReplicaKindArg::Llm)]
    pub kind: ReplicaKindArg,
    /// `--kind parallel`: requests each worker serves at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: u32,
    /// `--kind parallel`: milliseconds a request takes on a speed-1 worker.
    #[arg(long, default_value_t = 10.0)]
    pub service_ms: f64,
    /// Overload protection: the gateway's pool gets the `shed` layer (a bounded queue by
    /// `x-priority` and deadline, CoDel-style; `switchyard gateway --shed`).
    #[arg(long)]
    pub shed: bool,
    /// Overload protection: the gateway's pool gets the `limit` layer, a concurrency limit on
    /// the whole pool learnt by ALGO (`vegas`, `gradient2`, `aimd`, `envoy-gradient`, or a JSON
    /// table such as `{"name":"fixed","limit":32}`; `switchyard gateway --limit`).
    #[arg(long, value_name = "ALGO", value_parser = crate::gateway::parse_spec_arg)]
    pub limit: Option<Spec>,
    /// Overload protection: a concurrency limit per replica in the gateway's balancer, learnt by
    /// ALGO (as --limit; `switchyard gateway --endpoint-limit`).
    #[arg(long, value_name = "ALGO", value_parser = crate::gateway::parse_spec_arg)]
    pub endpoint_limit: Option<Spec>,
}

impl Default for ClusterArgs {
    fn default() -> Self {
        Self {
            policy: PolicyKind::DEFAULT.name().to_string(),
            fixed: None,
            min_replicas: 1,
            max_replicas: 8,
            cold_start: DEFAULT_COLD_START,
            slow_speed: 0.333,
            duration: 60.0,
            time_scale: None,
            trace: None,
            out: PathBuf::from(DEFAULT_OUT),
            no_gateway: false,
            kind: ReplicaKindArg::Llm,
            parallel: 8,
            service_ms: 10.0,
            shed: false,
            limit: None,
            endpoint_limit: None,
        }
    }
}

impl ClusterArgs {
    /// Whether the pool is autoscaled: unless `--fixed`/`--replicas` or `--no-gateway`.
    pub fn autoscaled(&self) -> bool {
        self.fixed.is_none() && !self.no_gateway
    }

    /// The workers of a fixed pool: `--fixed`, else [`FIXED_REPLICAS`].
    pub fn fixed_replicas(&self) -> usize {
        self.fixed.unwrap_or(FIXED_REPLICAS)
    }

    /// The workers' speeds in a fixed pool: 1 for all but the last, which gets `--slow-speed`
    /// (a single worker runs at speed 1).
    pub fn speeds(&self) -> Vec<f64> {
        let n = self.fixed_replicas();
        (0..n).map(|i| if i + 1 == n && i > 0 { self.slow_speed } else { 1.0 }).collect()
    }

    /// What one speed-1 worker sustains, in requests per second: [`REPLICA_CAPACITY_RPS`] for
    /// an LLM engine on the Azure mix, `parallel / service time` for the parallel kind.
    pub fn replica_capacity_rps(&self) -> f64 {
        match self.kind {
            ReplicaKindArg::Llm => REPLICA_CAPACITY_RPS,
            ReplicaKindArg::Parallel => f64::from(self.parallel) / (self.service_ms / 1e3),
        }
    }

    /// The flags every worker gets besides its address and speed.
    fn worker_kind_args(&self) -> Vec<String> {
        match self.kind {
            ReplicaKindArg::Llm => Vec::new(),
            ReplicaKindArg::Parallel => vec![
                "--kind".into(),
                "parallel".into(),
                "--parallel".into(),
                self.parallel.to_string(),
                "--service-ms".into(),
                self.service_ms.to_string(),
            ],
        }
    }

    /// The gateway's flags of `--shed`, `--limit` and `--endpoint-limit`.
    fn gateway_protection_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.shed {
            args.push("--shed".to_string());
        }
        if let Some(limit) = &self.limit {
            args.extend(["--limit".to_string(), crate::gateway::spec_arg(limit)]);
        }
        if let Some(limit) = &self.endpoint_limit {
            args.extend(["--endpoint-limit".to_string(), crate::gateway::spec_arg(limit)]);
        }
        args
    }

    fn validate(&self) -> Result<PolicySpec, ClusterError> {
        let invalid = |m: String| Err(ClusterError::Invalid(m));
        if self.no_gateway && (self.shed || self.limit.is_some() || self.endpoint_limit.is_some()) {
            return invalid(
                "--shed, --limit and --endpoint-limit protect the gateway: not with --no-gateway".into(),
            );
        }
        if let Some(Err(e)) = self.limit.as_ref().map(switchyard_limit::algorithm_from_spec) {
            return invalid(format!("--limit: {e}"));
        }
        if let Some(Err(e)) = self.endpoint_limit.as_ref().map(switchyard_balance::EndpointLimit::from_spec) {
            return invalid(format!("--endpoint-limit: {e}"));
        }
        if self.kind == ReplicaKindArg::Parallel
            && (self.parallel == 0 || !(self.service_ms.is_finite() && self.service_ms > 0.0))
        {
            return invalid(format!(
                "--parallel must be >= 1 and --service-ms > 0, got {} and {}",
                self.parallel, self.service_ms
            ));
        }
        if self.fixed.is_some_and(|n| n == 0 || n > 64) {
            return invalid(format!(
                "--fixed (--replicas) must be between 1 and 64, got {}",
                self.fixed_replicas()
            ));
        }
        if self.min_replicas == 0 || self.min_replicas > self.max_replicas || self.max_replicas > 64 {
            return invalid(format!(
                "--min-replicas and --max-replicas must satisfy 1 <= min <= max <= 64, got {} and {}",
                self.min_replicas, self.max_replicas
            ));
        }
        if self.cold_start > Duration::from_secs(600) {
            return invalid(format!("--cold-start must be at most 10 minutes, got {:?}", self.cold_start));
        }
        if !(self.slow_speed.is_finite() && self.slow_speed > 0.0) {
            return invalid(format!("--slow-speed must be > 0, got {}", self.slow_speed));
        }
        if !(self.duration.is_finite() && self.duration > 0.0) {
            return invalid(format!("--duration must be > 0 seconds, got {}", self.duration));
        }
        if let Some(x) = self.time_scale.filter(|x| !(x.is_finite() && *x > 0.0)) {
            return invalid(format!("--time-scale must be > 0, got {x}"));
        }
        crate::register_policies();
        let spec = PolicySpec::named(&self.policy);
        switchyard_balance::policy::registry()
            .validate(&spec)
            .map_err(|e| ClusterError::Invalid(format!("--policy: {e}")))?;
        Ok(spec)
    }
}

/// Why the cluster run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A flag is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The trace could not be read.
    #[error("{0}")]
    Trace(#[from] switchyard_sim::trace::TraceError),
    /// The path of the running executable is unknown, so no children can be started.
    #[error("cannot find the switchyard executable to start the cluster with: {0}")]
    CurrentExe(std::io::Error),
    /// A child process failed.
    #[error("{0}")]
    Process(#[from] ProcessError),
    /// The load generator failed.
    #[error("loadgen: {0}")]
    Loadgen(#[from] LoadgenError),
    /// The gateway's `GET /metrics` failed.
    #[error("cannot read the gateway's metrics at http://{admin}/metrics: {reason}")]
    Metrics {
        /// The admin address.
        admin: String,
        /// Why.
        reason: String,
    },
    /// A worker's `GET /metrics` failed.
    #[error("cannot read {worker}'s metrics at http://{address}/metrics: {reason}")]
    WorkerMetrics {
        /// The worker's name.
        worker: String,
        /// Its metrics address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The report folder could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("{0}")]
    Plot(#[from] PlotError),
    /// SIGTERM or Ctrl-C arrived while the cluster ran.
    #[error("interrupted; the cluster is stopped")]
    Interrupted,
}

/// The time scale that offers `load` × the capacity of replicas of `speeds` from a trace
/// recorded at `trace_rate` requests per second (see the module documentation).
pub fn time_scale_for(trace_rate: f64, speeds: &[f64], load: f64) -> f64 {
    trace_rate / (load * REPLICA_CAPACITY_RPS * speeds.iter().sum::<f64>())
}

/// The mean arrival rate of `records` as recorded: requests per second between the first arrival
/// and the last (0 for fewer than two requests).
pub fn trace_rate(records: &[TraceRecord]) -> f64 {
    match (records.first(), records.last()) {
        (Some(a), Some(b)) if b.at > a.at => (records.len() - 1) as f64 / (b.at - a.at).as_secs_f64(),
        _ => 0.0,
    }
}

/// The mean arrival rate, as recorded, of the first `window` seconds of `records` (of the whole
/// trace if it is shorter).
pub fn window_rate(records: &[TraceRecord], window: f64) -> f64 {
    let (Some(first), Some(last)) = (records.first(), records.last()) else { return 0.0 };
    let span = (last.at - first.at).as_secs_f64();
    if !(window.is_finite() && window > 0.0) || window >= span {
        return trace_rate(records);
    }
    let sent = records.iter().take_while(|r| (r.at - first.at).as_secs_f64() < window).count();
    sent as f64 / window
}

/// The time scale at which a replay of `duration` seconds of `records` offers `load` × the
/// capacity of replicas of `speeds`, and the recorded rate of the part replayed.
///
/// A trace's rate varies over its length (the bundled one averages 5.5 requests/s over the hour
/// but 4.7 over its first eight minutes), so the scale is found for the window that is replayed:
/// starting from the whole trace's rate, `scale = window_rate(duration / scale) / (load ×
/// capacity)` is repeated until it settles (a few rounds: the rate changes slowly with the
/// window).
pub fn time_scale_for_window(
    records: &[TraceRecord],
    duration: f64,
    speeds: &[f64],
    load: f64,
) -> (f64, f64) {
    let mut rate = trace_rate(records);
    let mut scale = time_scale_for(rate, speeds, load);
    for _ in 0..50 {
        let next_rate = window_rate(records, duration / scale);
        let next = time_scale_for(next_rate, speeds, load);
        if !(next.is_finite() && next > 0.0) {
            break;
        }
        let settled = (next - scale).abs() <= 1e-6 * scale;
        (rate, scale) = (next_rate, next);
        if settled {
            break;
        }
    }
    (scale, rate)
}

/// The started cluster: the workers and, unless `--no-gateway`, the gateway.
struct Cluster {
    workers: Vec<(ChildProcess, String)>,
    /// Each worker's `/metrics` address (`HOST:PORT`), in the order of `workers`.
    worker_metrics: Vec<String>,
    /// The gateway, its gRPC address and its admin address.
    gateway: Option<(ChildProcess, String, String)>,
}

impl Cluster {
    async fn start(
        exe: &Path,
        speeds: &[f64],
        kind_args: &[String],
        policy: Option<PolicySpec>,
        protection: &[String],
    ) -> Result<Self, ClusterError> {
        let starts = speeds.iter().enumerate().map(|(i, speed)| {
            let mut args: Vec<String> =
                ["worker", "--listen", "127.0.0.1:0", "--speed", &speed.to_string(), "--model", "sim-llm"]
                    .into_iter()
                    .chain(["--metrics-listen", "127.0.0.1:0"])
                    .map(String::from)
                    .collect();
            args.extend(kind_args.iter().cloned());
            async move {
                let name = format!("worker-{i}");
                let phrases = ["worker serving on ", "metrics serving on "];
                let (child, mut addresses) =
                    ChildProcess::start(&name, exe, &args, &phrases, START_TIMEOUT).await?;
                let metrics = addresses.pop().unwrap_or_default();
                Ok::<_, ProcessError>(((child, addresses.remove(0)), metrics))
            }
        });
        // On an error the workers already started are dropped, which kills them.
        let (workers, worker_metrics): (Vec<_>, Vec<_>) =
            futures::future::try_join_all(starts).await?.into_iter().unzip();
        for ((child, address), speed) in workers.iter().zip(speeds) {
            eprintln!("cluster: {} (speed {speed}) serving on {address}", child.name());
        }
        let gateway = match policy {
            None => None,
            Some(policy) => {
                let mut args: Vec<String> =
                    ["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--rpc-metrics"]
                        .map(String::from)
                        .into();
                for (_, address) in &workers {
                    args.extend(["--backend".to_string(), format!("http://{address}")]);
                }
                args.extend(["--policy".to_string(), policy.name().to_string()]);
                args.extend(protection.iter().cloned());
                let phrases = ["gateway serving on ", "admin serving on "];
                let (child, addresses) =
                    ChildProcess::start("gateway", exe, &args, &phrases, START_TIMEOUT).await?;
                let [grpc, admin]: [String; 2] = addresses
                    .try_into()
                    .map_err(|_| ClusterError::Invalid("the gateway logged too few addresses".to_string()))?;
                eprintln!("cluster: gateway ({policy}) serving on {grpc}, admin on {admin}");
                Some((child, grpc, admin))
            }
        };
        // Where Prometheus can scrape the cluster while it runs (deploy/prometheus/ has a
        // config; deploy/grafana/switchyard.json a dashboard over these series).
        let mut scrape: Vec<String> =
            gateway.iter().map(|(_, _, admin)| format!("gateway http://{admin}/metrics")).collect();
        scrape.extend(
            workers.iter().zip(&worker_metrics).map(|((c, _), m)| format!("{} http://{m}/metrics", c.name())),
        );
        eprintln!("cluster: metrics at {}", scrape.join(", "));
        Ok(Self { workers, worker_metrics, gateway })
    }

    /// The address the load generator sends to.
    fn target(&self) -> &str {
        match &self.gateway {
            Some((_, grpc, _)) => grpc,
            None => &self.workers[0].1,
        }
    }

    /// Completes when any child exits, with the error that is.
    async fn any_exit(&mut self) -> ProcessError {
        let children =
            self.workers.iter_mut().map(|(c, _)| c).chain(self.gateway.iter_mut().map(|(c, ..)| c));
        let exits = children.map(|c| Box::pin(c.exited()));
        futures::future::select_all(exits).await.0
    }

    /// Stops the gateway (so that it drains first), then the workers; reports the first failure.
    async fn stop(self) -> Result<(), ClusterError> {
        let gateway = match self.gateway {
            Some((child, ..)) => child.stop(STOP_GRACE).await,
            None => Ok(()),
        };
        let workers =
            futures::future::join_all(self.workers.into_iter().map(|(c, _)| c.stop(STOP_GRACE))).await;
        gateway?;
        workers.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }
}

/// Requests per second one speed-1 LLM worker (the simulator's defaults, as the cluster starts
/// them) sustains on the mix of `records`, measured as the policy lab does
/// ([`crate::lab::measure_capacity`]) in virtual time on a thread of its own: about a second of
/// wall time.
async fn trace_capacity_rps(records: &[TraceRecord]) -> Result<f64, ClusterError> {
    let window: Vec<TraceRecord> = records.iter().take(crate::lab::CAPACITY_REQUESTS).cloned().collect();
    let measured = in_virtual_time(move || async move {
        crate::lab::measure_capacity(&switchyard_sim::EngineConfig::default(), &window).await
    })
    .await;
    match measured {
        Ok(rps) if rps.is_finite() && rps > 0.0 => Ok(rps),
        Ok(rps) => Err(ClusterError::Invalid(format!(
            "the trace's capacity came out at {rps} requests/s; give --time-scale"
        ))),
        Err(e) => Err(ClusterError::Invalid(format!(
            "cannot measure a worker's capacity on the trace ({e}); give --time-scale"
        ))),
    }
}

/// Runs `work` on a runtime of its own with a paused clock (virtual time), on a blocking thread:
/// the lab's measurements, about a second of wall time. An error is given as its text.
pub(crate) async fn in_virtual_time<T, E, F>(work: impl FnOnce() -> F + Send + 'static) -> Result<T, String>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(work()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
}

/// Starts the cluster, loads it, stops it, writes the report folder, and returns the report.
/// `shutdown` (SIGTERM or Ctrl-C in the binary) stops the cluster early with
/// [`ClusterError::Interrupted`].
pub async fn run(
    args: &ClusterArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<ClusterReport, ClusterError> {
    let policy = args.validate()?;
    let (records, trace_name) = match &args.trace {
        Some(path) => (read_trace(path)?, path.display().to_string()),
        None => (crate::traces::azure_conv()?, "azure_llm_2023_conv.csv (bundled)".to_string()),
    };
    if args.autoscaled() {
        let replica_rps = match (&args.trace, args.kind) {
            (Some(_), ReplicaKindArg::Llm) => trace_capacity_rps(&records).await?,
            _ => args.replica_capacity_rps(),
        };
        return autoscale::run(args, policy, records, trace_name, replica_rps, shutdown).await;
    }
    let speeds = args.speeds();
    let driven = if args.no_gateway { &speeds[..1] } else { &speeds[..] };
    // What one speed-1 worker sustains: the lab's constant on the bundled trace, measured on the
    // trace's own mix otherwise (its prompts may be ten times the Azure trace's).
    let replica_rps = match (&args.trace, args.kind) {
        (Some(_), ReplicaKindArg::Llm) => trace_capacity_rps(&records).await?,
        _ => args.replica_capacity_rps(),
    };
    // Speeds in units of the LLM replica's capacity, which the time-scale helpers assume.
    let factor = replica_rps / REPLICA_CAPACITY_RPS;
    let scaled: Vec<f64> = driven.iter().map(|s| s * factor).collect();
    let (computed, window) = time_scale_for_window(&records, args.duration, &scaled, TARGET_LOAD);
    let time_scale = args.time_scale.unwrap_or(computed);
    let rate = window_rate(&records, args.duration / time_scale);
    drop(records);
    if !(time_scale.is_finite() && time_scale > 0.0 && rate > 0.0) {
        return Err(ClusterError::Invalid(format!(
            "cannot compute a time scale for a trace at {window} requests/s; give --time-scale"
        )));
    }
    let capacity = replica_rps * driven.iter().sum::<f64>();
    let out = args.out.clone();
    std::fs::create_dir_all(&out).map_err(|source| ClusterError::Write { path: out.clone(), source })?;
    let exe = std::env::current_exe().map_err(ClusterError::CurrentExe)?;

    tokio::pin!(shutdown);
    let kind_args = args.worker_kind_args();
    let protection = args.gateway_protection_args();
    let mut cluster = tokio::select! {
        started = Cluster::start(&exe, &speeds, &kind_args, (!args.no_gateway).then(|| policy.clone()), &protection) => started?,
        () = &mut shutdown => return Err(ClusterError::Interrupted),
    };
    let loadgen_args = LoadgenArgs {
        target: format!("http://{}", cluster.target()),
        trace: args.trace.clone(),
        time_scale,
        duration: Some(args.duration),
        stream: true,
        ..LoadgenArgs::default()
    };
    eprintln!(
        "cluster: replaying {trace_name} at time scale {time_scale:.4} ({:.1} req/s offered, {:.0}% of {capacity:.1}) for {} s",
        rate / time_scale,
        rate / time_scale / capacity * 100.0,
        args.duration
    );
    let (loadgen, samples) = tokio::select! {
        done = loadgen::run_sampled(&loadgen_args) => done?,
        exited = cluster.any_exit() => return Err(exited.into()),
        () = &mut shutdown => {
            cluster.stop().await?;
            return Err(ClusterError::Interrupted);
        }
    };

    let addresses: Vec<String> = cluster.workers.iter().map(|(_, a)| a.clone()).collect();
    let (counts, shares_from) = match &cluster.gateway {
        Some((_, _, admin)) => {
            let text = gateway_metrics(admin).await?;
            let (counts, unmatched) = report::counts_from_metrics(&text, &addresses);
            if !unmatched.is_empty() {
                tracing::warn!(
                    "the gateway lists endpoints that are not workers of this cluster: {unmatched:?}"
                );
            }
            (counts, "gateway /metrics".to_string())
        }
        None => {
            let mut counts = vec![(0, 0); addresses.len()];
            counts[0] = (loadgen.ok, loadgen.errors.values().sum());
            (counts, "loadgen, no gateway: all to worker-0".to_string())
        }
    };
    // Each worker's prompt tokens and prefix-cache hits, from its own /metrics.
    let mut tokens = Vec::with_capacity(cluster.worker_metrics.len());
    for (i, metrics) in cluster.worker_metrics.iter().enumerate() {
        let text = fetch_metrics(metrics).await.map_err(|reason| ClusterError::WorkerMetrics {
            worker: format!("worker-{i}"),
            address: metrics.clone(),
            reason,
        })?;
        tokens.push(report::prompt_tokens_from_metrics(&text).unwrap_or_default());
    }
    let completed: Vec<u64> = counts.iter().map(|c| c.0).collect();
    let total_speed: f64 = speeds.iter().sum();
    let replicas: Vec<ReplicaShare> = report::shares(&completed)
        .into_iter()
        .zip(&counts)
        .enumerate()
        .map(|(i, (share, &(completed, failed)))| ReplicaShare {
            name: format!("worker-{i}"),
            address: addresses[i].clone(),
            speed: speeds[i],
            completed,
            failed,
            share,
            speed_share: speeds[i] / total_speed,
            prompt_tokens: tokens[i].prompt,
            cached_prompt_tokens: tokens[i].cached,
            prefix_hit_rate: tokens[i].hit_rate(),
        })
        .collect();
    let total = tokens.iter().fold(PromptTokens::default(), |sum, t| PromptTokens {
        prompt: sum.prompt + t.prompt,
        cached: sum.cached + t.cached,
    });
    let stopped = cluster.stop().await;

    let report = ClusterReport {
        setup: ClusterSetup {
            policy: (!args.no_gateway).then(|| policy.name().to_string()),
            replicas: replicas
                .iter()
                .map(|r| ReplicaSetup { name: r.name.clone(), address: r.address.clone(), speed: r.speed })
                .collect(),
            duration_s: args.duration,
            time_scale,
            time_scale_from: if args.time_scale.is_some() { "flag" } else { "computed" }.to_string(),
            trace_rate: rate,
            capacity_rps: capacity,
            offered_load: rate / time_scale / capacity,
            trace: trace_name,
        },
        loadgen,
        replicas,
        shares_from,
        plots: vec![LATENCY_PNG.to_string(), SHARES_PNG.to_string(), HIT_RATE_PNG.to_string()],
        prefix_hit_rate: total.hit_rate(),
        scaling: None,
    };
    write_report(&out, &report, &samples)?;
    stopped?;
    Ok(report)
}

/// Writes `cluster.json` and the plots into `out`.
fn write_report(
    out: &Path,
    report: &ClusterReport,
    samples: &[loadgen::RequestSample],
) -> Result<(), ClusterError> {
    let json = out.join(CLUSTER_JSON);
    crate::report::write_json(&json, report).map_err(|source| ClusterError::Write { path: json, source })?;
    let setup = &report.setup;
    let who = match &setup.policy {
        Some(p) => format!("gateway {p}"),
        None => "no gateway (worker-0 only)".to_string(),
    };
    let speeds: Vec<String> = setup.replicas.iter().map(|r| report::format_speed(r.speed)).collect();
    let title = format!(
        "{} replicas (speeds {}), {who}, load {:.0}%",
        speeds.len(),
        speeds.join(", "),
        setup.offered_load * 100.0
    );
    write_plots(out, &title, report, samples)
}

/// Writes `latency.png`, `shares.png` and `hit_rate.png` into `out`, titled `title`.
fn write_plots(
    out: &Path,
    title: &str,
    report: &ClusterReport,
    samples: &[loadgen::RequestSample],
) -> Result<(), ClusterError> {
    plots::latency_plot(&out.join(LATENCY_PNG), title, samples)?;
    plots::share_plot(&out.join(SHARES_PNG), &format!("Requests per replica: {title}"), &report.replicas)?;
    plots::hit_rate_plot(
        &out.join(HIT_RATE_PNG),
        &format!("Prefix-cache hit rate per replica: {title}"),
        &report.replicas,
        report.prefix_hit_rate,
    )?;
    Ok(())
}

/// The gateway's `GET /metrics` on `admin` (`HOST:PORT`).
async fn gateway_metrics(admin: &str) -> Result<String, ClusterError> {
    fetch_metrics(admin).await.map_err(|reason| ClusterError::Metrics { admin: admin.to_string(), reason })
}

/// `GET /metrics` on `address` (`HOST:PORT`): the body, or why not.
pub(crate) async fn fetch_metrics(address: &str) -> Result<String, String> {
    http_get(address, "/metrics").await
}

/// `GET path` over HTTP/1.1 on `address` (`HOST:PORT`): the body of a success, or why not.
pub(crate) async fn http_get(address: &str, path: &str) -> Result<String, String> {
    let admin = address;
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let connection = tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, admin)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_METRICS_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        connection.abort();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body.to_bytes())));
        }
        String::from_utf8(body.to_bytes().to_vec()).map_err(|e| format!("not UTF-8: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(10), fetch).await {
        Ok(result) => result,
        Err(_) => Err("no answer within 10 s".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trace_of_long_prompts_is_replayed_at_the_capacity_measured_on_it() {
        // The Mooncake prompts are about ten times the Azure trace's: a worker sustains a small
        // fraction of the Azure constant on them, and the time scale must follow.
        let records = crate::traces::mooncake_conversation().unwrap();
        let rps = trace_capacity_rps(&records).await.unwrap();
        assert!(rps > 0.1 && rps < REPLICA_CAPACITY_RPS / 4.0, "{rps}");
        let azure = crate::traces::azure_conv().unwrap();
        let on_azure = trace_capacity_rps(&azure).await.unwrap();
        assert!((on_azure / REPLICA_CAPACITY_RPS - 1.0).abs() < 0.05, "{on_azure}");
    }

    #[test]
    fn parallel_workers_get_their_flags_and_their_capacity() {
        let args = ClusterArgs {
            kind: ReplicaKindArg::Parallel,
            parallel: 8,
            service_ms: 10.0,
            ..ClusterArgs::default()
        };
        assert_eq!(args.replica_capacity_rps(), 800.0);
        assert_eq!(args.worker_kind_args(), ["--kind", "parallel", "--parallel", "8", "--service-ms", "10"]);
        assert!(args.validate().is_ok());
        assert!(ClusterArgs { service_ms: 0.0, ..args.clone() }.validate().is_err());
        assert!(ClusterArgs::default().worker_kind_args().is_empty());
        assert_eq!(ClusterArgs::default().replica_capacity_rps(), REPLICA_CAPACITY_RPS);
    }

    #[test]
    fn overload_flags_reach_the_gateway_and_its_default_pool() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            cluster: ClusterArgs,
        }
        let cli = Cli::try_parse_from([
            "cluster",
            "--shed",
            "--limit",
            r#"{"name":"fixed","limit":32}"#,
            "--endpoint-limit",
            "gradient2",
        ])
        .unwrap();
        let args = cli.cluster;
        assert!(args.validate().is_ok());
        let flags = args.gateway_protection_args();
        assert_eq!(
            flags,
            ["--shed", "--limit", r#"{"limit":32,"name":"fixed"}"#, "--endpoint-limit", "gradient2"]
        );

        // The gateway reads them into its default pool: shed before limit, and the per-endpoint limit.
        #[derive(clap::Parser)]
        struct GatewayCli {
            #[command(flatten)]
            gateway: crate::gateway::GatewayArgs,
        }
        let mut argv = vec!["gateway".to_string(), "--backend".into(), "127.0.0.1:9001".into()];
        argv.extend(flags);
        let config = GatewayCli::try_parse_from(argv).unwrap().gateway.gateway_config().unwrap();
        let pool = &config.pools[0];
        let layers: Vec<_> = pool.layers.iter().map(|l| l.name().to_string()).collect();
        assert_eq!(layers, ["shed", "limit"]);
        assert_eq!(pool.layers[1].raw_params()["algorithm"]["limit"], 32);
        assert_eq!(pool.endpoint_limit.as_ref().map(|l| l.name()), Some("gradient2"));

        // A bad algorithm is refused before anything starts, and by the gateway naming its flag.
        let bad = ClusterArgs { limit: Some(Spec::named("nope")), ..ClusterArgs::default() };
        assert!(bad.validate().is_err());
        let argv = ["gateway", "--backend", "127.0.0.1:9001", "--limit", "nope"];
        let e = GatewayCli::try_parse_from(argv).unwrap().gateway.gateway_config().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("--limit"), "{e}");
        let argv = ["gateway", "--backend", "127.0.0.1:9001", "--shed", "--endpoint-limit", "nope"];
        let e = GatewayCli::try_parse_from(argv).unwrap().gateway.gateway_config().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("--endpoint-limit"), "{e}");
        assert!(ClusterArgs { shed: true, no_gateway: true, ..ClusterArgs::default() }.validate().is_err());
    }

    #[test]
    fn the_default_cluster_runs_at_seventy_percent_of_its_capacity() {
        let records = crate::traces::azure_conv().unwrap();
        let rate = trace_rate(&records);
        // 19,366 arrivals over 58 minutes between the first and the last.
        assert!((rate - 5.53).abs() < 0.01, "{rate}");
        let speeds = ClusterArgs::default().speeds();
        assert_eq!(speeds, [1.0, 1.0, 1.0, 0.333]);
        // Over the whole trace: about an eighth, about 43 requests/s, 70% of about 61.
        let scale = time_scale_for(rate, &speeds, TARGET_LOAD);
        assert!((scale - 0.129).abs() < 0.002, "{scale}");
        // Over the minute replayed: the first eight minutes or so are quieter.
        let (scale, window) = time_scale_for_window(&records, 60.0, &speeds, TARGET_LOAD);
        assert!((4.5..5.0).contains(&window), "{window}");
        assert!((0.10..0.12).contains(&scale), "{scale}");
        // The replayed minute offers 70 % of the four replicas' capacity, about 43 requests/s.
        let offered = window_rate(&records, 60.0 / scale) / scale;
        assert!((offered - 42.9).abs() < 0.5, "{offered}");
        // A replay longer than the trace takes the whole trace's rate.
        assert_eq!(window_rate(&records, 1e9), rate);
    }

    /// The capacity constant is what the lab measures for a speed-1 replica on the bundled
    /// trace: a change to the engine's physics that moves the measurement fails here.
    #[test]
    fn the_replica_capacity_constant_is_what_the_lab_measures() {
        let records = crate::traces::azure_conv().unwrap();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let measured = runtime
            .block_on(crate::lab::measure_capacity(&switchyard_sim::EngineConfig::default(), &records))
            .unwrap();
        let off = (measured - REPLICA_CAPACITY_RPS).abs() / measured;
        assert!(
            off < 0.01,
            "the lab measures {measured} requests/s, the constant says {REPLICA_CAPACITY_RPS}"
        );
    }

    #[test]
    fn window_rate_counts_the_arrivals_in_the_window() {
        let records: Vec<TraceRecord> = [0, 1, 2, 3, 10]
            .iter()
            .map(|&s| TraceRecord {
                at: Duration::from_secs(s),
                prompt_tokens: 1,
                output_tokens: 1,
                prefix: Default::default(),
            })
            .collect();
        assert_eq!(window_rate(&records, 4.0), 1.0);
        assert_eq!(window_rate(&records, 2.0), 1.0);
        assert_eq!(window_rate(&records, 20.0), 0.4);
        assert_eq!(window_rate(&[], 2.0), 0.0);
    }

    #[test]
    fn the_last_replica_is_the_slow_one() {
        let args = ClusterArgs { fixed: Some(2), slow_speed: 0.5, ..ClusterArgs::default() };
        assert_eq!(args.speeds(), [1.0, 0.5]);
        assert_eq!(ClusterArgs { fixed: Some(1), ..ClusterArgs::default() }.speeds(), [1.0]);
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        let bad = [
            ClusterArgs { fixed: Some(0), ..ClusterArgs::default() },
            ClusterArgs { min_replicas: 3, max_replicas: 2, ..ClusterArgs::default() },
            ClusterArgs { duration: -1.0, ..ClusterArgs::default() },
            ClusterArgs { time_scale: Some(0.0), ..ClusterArgs::default() },
            ClusterArgs { slow_speed: f64::NAN, ..ClusterArgs::default() },
            ClusterArgs { policy: "fastest".into(), ..ClusterArgs::default() },
        ];
        let names =
            ["--replicas", "--max-replicas", "--duration", "--time-scale", "--slow-speed", "--policy"];
        for (args, name) in bad.iter().zip(names) {
            let err = args.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
        assert_eq!(ClusterArgs::default().validate().unwrap(), PolicyKind::LoadReport.spec());
        let hashed = ClusterArgs { policy: "prefix-aware".into(), ..ClusterArgs::default() };
        assert_eq!(hashed.validate().unwrap().name(), "prefix-aware");
    }

    #[test]
    fn trace_rate_of_tiny_traces_is_zero() {
        assert_eq!(trace_rate(&[]), 0.0);
    }
}
