//! `switchyard bench`: the gateway against nginx and HAProxy, as real processes over loopback
//! gRPC, for throughput, added latency and CPU per request.
//!
//! Where the policy lab (`switchyard lab`) compares policies in virtual time, the bench measures
//! the proxy itself on this machine. Absolute numbers depend on the machine and on what else runs
//! on it; quote the ratios between targets measured in one run.
//!
//! # Scenario `overhead`
//!
//! Two workers (`switchyard worker --speed 1000`), and a closed loop of `--clients` clients (64)
//! that each send their next call as soon as the last one answered, for `--duration` seconds (10)
//! after `--warmup` seconds (2) that are not counted, against each target in turn:
//!
//! - `direct`: no proxy, half of the clients on each worker (the floor);
//! - `tcp-relay`: [`relay`], a layer-4 relay that copies bytes and reads no HTTP/2: what the
//!   machine allows a proxy at the least, so the most requests/s any proxy can reach here;
//! - `switchyard`: the gateway (`--policy`, round robin by default);
//! - `switchyard-rpc-metrics`: the same with `--rpc-metrics` (every call measured by the
//!   telemetry layer), for the cost of the metrics;
//! - `switchyard-protected`: the same with `--shed`, `--limit` (fixed at 1,024, so that it does
//!   not bind: a learnt limit throttles this load) and `--rpc-metrics`, for the protected
//!   stack's cost;
//! - `nginx`: `grpc_pass` to an upstream of the two workers (`bench/nginx.conf`);
//! - `haproxy`: HTTP/2 on both sides (`bench/haproxy.cfg`).
//!
//! The call is `ServerLive`, which the worker answers without its engine: the measurement is the
//! path, not the model. The clients share `--connections` HTTP/2 connections (8), the same for
//! every target, and run in the bench process itself. Per target the bench reports requests/s,
//! latency percentiles, and the proxy's CPU time per request from the kernel's accounting of the
//! proxy's processes (`/proc/PID/stat` utime + stime, read at the start and the end of the window),
//! in all and split into user and system time.
//!
//! # Scenario `hetero`
//!
//! Four workers, one five times slower (speed 0.2), the bundled Azure conversation trace replayed
//! with streaming calls at about 64 % of their capacity for `--duration` seconds (use 30 or
//! more), through the gateway with each policy, nginx (round robin, `least_conn`) and HAProxy
//! (`roundrobin`, `leastconn`). It reports the time to first token (p99 first) of each target;
//! see [`hetero`].
//!
//! # Scenario `herd`
//!
//! `hetero`'s four workers and load, through four gateway processes at once (each its own
//! listener, its own board, no state shared) with the trace's arrivals dealt round robin to four
//! load generators, one per gateway; against one gateway carrying the whole load, and against
//! four nginx `least_conn` and four HAProxy `leastconn` instances dealt the load the same way.
//! It reports the time to first token merged over the load generators, each worker's share of
//! the prompt tokens, and the four gateways' p99 over one gateway's and over the better peer's;
//! see [`herd`]. With `--json FILE` it also writes its markdown report beside it.
//!
//! # Scenario `hetero-parallel`
//!
//! Four workers of the parallel kind (8 calls at once at 20 ms each), one four times slower,
//! unary calls at Poisson arrivals at 65 % of their capacity for `--duration` seconds, through
//! the same targets as `hetero`; see [`hetero_parallel`].
//!
//! # Scenario `overload`
//!
//! Four workers of the parallel kind (4 slots at 100 ms each), their capacity measured through
//! the gateway, then unary calls of three priority classes with a deadline at 0.5, 1, 2 and 3 ×
//! that capacity, `--duration` seconds a step, through the gateway with no protection, with
//! `--shed --limit` (fixed and AIMD), and with the workers' own `--shed`: goodput and success by
//! class per step; see [`overload`].
//!
//! # Scenario `prefix`
//!
//! Eight workers, the first 1,500 requests of the bundled Mooncake conversation trace with their
//! prefix blocks and a session header, at 70 % of the workers' capacity, through the gateway's
//! `prefix-aware` and `bounded-load-hash` and nginx's `hash $http_x_session_id consistent` and
//! `least_conn`, each on fresh workers: TTFT, prefix-cache hit rate and errors; see [`prefix`].
//! With `--json FILE` it also writes its markdown report beside it (`FILE` with `.md`).
//!
//! # Scenario `scale`
//!
//! The gateway in the bench process over `switchyard worker` processes that the autoscale crate's
//! `ProcessScaler` starts and drains, in two parts: the real autoscaler (`LlmAware` over the
//! pool's board) sizing the pool while the load goes through `--steps` (low, high, medium by
//! default), then the load rising and falling through seven phases of `--duration` seconds with
//! the pool scaled up and down between them by a script: every call's outcome, the scale events,
//! the replicas over time and the replicas drained; see [`scale`]. With `--json FILE` it also
//! writes its markdown report beside it.
//!
//! # Scenario `cost`
//!
//! What one call costs the gateway, counted instead of timed: one worker, the gateway with one
//! serving thread under callgrind, unary `ServerLive` and streaming `ModelStreamInfer` calls
//! from the bench process in windows that callgrind counts apart, for the `default` and the
//! `protected` (`--shed --limit vegas --rpc-metrics`) configurations: instructions, allocations
//! and frees per call, instructions by crate and the top functions, and bytes per call from the
//! counting binary `switchyard-count-allocations` when it is built. `--baseline FILE` compares
//! with an earlier report and fails past `--tolerance` (what `scripts/cost-check.sh` runs); see
//! [`cost`]. With `--json FILE` it also writes its markdown report beside it. It needs valgrind
//! (`scripts/install-bench-deps.sh`).
//!
//! # Scenario `soak`
//!
//! Three workers behind the gateway under steady load for `--duration` seconds (600 for a real
//! soak) at `--rate` calls a second, the next worker restarted every `--restart-every`: the
//! gateway's resident memory, open file descriptors and live tasks sampled from its `/metrics`,
//! judged flat after the warm-up, and every failed call explained by a restart or not; see
//! [`soak`]. With `--json FILE` it also writes its markdown report and its plot beside it.
//!
//! # Scenario `faults`
//!
//! Four workers behind the gateway process under a steady load of idempotent (`ModelMetadata`)
//! and non-idempotent (`ModelInfer`, `ModelStreamInfer`) calls with 1 s deadlines, one fault per
//! run: `kill`, `hang`, `unavailable`, `slow`, `reset`, `flap`, `gateway-restart` (`--faults`
//! chooses, `--rate` sets the calls a second): failures by code, the calls in flight on the
//! faulty replica, and the recovery time of each class against issue 24's targets, with a plot
//! per fault of the success rate over time; see [`faults`]. With `--json FILE` it also writes its
//! markdown report and the plots beside it.
//!
//! `--targets` runs some of the targets only, in the order given (`--targets tcp-relay,switchyard`
//! to profile the gateway against the floor, say).
//!
//! nginx and HAProxy must be installed (`scripts/install-bench-deps.sh`) for the targets and
//! scenarios that run them; the bench fails, naming the script, when they are not. It starts its
//! own instances with its own config files in a temporary folder, never the distro's services.

