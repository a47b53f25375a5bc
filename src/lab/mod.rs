//! The policy lab: Switchyard's real balancer against simulated replicas, in one process, under
//! tokio's paused clock.
//!
//! `switchyard lab <scenario> [--json FILE] [--trace FILE] [--seed N] [--requests N] [--load F]`
//! runs a scenario: a set of simulated replicas ([`switchyard_sim::EngineHandle`]) and a
//! workload replayed against them through [`switchyard_balance::Balance`] with each policy of
//! the policy registry in turn (the built-ins of
//! [`PolicyKind::ALL`](switchyard_balance::PolicyKind::ALL), then any other registered), and through an **ideal**
//! central dispatcher that knows every request's size and every replica's true state (see *The ideal*
//! below). It prints a table and writes a JSON [`LabReport`]: per policy the
//! time to first token (TTFT) and end-to-end latency (mean, p50, p90, p99, from arrival), errors,
//! the load imbalance, each replica's share of the requests, and the p99 TTFT relative to the
//! ideal.
//!
//! # Why a lab
//!
//! Comparing policies on real processes mixes the policy with machine noise, and takes as long
//! as the trace. Here each run is a fresh current-thread runtime started with
//! `start_paused(true)`: when every task waits, virtual time jumps to the next timer (the next
//! arrival, the end of an engine step), so an hour of serving runs in seconds of wall time.
//!
//! # Determinism
//!
//! The same seed gives the same report, byte for byte, because the code makes it so: one
//! thread; every random choice from the seed (`PolicyKind::build(seed)`); no decision or output
//! that depends on `HashMap` order (replicas are a `Vec`, shares a `BTreeMap`); time only from
//! `tokio::time`. A change of behaviour in a policy therefore shows as a diff of the committed
//! report (`reports/lab/`).
//!
//! # What is measured
//!
//! A request's TTFT and latency run from its arrival (so a central queue's waiting counts) to its
//! first and last token. The balancer sees a request as in flight from its pick to its last token
//! ([`SimCompletion`]), takes its latency sample at the first token, and records the replica's
//! load report ([`EngineHandle::reported_load`](switchyard_sim::EngineHandle::reported_load)) at
//! the last, as the worker's ORCA trailer would carry it, and, from an LLM engine, when it
//! admits the request, as the headers of the worker's `ModelStreamInfer` response carry it. `max_mean_load` is the largest
//! replica's time-averaged in-flight count over the mean of all replicas'.
//!
//! # The ideal
//!
//! One central FIFO queue; the head goes, as soon as some replica can admit it without queueing,
//! to the replica with the smallest predicted TTFT, predicted by replaying the engine's own cost
//! model on that replica's exact state. The rule and its limits are documented in the `ideal`
//! module (`src/lab/ideal.rs`).
//!
//! # Scenarios
//!
//! - `hetero`: eight replicas of unequal speed (0.25, 0.5 and six of 1.0) at 70 % of their
//!   measured capacity on the Azure conversation trace; see [`run_hetero`].
//! - `overload`: four replicas under offered load stepping from 0.5 to 3 times their capacity,
//!   with priorities and deadlines, unprotected and protected by limits and shedding; see
//!   [`run_overload`]. `--plot FILE` draws the limits over time.
//! - `hetero-parallel`: four classic servers of 8 parallel slots at 10 ms a request, one four
//!   times slower, at 65 % of their capacity; the ideal is earliest finish time on an exact slot
//!   ledger; see [`run_hetero_parallel`].
//! - `prefix`: eight replicas with prefix caches on the Mooncake conversation trace, the hash
//!   and prefix-aware policies against the load-based ones, and a skewed variant; see
//!   [`run_prefix`].
//! - `burst`: autoscalers (Switchyard's, HPA, KPA, llm-d, a fixed pool sized for the peak, and a
//!   clairvoyant bound that knows the arrivals) on the
//!   Azure trace stretched to swing 1× to 4.5× a replica's capacity, a 1× → 5× step, a spike and
//!   steady noisy load, with a 30 s cold start (`--cold-start`); see [`run_burst`]. `--plot
//!   FILE` draws replicas and p99 TTFT over time, one PNG per workload.
//! - `herd`: K independent balancers (1, 2, 8, 32), each with its own board, over `hetero`'s one
//!   set of replicas, the arrivals split evenly or skewed; TTFT and a herd index per K, split
//!   and policy; see [`run_herd`].

mod balanced;
pub(crate) mod burst;
mod burst_clairvoyant;
mod burst_plot;
mod burst_pool;
mod capacity;
mod cluster;
mod herd;
mod hetero;
mod hetero_parallel;
mod ideal;
mod ideal_parallel;
mod kv_delivery;
mod overload;
pub(crate) mod overload_plot;
mod prefix;
mod replica;
mod report;

