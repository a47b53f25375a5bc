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
//! the last, as the worker's ORCA trailer would carry it. `max_mean_load` is the largest
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
//! - `prefix`: eight replicas with prefix caches on the Mooncake conversation trace, the hash
//!   and prefix-aware policies against the load-based ones, and a skewed variant; see
//!   [`run_prefix`].

mod balanced;
mod capacity;
mod cluster;
mod hetero;
mod ideal;
mod prefix;
mod replica;
mod report;

use std::path::PathBuf;

pub use capacity::{CAPACITY_REQUESTS, CapacityError, measure_capacity};
pub use cluster::ReplicaSpec;
pub use hetero::{
    DEFAULT_REQUESTS, HeteroOptions, NO_SIZES, lab_policies, replicas as hetero_replicas, run_hetero,
};
pub use prefix::{
    KV_CAPACITY_TOKENS, PREFIX_POLICIES, PREFIX_REQUESTS, PrefixOptions, PrefixReport, PrefixResult,
    PrefixVariant, SYSTEM_PROMPT_BLOCKS, run_prefix,
};
pub use replica::{Served, SimCompletion, SimReplica, TrackedGeneration};
pub use report::{LabReport, LatencySummary, PolicyResult, ReplicaInfo, RequestOutcome, RunRecord};

/// The scenarios the lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Eight replicas of unequal speed (0.25, 0.5, six of 1.0) at 70 % of their capacity.
    Hetero,
    /// Eight replicas with prefix caches on the Mooncake conversation trace (and a skewed
    /// variant), the hash and prefix-aware policies against the load-based ones.
    Prefix,
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
    /// Requests to replay (the first ones of the trace); by default 6,000 for `hetero`, 4,000
    /// for `prefix`.
    #[arg(long)]
    pub requests: Option<usize>,
    /// Offered load, as a share of the cluster's measured capacity.
    #[arg(long, default_value_t = 0.7)]
    pub load: f64,
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
pub fn run(args: &LabArgs) -> Result<LabRun, LabError> {
    crate::register_policies();
    let report = match args.scenario {
        Scenario::Hetero => LabRun::Hetero(run_hetero(&HeteroOptions {
            seed: args.seed,
            requests: args.requests.unwrap_or(DEFAULT_REQUESTS),
            load: args.load,
            trace: args.trace.clone(),
        })?),
        Scenario::Prefix => LabRun::Prefix(run_prefix(&PrefixOptions {
            seed: args.seed,
            requests: args.requests.unwrap_or(PREFIX_REQUESTS),
            load: args.load,
            trace: args.trace.clone(),
        })?),
    };
    if let Some(path) = &args.json {
        let written = match &report {
            LabRun::Hetero(r) => crate::report::write_json(path, r),
            LabRun::Prefix(r) => crate::report::write_json(path, r),
        };
        written.map_err(|source| LabError::Write { path: path.clone(), source })?;
    }
    Ok(report)
}

/// What a scenario reports.
#[derive(Debug, Clone)]
pub enum LabRun {
    /// `hetero`'s report.
    Hetero(LabReport),
    /// `prefix`'s report.
    Prefix(PrefixReport),
}

impl LabRun {
    /// A terminal summary of the report.
    pub fn summary(&self) -> String {
        match self {
            LabRun::Hetero(r) => r.summary(),
            LabRun::Prefix(r) => r.summary(),
        }
    }
}