mod callgrind;
pub mod cost;
pub mod cost_report;
mod cpu;
#[cfg(unix)]
pub mod faults;
pub mod herd;
pub mod hetero;
pub mod hetero_parallel;
mod load;
pub mod overload;
mod peers;
pub mod prefix;
pub mod relay;
pub mod scale;
pub mod soak;
mod soak_plot;
mod targets;
use crate::cluster::processes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use tokio::time::Instant;

use crate::report::{Percentiles, Table, write_json};
use peers::{PeerBalance, PeerKind};
use processes::{ChildProcess, ProcessError};

/// How long a child may take to log its address.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A bench scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Zero-cost workers: requests/s, latency and CPU per request of each proxy.
    Overhead,
    /// Four workers, one 5× slower, the Azure trace at ~64% load: p99 TTFT of each balancer.
    Hetero,
    /// Four parallel-kind workers (8 slots, 20 ms), one 4× slower, Poisson calls at 65% load.
    HeteroParallel,
    /// `hetero`'s workers and load through four gateway processes (four load generators), one
    /// gateway, four nginx `least_conn` and four HAProxy `leastconn`: p99 TTFT of each.
    Herd,
    /// Four parallel-kind workers at 0.5×, 1×, 2×, 3× their measured capacity, with and without
    /// overload protection: goodput and success by priority.
    Overload,
    /// Eight workers, the Mooncake conversation trace with session ids: the gateway's prefix
    /// policies against nginx consistent hashing and `least_conn` (TTFT, hit rate).
    Prefix,
    /// Worker processes scaled up and down under rising and falling load, by the autoscaler and
    /// by a script: every request's outcome, scale events, replicas drained.
    Scale,
    /// One worker, the gateway under callgrind: instructions, allocations and bytes per unary and
    /// per streaming call, by crate and by function (deterministic; `--baseline` to compare).
    Cost,
    /// Steady load through the gateway for `--duration` seconds (600 for a real soak) with its
    /// workers restarted in turn: its memory, descriptors and tasks flat, every failure explained.
    Soak,
    /// Four workers behind the gateway under steady load, one fault at a time (kill, hang,
    /// unavailable, slow, reset, flap, gateway-restart): failures and recovery per fault.
    Faults,
}

/// How nginx and HAProxy spread calls over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerBalanceArg {
    /// nginx's default round robin, HAProxy's `balance roundrobin`.
    RoundRobin,
    /// nginx's `least_conn`, HAProxy's `balance leastconn`.
    LeastConn,
}

/// `switchyard bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// HTTP/2 connections the clients share, per target.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Measured seconds per target.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before the measured window of each target [default: 2; `faults` 30,
    /// the balancer's speed time constant, so that a fault hits a gateway past its start].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// The gateway's balancing policy, in scenarios `overhead`, `herd` and `faults` [default:
    /// `overhead` round robin, as nginx and HAProxy balance there; `herd` and `faults` the
    /// gateway's default policy].
    #[arg(long)]
    pub policy: Option<String>,
    /// nginx's and HAProxy's balancing.
    #[arg(long, value_enum, default_value_t = PeerBalanceArg::RoundRobin)]
    pub peer_balance: PeerBalanceArg,
    /// Threads of each proxy: the gateway's `--threads`, nginx's `worker_processes`, HAProxy's
    /// `nbthread` [default: one per CPU].
    #[arg(long)]
    pub proxy_threads: Option<std::num::NonZeroUsize>,
    /// Scenario `overhead` only: the targets to run, in this order, comma-separated [default:
    /// all, as direct,tcp-relay,switchyard,switchyard-rpc-metrics,switchyard-protected,nginx,haproxy].
    /// nginx and HAProxy need to be installed only when chosen.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Option<Vec<OverheadTarget>>,
    /// Scenario `scale` only: the autoscaled part's load, steps of `RATE:SECONDS` (calls a
    /// second at Poisson arrivals, for that long) separated by commas [default: 5:30,50:45,15:75].
    #[arg(long, value_name = "RATE:SECONDS,...")]
    pub steps: Option<String>,
    /// Scenarios `overload` and `cost` only: the configurations to run, by name, comma-separated
    /// (e.g. `shed+aimd,worker-shed`; cost: `default,protected`) [default: all].
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub configs: Option<Vec<String>>,
    /// Scenario `cost` only: unary calls counted per configuration.
    #[arg(long, default_value_t = 4000)]
    pub calls: u64,
    /// Scenario `cost` only: streaming calls counted per configuration.
    #[arg(long, default_value_t = 500)]
    pub stream_calls: u64,
    /// Scenario `cost` only: unary calls before the counted window (a quarter as many streaming
    /// calls before the streaming window).
    #[arg(long, default_value_t = 400)]
    pub warmup_calls: u64,
    /// Scenario `cost` only: the counting binary for bytes per call [default:
    /// switchyard-count-allocations beside this binary or in target/release/, when it exists].
    #[arg(long, value_name = "PATH")]
    pub alloc_binary: Option<PathBuf>,
    /// Scenario `cost` only: the binary whose gateway is measured [default: this one], e.g. an
    /// older build, to measure it with this load and parser. Bytes per call then come only from
    /// `--alloc-binary`, when given.
    #[arg(long, value_name = "PATH")]
    pub gateway_binary: Option<PathBuf>,
    /// Scenario `cost` only: runs under callgrind per configuration; each window keeps the run of
    /// the median instructions (timing moves them a little: see `bench::cost`).
    #[arg(long, default_value = "1")]
    pub runs: std::num::NonZeroU32,
    /// Scenario `cost` only: an earlier report to compare with; the run fails when a figure grew
    /// by more than `--tolerance`.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Scenario `cost` only: how much instructions or allocations per call may grow over
    /// `--baseline`, in percent.
    #[arg(long, default_value_t = 2.0)]
    pub tolerance: f64,
    /// Scenario `cost` only: a folder to keep each window's callgrind dump in
    /// (`CONFIG-unary-runN.callgrind.out`, `CONFIG-streaming-runN.callgrind.out`), for
    /// `callgrind_annotate` or KCachegrind; created if missing [default: none kept].
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// Scenario `soak` only: how often the next worker is restarted [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub restart_every: Option<Duration>,
    /// Scenario `faults` only: the faults to run, in this order, comma-separated [default: all,
    /// as kill,hang,unavailable,slow,reset,flap,gateway-restart].
    #[cfg(unix)]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Option<Vec<faults::FaultKind>>,
    /// Scenarios `faults` and `soak` only: calls a second through the gateway [default: faults
    /// 150, soak 200].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Scenario `faults` only: the pool's `probe_timeout`, how long a call no retry can save waits
    /// for its replica to answer a ping (`0s`: it goes at once) [default: the gateway's, 50ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub probe_timeout: Option<Duration>,
}