use std::path::PathBuf;

pub use burst::{
    BURST_AUTOSCALERS, BURST_BOUNDS, BurstOptions, BurstReport, BurstResult, WorkloadInfo, run_burst,
};
pub use capacity::{CAPACITY_REQUESTS, CapacityError, measure_capacity};
pub use cluster::ReplicaSpec;
pub use herd::{HERD_BALANCERS, HerdOptions, HerdReport, HerdRow, Split, herd_index, run_herd};
pub use hetero::{
    DEFAULT_REQUESTS, HeteroOptions, NO_SIZES, lab_policies, replicas as hetero_replicas, run_hetero,
};
pub use hetero_parallel::{
    DEFAULT_PARALLEL_DELAY, DEFAULT_PARALLEL_LOAD, DEFAULT_PARALLEL_REQUESTS, HeteroParallelOptions,
    PARALLEL_SLOTS, REAL_SUFFIX, SERVICE_TIME, parallel_replicas, run_hetero_parallel,
};
pub use overload::{
    ALGORITHMS as OVERLOAD_ALGORITHMS, ByPriority, ConfigResult, DEADLINE_BASE, DEADLINE_FACTOR,
    GenerationPermit, HAND_TUNED_LIMIT, HAND_TUNED_SHED_LIMIT, LOAD_STEPS, OverloadOptions, OverloadReport,
    PACE, Paced, PacedGeneration, PermitGeneration, StepResult, TargetCheck, WINDOWED as OVERLOAD_WINDOWED,
    deadline_of, max_tokens_of, replicas as overload_replicas, run_overload,
};
pub(crate) use prefix::upper_bound;
pub use prefix::{
    EVENT_DELAY, KV_CAPACITY_TOKENS, PRECISE_DELAYED, PREFIX_POLICIES, PREFIX_REQUESTS, PrefixOptions,
    PrefixReport, PrefixResult, PrefixVariant, SYSTEM_PROMPT_BLOCKS, run_prefix,
};
pub use replica::{Served, SimCompletion, SimReplica, TrackedGeneration};
pub use report::{LabReport, LatencySummary, PolicyResult, ReplicaInfo, RequestOutcome, RunRecord};

/// The scenarios the lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Eight replicas of unequal speed (0.25, 0.5, six of 1.0) at 70 % of their capacity.
    Hetero,
    /// Four replicas under load stepping from 0.5× to 3× their capacity, with and without
    /// limits and shedding.
    Overload,
    /// Four classic servers (8 parallel slots, 10 ms a request), one four times slower, at 65 %.
    HeteroParallel,
    /// Eight replicas with prefix caches on the Mooncake conversation trace (and a skewed
    /// variant), the hash and prefix-aware policies against the load-based ones.
    Prefix,
    /// Autoscalers (Switchyard's, HPA, KPA, llm-d, a fixed pool sized for the peak) under load
    /// swinging from 1× to 5× a replica's capacity, with a replica cold start.
    Burst,
    /// K independent balancers (1, 2, 8, 32) over `hetero`'s replicas, arrivals split evenly
    /// or skewed: does local load information herd?
    Herd,
}

/// Flags of `switchyard lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// The scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Write the report to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replay this trace (Azure LLM CSV, or Mooncake JSONL) instead of the bundled Azure
    /// conversation trace.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Seed of the policies' random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests to replay (the first ones of the trace) [default: hetero and herd 6000,
    /// hetero-parallel 20000, prefix 4000].
    #[arg(long)]
    pub requests: Option<usize>,
    /// Offered load, as a share of the cluster's measured capacity [default: hetero and herd 0.7,
    /// hetero-parallel 0.65].
    #[arg(long)]
    pub load: Option<f64>,
    /// `overload`: virtual seconds per load step.
    #[arg(long, default_value_t = 20.0)]
    pub step_seconds: f64,
    /// `overload`: draw the limit over time into this PNG (`burst`: one PNG per workload,
    /// named after this one).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// `burst`: a replica's cold start.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub cold_start: std::time::Duration,
    /// `hetero-parallel`: the mean delay before a request reaches its replica in the rows run as
    /// over real processes (suffixed "(sizes, delays)"); 0 leaves them out.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub delay: std::time::Duration,
    /// `herd`: the numbers of balancers to run, comma-separated [default: 1,2,8,32].
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub balancers: Option<Vec<usize>>,
    /// `herd`: the policies to run, by name, comma-separated [default: every registered one].
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub policies: Option<Vec<String>>,
    /// `herd`: every balancer also gets every replica's load report at this interval, out of
    /// band (as `switchyard gateway --load-reports` subscribes to the workers) [default: only
    /// the reports in the trailers of its own responses].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "INTERVAL")]
    pub load_reports: Option<std::time::Duration>,
}

