//! The `hetero` scenario: one cluster of unequal GPUs.
//!
//! Eight replicas of Llama 3.1 8B, six on H100s (speed 1.0), one on an A100 (0.5) and one on an
//! older or shared GPU (0.25): 6.75 H100s of capacity in all. A policy that spreads requests
//! evenly overloads the slow pair (each gets 1/8 of the load with 1/27 and 2/27 of the
//! capacity); one that reacts to latency or queueing moves load to the fast six.
//!
//! The workload is the first `requests` requests of the trace (the bundled Azure LLM 2023
//! conversation trace by default), time-compressed so that its mean arrival rate is
//! `load × capacity` (70 % by default). The capacity is measured, not assumed:
//! [`measure_capacity`] runs the trace's request mix through one speed-1.0 replica in a saturated
//! closed loop, and the cluster's capacity is that rate times the sum of the speeds (every step of
//! a replica takes `1 / speed` as long, so a replica's capacity scales with its speed).

use std::path::PathBuf;

use switchyard_balance::{PolicyKind, PolicySpec, policy};
use switchyard_sim::{EngineConfig, TraceRecord, trace};

use super::LabError;
use super::balanced::{Sizes, run_policy};
use super::capacity::measure_capacity;
use super::cluster::{ReplicaSpec, run_paused};
use super::ideal::run_ideal;
use super::report::{LabReport, PolicyResult, ReplicaInfo};

/// The report's name for least response time over requests that carry no size.
pub const NO_SIZES: &str = "least-response-time (no sizes)";

/// Settings of a `hetero` run.
#[derive(Debug, Clone, PartialEq)]
pub struct HeteroOptions {
    /// Seed of the policies' random choices.
    pub seed: u64,
    /// Requests to replay: the first ones of the trace.
    pub requests: usize,
    /// Offered load as a share of the cluster's measured capacity.
    pub load: f64,
    /// A trace file (Azure CSV or Mooncake JSONL) instead of the bundled Azure trace.
    pub trace: Option<PathBuf>,
}

impl Default for HeteroOptions {
    fn default() -> Self {
        Self { seed: 1, requests: DEFAULT_REQUESTS, load: 0.7, trace: None }
    }
}

/// Requests replayed by default: about a minute of arrivals at 70 % load, some 60 requests above
/// the p99 of TTFT.
pub const DEFAULT_REQUESTS: usize = 6000;