/// Seconds of load before the measured window when `--warmup` is not given (scenario `faults`:
/// [`faults::WARMUP_S`]).
pub const WARMUP_S: f64 = 2.0;

/// The limit of target `switchyard-protected`: one that does not bind at this load, so that the
/// run measures what the layers cost, not a throttled workload. A learnt limit does bind here:
/// with workers that answer at once, a few calls queued double the round trip Vegas sees, and it
/// settles at 2, which holds 62 of the 64 clients in the shed queue (15,000 calls/s at 47.8 µs of
/// CPU each, in a run of session 13).
const PROTECTED_LIMIT: &str = r#"{"name":"fixed","limit":1024}"#;

/// A target of scenario `overhead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverheadTarget {
    /// No proxy: the clients call the workers.
    Direct,
    /// The layer-4 relay ([`relay`]), the floor of a proxy's cost.
    TcpRelay,
    /// The gateway.
    Switchyard,
    /// The gateway with `--rpc-metrics`: every call measured (the cost of the telemetry layer's
    /// metrics against `switchyard`).
    SwitchyardRpcMetrics,
    /// The gateway with the overload layers and the metrics on (`--shed --limit` with a fixed
    /// limit of 1,024, `--rpc-metrics`): the protected stack's cost against `switchyard`.
    SwitchyardProtected,
    /// nginx with `grpc_pass`.
    Nginx,
    /// HAProxy in HTTP/2 mode.
    Haproxy,
}

impl OverheadTarget {
    /// Every target, in the order a run takes them by default.
    pub const ALL: [OverheadTarget; 7] = [
        Self::Direct,
        Self::TcpRelay,
        Self::Switchyard,
        Self::SwitchyardRpcMetrics,
        Self::SwitchyardProtected,
        Self::Nginx,
        Self::Haproxy,
    ];

    /// The target's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::TcpRelay => "tcp-relay",
            Self::Switchyard => "switchyard",
            Self::SwitchyardRpcMetrics => "switchyard-rpc-metrics",
            Self::SwitchyardProtected => "switchyard-protected",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
        }
    }
}

impl BenchArgs {
    /// The targets of scenario `overhead` to run, in order, each once.
    pub fn overhead_targets(&self) -> Result<Vec<OverheadTarget>, BenchError> {
        let Some(chosen) = &self.targets else { return Ok(OverheadTarget::ALL.to_vec()) };
        let mut targets = Vec::new();
        for &target in chosen {
            if targets.contains(&target) {
                return Err(BenchError::Invalid(format!("--targets names {} twice", target.name())));
            }
            targets.push(target);
        }
        if targets.is_empty() {
            return Err(BenchError::Invalid("--targets names no target".into()));
        }
        Ok(targets)
    }

    /// The seconds of load before the measured window: `--warmup`, or the scenario's default
    /// ([`WARMUP_S`]; `faults` [`faults::WARMUP_S`]).
    pub fn warmup_s(&self) -> f64 {
        self.warmup.unwrap_or(match self.scenario {
            #[cfg(unix)]
            Scenario::Faults => faults::WARMUP_S,
            _ => WARMUP_S,
        })
    }

    /// The threads each proxy runs.
    pub fn proxy_threads(&self) -> usize {
        self.proxy_threads
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, std::num::NonZeroUsize::get)
    }
}

/// The gateway's command line for a bench: `workers` as its backends, with `policy` and `threads`.
pub(crate) fn gateway_args(
    workers: &[String],
    policy: switchyard_balance::PolicyKind,
    threads: usize,
) -> Vec<String> {
    let mut args: Vec<String> =
        ["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"].map(String::from).into();
    for address in workers {
        args.extend(["--backend".to_string(), format!("http://{address}")]);
    }
    args.extend(["--policy".to_string(), policy.name().to_string()]);
    args.extend(["--threads".to_string(), threads.to_string()]);
    args
}

/// The options that make `switchyard worker` a classic server (the parallel kind) of `parallel`
/// slots at `service_ms` a request.
pub(crate) fn parallel_worker_args(parallel: u32, service_ms: f64) -> Vec<String> {
    [
        "--model",
        "sim-llm",
        "--kind",
        "parallel",
        "--parallel",
        &parallel.to_string(),
        "--service-ms",
        &service_ms.to_string(),
    ]
    .map(String::from)
    .into()
}