/// What a lab run reports: a policy comparison, or the overload scenario's figures.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum LabOutput {
    /// Every policy against the ideal (`hetero`).
    Policies(LabReport),
    /// Each protection under stepped overload (`overload`).
    Overload(OverloadReport),
    /// Prefix-cache hit rates and latencies, base and skewed (`prefix`).
    Prefix(PrefixReport),
    /// Autoscalers under swinging load (`burst`).
    Burst(BurstReport),
    /// Many balancers over one fleet (`herd`).
    Herd(HerdReport),
}

impl LabOutput {
    /// A terminal summary.
    pub fn summary(&self) -> String {
        match self {
            LabOutput::Policies(report) => report.summary(),
            LabOutput::Overload(report) => report.summary(),
            LabOutput::Prefix(report) => report.summary(),
            LabOutput::Burst(report) => report.summary(),
            LabOutput::Herd(report) => report.summary(),
        }
    }
}

impl From<LabReport> for LabOutput {
    fn from(report: LabReport) -> Self {
        LabOutput::Policies(report)
    }
}

/// Why a lab run failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The trace could not be read.
    #[error("trace: {0}")]
    Trace(#[from] switchyard_sim::TraceError),
    /// A replica's settings are invalid.
    #[error("replica settings: {0}")]
    Config(#[from] switchyard_sim::ConfigError),
    /// The replica capacity could not be measured.
    #[error("capacity: {0}")]
    Capacity(#[from] CapacityError),
    /// A setting of the run cannot work.
    #[error("{0}")]
    Setting(String),
    /// A policy could not be built from the registry.
    #[error("policy: {0}")]
    Policy(#[from] switchyard_balance::PolicyError),
    /// The runtime could not be built.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The report could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The report's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs the scenario `args` names and writes its report where `--json` says. Blocking: it
/// builds its own runtimes, so call it outside any tokio runtime (or in `spawn_blocking`).
pub fn run(args: &LabArgs) -> Result<LabOutput, LabError> {
    crate::register_policies();
    let report: LabOutput = match args.scenario {
        Scenario::Hetero => run_hetero(&HeteroOptions {
            seed: args.seed,
            requests: args.requests.unwrap_or(DEFAULT_REQUESTS),
            load: args.load.unwrap_or(0.7),
            trace: args.trace.clone(),
        })?
        .into(),
        Scenario::Overload => LabOutput::Overload(run_overload(&OverloadOptions {
            seed: args.seed,
            step_seconds: args.step_seconds,
            trace: args.trace.clone(),
            plot: args.plot.clone(),
        })?),
        Scenario::HeteroParallel => {
            if args.trace.is_some() {
                return Err(LabError::Setting(
                    "hetero-parallel replays synthetic arrivals, not a trace".into(),
                ));
            }
            run_hetero_parallel(&HeteroParallelOptions {
                seed: args.seed,
                requests: args.requests.unwrap_or(DEFAULT_PARALLEL_REQUESTS),
                load: args.load.unwrap_or(DEFAULT_PARALLEL_LOAD),
                delay: args.delay,
            })?
            .into()
        }
        Scenario::Prefix => LabOutput::Prefix(run_prefix(&PrefixOptions {
            seed: args.seed,
            requests: args.requests.unwrap_or(PREFIX_REQUESTS),
            load: args.load.unwrap_or(0.7),
            trace: args.trace.clone(),
        })?),
        Scenario::Burst => LabOutput::Burst(run_burst(&BurstOptions {
            seed: args.seed,
            trace: args.trace.clone(),
            cold_start: args.cold_start,
            plot: args.plot.clone(),
            ..BurstOptions::default()
        })?),
        Scenario::Herd => LabOutput::Herd(run_herd(&HerdOptions {
            seed: args.seed,
            requests: args.requests.unwrap_or(DEFAULT_REQUESTS),
            load: args.load.unwrap_or(0.7),
            trace: args.trace.clone(),
            balancers: args.balancers.clone().unwrap_or_else(|| HERD_BALANCERS.to_vec()),
            policies: args.policies.clone().unwrap_or_default(),
            load_reports: args.load_reports,
        })?),
    };
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)
            .map_err(|source| LabError::Write { path: path.clone(), source })?;
    }
    Ok(report)
}