/// The scenario's replicas: `replica-0` at speed 0.25, `replica-1` at 0.5, `replica-2` to
/// `replica-7` at 1.0, otherwise [`EngineConfig::default`].
pub fn replicas() -> Vec<ReplicaSpec> {
    let speeds = [0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    speeds.iter().enumerate().map(|(i, &s)| ReplicaSpec::with_speed(format!("replica-{i}"), s)).collect()
}

fn read_workload(options: &HeteroOptions) -> Result<(Vec<TraceRecord>, String), LabError> {
    match &options.trace {
        Some(path) => Ok((trace::read_trace(path)?, path.display().to_string())),
        None => Ok((crate::traces::azure_conv()?, "azure_llm_2023_conv.csv (bundled)".to_string())),
    }
}

/// The policies the lab compares: every one in the policy registry, the built-ins first in the
/// order of [`PolicyKind::ALL`], then the others registered by name; except
/// `prefix-aware-precise`, which routes on the replicas' KV-event streams: built from the
/// registry it has none and is `prefix-aware` under another name (the `prefix` scenario runs it
/// with its streams).
pub fn lab_policies() -> Vec<PolicySpec> {
    let mut specs: Vec<PolicySpec> = PolicyKind::ALL.iter().map(|k| k.spec()).collect();
    for name in policy::registry().names() {
        if name != "prefix-aware-precise" && !specs.iter().any(|s| s.name() == name) {
            specs.push(PolicySpec::named(name));
        }
    }
    specs
}

/// What a run over `hetero`'s cluster needs before its first policy: the workload, the measured
/// capacity and the time scale that offers `load` of it. Shared with the `herd` scenario.
pub(crate) struct Setup {
    /// The whole trace; the window is its first `n` records.
    pub(crate) records: Vec<TraceRecord>,
    /// Requests in the window.
    pub(crate) n: usize,
    /// Where the workload came from.
    pub(crate) trace: String,
    /// Factor applied to the trace's arrival times.
    pub(crate) time_scale: f64,
    /// Requests per second one speed-1.0 replica sustains, as measured.
    pub(crate) replica_capacity_rps: f64,
    /// Requests per second the cluster sustains.
    pub(crate) capacity_rps: f64,
    /// Requests per second offered.
    pub(crate) offered_rps: f64,
    /// The replicas ([`replicas`]).
    pub(crate) replicas: Vec<ReplicaSpec>,
}

impl Setup {
    /// Reads the workload and measures the capacity (checking the options on the way).
    pub(crate) fn new(options: &HeteroOptions) -> Result<Self, LabError> {
        if !(options.load.is_finite() && options.load > 0.0) {
            return Err(LabError::Setting(format!("load must be > 0, got {}", options.load)));
        }
        let (records, trace) = read_workload(options)?;
        let n = options.requests.min(records.len());
        if n < 2 {
            return Err(LabError::Setting(format!(
                "the window needs at least 2 requests, got {n} (--requests {}, {} in the trace)",
                options.requests,
                records.len()
            )));
        }
        let window = &records[..n];
        let span = window[n - 1].at.saturating_sub(window[0].at).as_secs_f64();
        if span <= 0.0 {
            return Err(LabError::Setting("the window's requests all arrive at once".to_string()));
        }
        let trace_rps = (n - 1) as f64 / span;

        let replicas = replicas();
        let replica_capacity_rps = run_paused(measure_capacity(&EngineConfig::default(), &records))??;
        let total_speed: f64 = replicas.iter().map(|r| r.config.speed).sum();
        let capacity_rps = replica_capacity_rps * total_speed;
        let offered_rps = options.load * capacity_rps;
        let time_scale = trace_rps / offered_rps;
        tracing::info!(replica_capacity_rps, capacity_rps, offered_rps, time_scale, "lab: capacity measured");
        Ok(Self { records, n, trace, time_scale, replica_capacity_rps, capacity_rps, offered_rps, replicas })
    }
}

/// Runs the scenario: measures the capacity, then replays the window through every policy of
/// the registry ([`lab_policies`]), through least response time once more with no request sizes
/// ([`NO_SIZES`]), and through the ideal, each on fresh replicas under a paused clock.
pub fn run_hetero(options: &HeteroOptions) -> Result<LabReport, LabError> {
    let setup = Setup::new(options)?;
    let Setup { records, n, trace, time_scale, replica_capacity_rps, capacity_rps, offered_rps, replicas } =
        setup;
    let window = &records[..n];
    let names: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
    let policies = lab_policies();
    let mut results = Vec::with_capacity(policies.len() + 2);
    for spec in &policies {
        let run = run_paused(run_policy(spec, Sizes::Known, options.seed, &replicas, window, time_scale))??;
        results.push(PolicyResult::summarise(spec.name(), &run, &names));
        tracing::info!(policy = spec.name(), "lab hetero: policy done");
    }
    // Least response time for a client whose requests carry no size: every request one unit
    // (with one balancer the default, load-report, picks alike).
    let spec = PolicyKind::LeastResponseTime.spec();
    let run = run_paused(run_policy(&spec, Sizes::Unknown, options.seed, &replicas, window, time_scale))??;
    results.push(PolicyResult::summarise(NO_SIZES, &run, &names));
    let run = run_paused(run_ideal(&replicas, window, time_scale))??;
    results.push(PolicyResult::summarise("ideal", &run, &names));

    let mut report = LabReport {
        scenario: "hetero".to_string(),
        seed: options.seed,
        trace,
        window_requests: n,
        time_scale,
        replica_capacity_rps,
        capacity_rps,
        target_load: options.load,
        offered_rps,
        replicas: replicas
            .iter()
            .map(|r| ReplicaInfo { name: r.name.clone(), speed: r.config.speed, weight: r.weight() })
            .collect(),
        results,
    };
    report.compare_with_ideal();
    Ok(report)
}