/// The relay's command line for a bench: `workers` as its backends, on `threads` threads.
fn relay_args(workers: &[String], threads: usize) -> Vec<String> {
    let mut args: Vec<String> = ["relay", "--listen", "127.0.0.1:0"].map(String::from).into();
    for address in workers {
        args.extend(["--backend".to_string(), address.clone()]);
    }
    args.extend(["--threads".to_string(), threads.to_string()]);
    args
}

/// What can go wrong in a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// nginx or HAProxy is not installed.
    #[error("{0}")]
    MissingPeers(String),
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A file or socket operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A child process failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A target could not be set up or reached.
    #[error("{0}")]
    Setup(String),
    /// Scenario `cost` with `--baseline`: a figure grew past the tolerance (the whole summary).
    #[error("{0}")]
    CostGrew(String),
}

/// A latency summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// What one target measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetResult {
    /// `direct`, `tcp-relay`, `switchyard`, `nginx` or `haproxy`.
    pub target: String,
    /// Calls answered in the window.
    pub requests: u64,
    /// Calls failed in the window.
    pub errors: u64,
    /// Calls answered per second.
    pub rps: f64,
    /// Latency of the answered calls.
    pub latency_ms: LatencyMs,
    /// The proxy's CPU time per answered call, in µs (none for `direct`).
    pub cpu_us_per_request: Option<f64>,
    /// The user-mode part of `cpu_us_per_request`: the proxy's own code and libraries.
    pub cpu_user_us_per_request: Option<f64>,
    /// The kernel part of `cpu_us_per_request`: system calls, and on loopback the receiving side
    /// of the segments the proxy sends.
    pub cpu_system_us_per_request: Option<f64>,
    /// `rps` over the better of nginx's and HAProxy's (0 when neither ran).
    pub rps_ratio_to_best_peer: f64,
}

/// The report of scenario `overhead`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverheadReport {
    /// The scenario.
    pub scenario: String,
    /// Concurrent clients.
    pub clients: usize,
    /// HTTP/2 connections per target.
    pub connections: usize,
    /// Measured seconds per target.
    pub duration_s: f64,
    /// The gRPC call the clients send.
    pub call: String,
    /// The gateway's policy.
    pub gateway_policy: String,
    /// nginx's and HAProxy's balancing.
    pub peer_balance: String,
    /// Threads (nginx: worker processes) of each proxy.
    pub proxy_threads: usize,
    /// Clock ticks per second used to convert the CPU accounting.
    pub clock_ticks_per_s: f64,
    /// One entry per target, in the order run.
    pub results: Vec<TargetResult>,
}

impl OverheadReport {
    /// The results as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new([
            "target",
            "req/s",
            "× best peer",
            "mean ms",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "CPU µs/req",
            "user",
            "system",
            "errors",
        ]);
        // Without nginx or HAProxy in the run there is no peer to compare with.
        let has_peer = self.results.iter().any(|r| r.target == "nginx" || r.target == "haproxy");
        for r in &self.results {
            table.row([
                r.target.clone(),
                format!("{:.0}", r.rps),
                if has_peer { format!("{:.2}", r.rps_ratio_to_best_peer) } else { "-".to_string() },
                format!("{:.3}", r.latency_ms.mean),
                format!("{:.3}", r.latency_ms.p50),
                format!("{:.3}", r.latency_ms.p90),
                format!("{:.3}", r.latency_ms.p99),
                one_decimal(r.cpu_us_per_request),
                one_decimal(r.cpu_user_us_per_request),
                one_decimal(r.cpu_system_us_per_request),
                r.errors.to_string(),
            ]);
        }
        table
    }

    fn find(&self, target: &str) -> Option<&TargetResult> {
        self.results.iter().find(|r| r.target == target)
    }

    /// The table and how the gateway stands against the issue's targets.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "bench {}: {} clients over {} connections, {} s per target, {} calls; gateway {}, peers {}; \
             {} threads per proxy\n\n{}",
            self.scenario,
            self.clients,
            self.connections,
            self.duration_s,
            self.call,
            self.gateway_policy,
            self.peer_balance,
            self.proxy_threads,
            self.table()
        );
        let (Some(direct), Some(gw), Some(nginx), Some(haproxy)) =
            (self.find("direct"), self.find("switchyard"), self.find("nginx"), self.find("haproxy"))
        else {
            return text;
        };
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let added = |r: &TargetResult| r.latency_ms.p50 - direct.latency_ms.p50;
        let best_peer_added = added(nginx).min(added(haproxy));
        // The gateway's CPU per call over HAProxy's, measured in the same run.
        let cpu_ratio = |r: &TargetResult| match (r.cpu_us_per_request, haproxy.cpu_us_per_request) {
            (Some(cpu), Some(theirs)) if theirs > 0.0 => Some(cpu / theirs),
            _ => None,
        };
        let ratio_text = |ratio: Option<f64>, limit: f64| match ratio {
            Some(ratio) => format!("{ratio:.2}× ({})", verdict(ratio <= limit)),
            None => "- (not measured)".to_string(),
        };
        text.push_str(&format!(
            "\ntargets: gateway CPU ≤ 0.75× HAProxy's: {}; req/s ≥ 1.1× best peer: {:.2}× ({}); \
             p50 added over direct ≤ peers': {:.3} ms vs {:.3} ms ({})",
            ratio_text(cpu_ratio(gw), 0.75),
            gw.rps_ratio_to_best_peer,
            verdict(gw.rps_ratio_to_best_peer >= 1.1),
            added(gw),
            best_peer_added,
            verdict(added(gw) <= best_peer_added),
        ));
        if let Some(protected) = self.find("switchyard-protected") {
            text.push_str(&format!(
                "; protected (limit + shed + metrics) CPU ≤ 0.85× HAProxy's: {}",
                ratio_text(cpu_ratio(protected), 0.85)
            ));
        }
        text.push('\n');
        if let Some(relay) = self.find("tcp-relay") {
            text.push_str(&format!(
                "floor: a layer-4 relay that reads no HTTP/2 reached {:.2}× the best peer at {} µs of CPU \
                 per request ({} in the kernel)\n",
                relay.rps_ratio_to_best_peer,
                one_decimal(relay.cpu_us_per_request),
                one_decimal(relay.cpu_system_us_per_request),
            ));
        }
        text
    }
}

/// `value` with one decimal, `-` when there is none.
fn one_decimal(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// One target to load: where its clients connect, and the process whose CPU is its cost.
struct Target {
    name: &'static str,
    addresses: Vec<String>,
    pid: Option<u32>,
}

/// Stops `children` in turn, each with 20 s of grace; one that does not exit cleanly is a
/// warning, not an error.
pub(crate) async fn stop_children(children: impl IntoIterator<Item = ChildProcess>) {
    for child in children {
        let name = child.name().to_string();
        if let Err(e) = child.stop(Duration::from_secs(20)).await {
            eprintln!("bench: warning: {name}: {e}");
        }
    }
}

/// Failed calls by status as `CODE n, CODE n`, or `0` when there were none.
pub(crate) fn errors_text(errors: &std::collections::BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".to_string();
    }
    errors.iter().map(|(code, n)| format!("{code} {n}")).collect::<Vec<_>>().join(", ")
}

/// A proxy a scenario started in front of the workers: a gateway process or a peer.
pub(crate) enum Proxy {
    /// `switchyard gateway`.
    Gateway(ChildProcess),
    /// nginx or HAProxy.
    Peer(peers::Peer),
}

impl Proxy {
    /// Stops the proxy; a gateway that does not exit cleanly is a warning, not an error.
    pub(crate) async fn stop(self) {
        match self {
            Self::Gateway(child) => {
                if let Err(e) = child.stop(Duration::from_secs(20)).await {
                    eprintln!("bench: warning: {e}");
                }
            }
            Self::Peer(peer) => peer.stop().await,
        }
    }
}

/// The report of one bench run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BenchReport {
    /// Scenario `overhead`.
    Overhead(OverheadReport),
    /// Scenario `hetero` or `hetero-parallel`.
    Hetero(hetero::HeteroReport),
    /// Scenario `herd`.
    Herd(herd::HerdReport),
    /// Scenario `overload`.
    Overload(overload::OverloadReport),
    /// Scenario `prefix`.
    Prefix(prefix::PrefixBenchReport),
    /// Scenario `scale`.
    Scale(scale::ScaleReport),
    /// Scenario `cost`.
    Cost(cost_report::CostReport),
    /// Scenario `soak`.
    Soak(soak::SoakReport),
    /// Scenario `faults`.
    #[cfg(unix)]
    Faults(faults::FaultsReport),
}

impl BenchReport {
    /// The printed summary.
    pub fn summary(&self) -> String {
        match self {
            Self::Overhead(r) => r.summary(),
            Self::Hetero(r) => r.summary(),
            Self::Herd(r) => r.summary(),
            Self::Overload(r) => r.summary(),
            Self::Prefix(r) => r.summary(),
            Self::Scale(r) => r.summary(),
            Self::Cost(r) => r.summary(),
            Self::Soak(r) => r.summary(),
            #[cfg(unix)]
            Self::Faults(r) => r.summary(),
        }
    }

    /// The markdown report the scenario writes beside its JSON, if it writes one.
    pub fn markdown(&self) -> Option<String> {
        match self {
            Self::Herd(r) => Some(r.markdown()),
            Self::Prefix(r) => Some(r.markdown()),
            Self::Scale(r) => Some(r.markdown()),
            Self::Cost(r) => Some(r.markdown()),
            Self::Soak(r) => Some(r.markdown()),
            #[cfg(unix)]
            Self::Faults(r) => Some(r.markdown()),
            Self::Overhead(_) | Self::Hetero(_) | Self::Overload(_) => None,
        }
    }
}

/// Runs the scenario `args` names and writes its JSON report, if asked.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    if args.clients == 0 || args.connections == 0 {
        return Err(BenchError::Invalid("--clients and --connections must be at least 1".into()));
    }
    let warmup = args.warmup_s();
    if !(args.duration.is_finite() && args.duration > 0.0 && warmup.is_finite() && warmup >= 0.0) {
        return Err(BenchError::Invalid("--duration must be > 0 and --warmup ≥ 0 seconds".into()));
    }
    let policy = match (&args.policy, args.scenario) {
        (None, Scenario::Herd | Scenario::Faults) => switchyard_balance::PolicyKind::DEFAULT,
        (None, _) => switchyard_balance::PolicyKind::RoundRobin,
        (Some(name), Scenario::Overhead | Scenario::Herd | Scenario::Faults) => {
            name.parse().map_err(|e| BenchError::Invalid(format!("--policy: {e}")))?
        }
        (Some(_), _) => {
            return Err(BenchError::Invalid(
                "--policy is the gateway's in scenarios overhead, herd and faults".into(),
            ));
        }
    };
    if args.targets.is_some() && args.scenario != Scenario::Overhead {
        return Err(BenchError::Invalid("--targets chooses among the targets of scenario overhead".into()));
    }
    if args.configs.is_some() && !matches!(args.scenario, Scenario::Overload | Scenario::Cost) {
        return Err(BenchError::Invalid(
            "--configs chooses among the configurations of scenarios overload and cost".into(),
        ));
    }
    if args.baseline.is_some() && args.scenario != Scenario::Cost {
        return Err(BenchError::Invalid("--baseline compares a run of scenario cost".into()));
    }
    if args.profiles.is_some() && args.scenario != Scenario::Cost {
        return Err(BenchError::Invalid("--profiles keeps the callgrind dumps of scenario cost".into()));
    }
    if args.gateway_binary.is_some() && args.scenario != Scenario::Cost {
        return Err(BenchError::Invalid("--gateway-binary is the gateway of scenario cost".into()));
    }
    #[cfg(unix)]
    if args.faults.is_some() && args.scenario != Scenario::Faults {
        return Err(BenchError::Invalid("--faults chooses among the faults of scenario faults".into()));
    }
    if args.steps.is_some() && args.scenario != Scenario::Scale {
        return Err(BenchError::Invalid("--steps is the load of scenario scale".into()));
    }
    if args.restart_every.is_some() && args.scenario != Scenario::Soak {
        return Err(BenchError::Invalid("--restart-every is scenario soak's".into()));
    }
    if args.rate.is_some() && !matches!(args.scenario, Scenario::Soak | Scenario::Faults) {
        return Err(BenchError::Invalid("--rate is the load of scenarios faults and soak".into()));
    }
    let exe = std::env::current_exe().map_err(|e| BenchError::Io("current executable".into(), e))?;
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::Io(format!("create {}", dir.display()), e))?;
    let result = match args.scenario {
        Scenario::Overhead => overhead(args, policy, &exe, &dir).await.map(BenchReport::Overhead),
        Scenario::Hetero => match peers::require_peers() {
            Ok((nginx_exe, haproxy_exe)) => {
                hetero::run(args, &exe, &nginx_exe, &haproxy_exe, &dir).await.map(BenchReport::Hetero)
            }
            Err(e) => Err(e),
        },
        Scenario::HeteroParallel => match peers::require_peers() {
            Ok((nginx_exe, haproxy_exe)) => hetero_parallel::run(args, &exe, &nginx_exe, &haproxy_exe, &dir)
                .await
                .map(BenchReport::Hetero),
            Err(e) => Err(e),
        },
        Scenario::Herd => match peers::require_peers() {
            Ok((nginx_exe, haproxy_exe)) => {
                herd::run(args, policy, &exe, &nginx_exe, &haproxy_exe, &dir).await.map(BenchReport::Herd)
            }
            Err(e) => Err(e),
        },
        Scenario::Overload => overload::run(args, &exe).await.map(BenchReport::Overload),
        Scenario::Prefix => match peers::require(PeerKind::Nginx) {
            Ok(nginx_exe) => prefix::run(args, &exe, &nginx_exe, &dir).await.map(BenchReport::Prefix),
            Err(e) => Err(e),
        },
        Scenario::Scale => scale::run(args, &exe).await.map(BenchReport::Scale),
        Scenario::Cost => cost::run(args, &exe, &dir).await.map(BenchReport::Cost),
        Scenario::Soak => soak::run(args, &exe, &dir).await.map(BenchReport::Soak),
        #[cfg(unix)]
        Scenario::Faults => faults::run(args, policy, &exe, &dir).await.map(BenchReport::Faults),
        #[cfg(not(unix))]
        Scenario::Faults => Err(BenchError::Invalid("scenario faults needs Unix signals".into())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if let Some(path) = &args.json {
        write_json(path, &report).map_err(|e| BenchError::Io(format!("write {}", path.display()), e))?;
        // Scenarios `herd`, `prefix`, `scale`, `cost` and `soak` write their summary beside the
        // Scenarios `herd`, `prefix`, `scale`, `cost` and `faults` write their summary beside the
        // JSON, as markdown.
        if let Some(text) = report.markdown() {
            let md = path.with_extension("md");
            std::fs::write(&md, text).map_err(|e| BenchError::Io(format!("write {}", md.display()), e))?;
        }
    }
    // The figures are written either way; a run that grew past its baseline then fails.
    if let BenchReport::Cost(cost) = &report
        && cost.grew()
    {
        return Err(BenchError::CostGrew(cost.summary()));
    }
    Ok(report)
}

/// Starts `switchyard worker` number `i` at `speed`: the process and its gRPC address.
pub(crate) async fn start_worker(
    exe: &Path,
    i: usize,
    speed: f64,
) -> Result<(ChildProcess, String), BenchError> {
    let (child, mut logged) = start_sim_worker(exe, i, speed, false).await?;
    Ok((child, logged.remove(0)))
}

/// Starts `switchyard worker` number `i` at `speed` with `GET /metrics` on a port of its own:
/// the process, its gRPC address and its metrics address.
pub(crate) async fn start_metered_worker(
    exe: &Path,
    i: usize,
    speed: f64,
) -> Result<(ChildProcess, String, String), BenchError> {
    let (child, mut logged) = start_sim_worker(exe, i, speed, true).await?;
    let metrics = logged.pop().unwrap_or_default();
    Ok((child, logged.remove(0), metrics))
}

/// Starts a worker of the LLM kind; returns the addresses it logged (gRPC, then metrics when
/// `metrics`).
async fn start_sim_worker(
    exe: &Path,
    i: usize,
    speed: f64,
    metrics: bool,
) -> Result<(ChildProcess, Vec<String>), BenchError> {
    let speed = speed.to_string();
    let mut args: Vec<String> =
        ["worker", "--listen", "127.0.0.1:0", "--speed", &speed, "--model", "sim-llm"]
            .map(String::from)
            .into();
    let mut phrases = vec!["worker serving on "];
    if metrics {
        args.extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
        phrases.push("metrics serving on ");
    }
    Ok(ChildProcess::start(&format!("worker-{i}"), exe, &args, &phrases, START_TIMEOUT).await?)
}

async fn overhead(
    args: &BenchArgs,
    policy: switchyard_balance::PolicyKind,
    exe: &Path,
    dir: &Path,
) -> Result<OverheadReport, BenchError> {
    let chosen = args.overhead_targets()?;
    let wants = |t: OverheadTarget| chosen.contains(&t);
    // Before anything starts: a missing peer fails the run at once, naming the install script.
    let nginx_exe = if wants(OverheadTarget::Nginx) { Some(peers::require(PeerKind::Nginx)?) } else { None };
    let haproxy_exe =
        if wants(OverheadTarget::Haproxy) { Some(peers::require(PeerKind::Haproxy)?) } else { None };

    let workers = vec![start_worker(exe, 0, 1000.0).await?, start_worker(exe, 1, 1000.0).await?];
    let worker_addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
    let threads = args.proxy_threads();
    let balance = match args.peer_balance {
        PeerBalanceArg::RoundRobin => PeerBalance::RoundRobin,
        PeerBalanceArg::LeastConn => PeerBalance::LeastConn,
    };
    let mut children = Vec::new();
    let mut peers_started = Vec::new();
    let mut targets = Vec::new();
    for &target in &chosen {
        let (addresses, pid) = match target {
            OverheadTarget::Direct => (worker_addresses.clone(), None),
            OverheadTarget::TcpRelay
            | OverheadTarget::Switchyard
            | OverheadTarget::SwitchyardRpcMetrics
            | OverheadTarget::SwitchyardProtected => {
                let (child_args, log, needle) = if target == OverheadTarget::Switchyard {
                    (
                        gateway_args(&worker_addresses, policy, threads),
                        "gateway serving on ",
                        " gateway --listen",
                    )
                } else if target == OverheadTarget::SwitchyardRpcMetrics {
                    // `--rpc-metrics` first, so that the process is told apart from `switchyard`'s.
                    let mut args = gateway_args(&worker_addresses, policy, threads);
                    args.insert(1, "--rpc-metrics".to_string());
                    (args, "gateway serving on ", " gateway --rpc-metrics")
                } else if target == OverheadTarget::SwitchyardProtected {
                    // `--shed` first, so that the process is told apart from the others.
                    let mut args = gateway_args(&worker_addresses, policy, threads);
                    for (i, flag) in
                        ["--shed", "--limit", PROTECTED_LIMIT, "--rpc-metrics"].into_iter().enumerate()
                    {
                        args.insert(1 + i, flag.to_string());
                    }
                    (args, "gateway serving on ", " gateway --shed")
                } else {
                    (relay_args(&worker_addresses, threads), "relay serving on ", " relay --listen")
                };
                let (child, mut addresses) =
                    ChildProcess::start(target.name(), exe, &child_args, &[log], START_TIMEOUT).await?;
                children.push(child);
                (vec![addresses.remove(0)], cpu::child_with_arg(needle))
            }
            OverheadTarget::Nginx | OverheadTarget::Haproxy => {
                let (kind, program) = if target == OverheadTarget::Nginx {
                    (PeerKind::Nginx, &nginx_exe)
                } else {
                    (PeerKind::Haproxy, &haproxy_exe)
                };
                let program = program.as_ref().ok_or_else(|| {
                    BenchError::Setup(format!("{} was not looked up before the run", kind.program()))
                })?;
                let peer_dir = dir.join(kind.program());
                std::fs::create_dir_all(&peer_dir)
                    .map_err(|e| BenchError::Io(format!("create {}", peer_dir.display()), e))?;
                let peer =
                    peers::start(kind, program, balance, threads, &worker_addresses, &peer_dir).await?;
                let found = (vec![peer.address.clone()], cpu::child_with_arg(&peer.config));
                peers_started.push(peer);
                found
            }
        };
        if target != OverheadTarget::Direct && pid.is_none() {
            return Err(BenchError::Setup(format!("cannot find the process of {}", target.name())));
        }
        eprintln!("bench: {} on {}", target.name(), addresses.join(" "));
        targets.push(Target { name: target.name(), addresses, pid });
    }

    let ticks_per_s = cpu::ticks_per_second();
    let mut results = Vec::new();
    for target in &targets {
        results.push(measure(args, target, ticks_per_s).await?);
    }
    let best_peer = results
        .iter()
        .filter(|r| r.target == "nginx" || r.target == "haproxy")
        .map(|r| r.rps)
        .fold(0.0, f64::max);
    for r in &mut results {
        r.rps_ratio_to_best_peer = if best_peer > 0.0 { r.rps / best_peer } else { 0.0 };
    }

    for peer in peers_started {
        peer.stop().await;
    }
    for child in workers.into_iter().map(|(c, _)| c).chain(children) {
        let name = child.name().to_string();
        if let Err(e) = child.stop(Duration::from_secs(10)).await {
            eprintln!("bench: warning: {name}: {e}");
        }
    }
    Ok(OverheadReport {
        scenario: "overhead".into(),
        clients: args.clients,
        connections: args.connections,
        duration_s: args.duration,
        call: "inference.GRPCInferenceService/ServerLive".into(),
        gateway_policy: policy.name().to_string(),
        peer_balance: match balance {
            PeerBalance::RoundRobin => "round-robin".into(),
            PeerBalance::LeastConn => "least-conn".into(),
            PeerBalance::SessionHash => "session-hash".into(),
        },
        proxy_threads: threads,
        clock_ticks_per_s: ticks_per_s,
        results,
    })
}

async fn measure(args: &BenchArgs, target: &Target, ticks_per_s: f64) -> Result<TargetResult, BenchError> {
    eprintln!(
        "bench: {} ({} clients, {:.0} s warmup + {:.0} s)",
        target.name,
        args.clients,
        args.warmup_s(),
        args.duration
    );
    let channels = load::connect(&target.addresses, args.connections).await.map_err(BenchError::Setup)?;
    let start = Instant::now() + Duration::from_secs_f64(args.warmup_s());
    let end = start + Duration::from_secs_f64(args.duration);
    let pid = target.pid;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(start).await;
        let before = pid.map(cpu::tree_ticks);
        tokio::time::sleep_until(end).await;
        let after = pid.map(cpu::tree_ticks);
        before.zip(after).map(|(b, a)| a.since(b))
    });
    let mut measured = load::closed_loop(&channels, args.clients, start, end).await;
    let ticks = sampler.await.ok().flatten();
    let requests = measured.latencies_ms.len() as u64;
    let per_request = |ticks: Option<u64>| {
        ticks.filter(|_| requests > 0).map(|t| t as f64 * 1e6 / ticks_per_s / requests as f64)
    };
    let p = Percentiles::of(&mut measured.latencies_ms);
    Ok(TargetResult {
        target: target.name.to_string(),
        requests,
        errors: measured.errors,
        rps: requests as f64 / args.duration,
        latency_ms: LatencyMs { mean: p.mean, p50: p.p50, p90: p.p90, p99: p.p99 },
        cpu_us_per_request: per_request(ticks.map(cpu::Ticks::total)),
        cpu_user_us_per_request: per_request(ticks.map(|t| t.user)),
        cpu_system_us_per_request: per_request(ticks.map(|t| t.system)),
        rps_ratio_to_best_peer: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(target: &str, rps: f64, p50: f64, cpu: Option<f64>) -> TargetResult {
        TargetResult {
            target: target.into(),
            requests: 100,
            errors: 0,
            rps,
            latency_ms: LatencyMs { mean: p50, p50, p90: p50, p99: p50 },
            cpu_us_per_request: cpu,
            cpu_user_us_per_request: cpu.map(|c| c * 0.25),
            cpu_system_us_per_request: cpu.map(|c| c * 0.75),
            rps_ratio_to_best_peer: rps / 1000.0,
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(["bench"].iter().chain(args)).map(|cli| cli.bench)
    }

    #[test]
    fn targets_default_to_all_and_may_be_chosen_in_order_once_each() {
        let all = parse(&["overhead"]).map(|a| a.overhead_targets().ok());
        assert_eq!(all.ok().flatten(), Some(OverheadTarget::ALL.to_vec()));
        let some =
            parse(&["overhead", "--targets", "switchyard,tcp-relay"]).map(|a| a.overhead_targets().ok());
        assert_eq!(some.ok().flatten(), Some(vec![OverheadTarget::Switchyard, OverheadTarget::TcpRelay]));
        let twice = parse(&["overhead", "--targets", "nginx,nginx"]).map(|a| a.overhead_targets().err());
        assert!(matches!(twice, Ok(Some(BenchError::Invalid(m))) if m.contains("nginx twice")));
        assert!(parse(&["overhead", "--targets", "envoy"]).is_err(), "an unknown target is refused");
    }

    #[tokio::test]
    async fn a_gateway_binary_is_for_scenario_cost_and_must_exist() {
        let args = parse(&["overhead", "--gateway-binary", "/bin/true"]).unwrap_or_else(|e| panic!("{e}"));
        let err = run(&args).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--gateway-binary is the gateway of scenario cost"), "{err}");
        let args =
            parse(&["cost", "--gateway-binary", "/no/such/switchyard"]).unwrap_or_else(|e| panic!("{e}"));
        let err = run(&args).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--gateway-binary /no/such/switchyard: no such file"), "{err}");
    }

    #[tokio::test]
    async fn profiles_are_for_scenario_cost_and_a_policy_not_for_hetero() {
        let args = parse(&["overhead", "--profiles", "/tmp/p"]).unwrap_or_else(|e| panic!("{e}"));
        let err = run(&args).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--profiles keeps the callgrind dumps of scenario cost"), "{err}");
        let args = parse(&["hetero", "--policy", "round-robin"]).unwrap_or_else(|e| panic!("{e}"));
        let err = run(&args).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--policy is the gateway's in scenarios overhead, herd and faults"), "{err}");
        let args = parse(&["faults", "--policy", "no-such-policy"]).unwrap_or_else(|e| panic!("{e}"));
        let err = run(&args).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--policy: "), "faults takes a policy and names a bad one: {err}");
    }

    #[cfg(unix)]
    #[test]
    fn faults_warm_up_for_the_speeds_time_constant_unless_told() {
        let warmup = |args: &[&str]| parse(args).unwrap_or_else(|e| panic!("{e}")).warmup_s();
        assert_eq!(warmup(&["faults"]), faults::WARMUP_S);
        let speed_decay = switchyard_balance::TrackingConfig::default().speed_decay;
        assert_eq!(faults::WARMUP_S, speed_decay.as_secs_f64(), "one time constant of the speeds");
        assert_eq!(warmup(&["faults", "--warmup", "0.3"]), 0.3);
        assert_eq!(warmup(&["overhead"]), WARMUP_S);
        assert_eq!(warmup(&["overhead", "--warmup", "5"]), 5.0);
    }

    #[tokio::test]
    async fn targets_are_refused_for_hetero() {
        let args = parse(&["hetero", "--targets", "switchyard"]).unwrap_or_else(|e| panic!("{e}"));
        let err = run(&args).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--targets chooses among the targets of scenario overhead"), "{err}");
    }

    #[test]
    fn the_summary_judges_the_gateway_against_the_better_peer() {
        let report = OverheadReport {
            scenario: "overhead".into(),
            clients: 64,
            connections: 8,
            duration_s: 10.0,
            call: "ServerLive".into(),
            gateway_policy: "round-robin".into(),
            peer_balance: "round-robin".into(),
            proxy_threads: 2,
            clock_ticks_per_s: 100.0,
            results: vec![
                result("direct", 3000.0, 1.0, None),
                result("tcp-relay", 1600.0, 1.2, Some(4.0)),
                result("switchyard", 1400.0, 1.5, Some(6.0)),
                result("switchyard-protected", 1300.0, 1.6, Some(13.5)),
                result("nginx", 900.0, 2.0, Some(20.0)),
                result("haproxy", 1000.0, 1.8, Some(15.0)),
            ],
        };
        let text = report.summary();
        assert!(text.contains("gateway CPU ≤ 0.75× HAProxy's: 0.40× (met)"), "{text}");
        assert!(text.contains("req/s ≥ 1.1× best peer: 1.40× (met)"), "{text}");
        assert!(text.contains("0.500 ms vs 0.800 ms (met)"), "{text}");
        assert!(text.contains("CPU ≤ 0.85× HAProxy's: 0.90× (NOT met)"), "{text}");
        assert!(
            text.contains(
                "floor: a layer-4 relay that reads no HTTP/2 reached 1.60× the best peer at 4.0 µs"
            ),
            "{text}"
        );
        assert!(text.contains("(3.0 in the kernel)"), "{text}");
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["results"][0]["cpu_us_per_request"], serde_json::Value::Null);
        assert_eq!(json["results"][2]["latency_ms"]["p50"], 1.5);
        assert_eq!(json["results"][2]["cpu_system_us_per_request"], 4.5);
    }
}
