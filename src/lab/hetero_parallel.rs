//! The `hetero-parallel` scenario: unequal replicas of the classic, parallel kind.
//!
//! Not every model server is an LLM engine: an embedding, reranking or classification server
//! runs `k` requests in parallel at a near fixed time each and queues the rest
//! ([`ReplicaKind::Parallel`](switchyard_sim::ReplicaKind)). Its latency is flat until its `k`
//! slots are busy, then grows by a whole service time for every `k` requests queued, so the one
//! thing a balancer must learn is how many requests each replica takes at once at full speed.
//!
//! Four replicas of `k = 8` slots at 10 ms a request, one of them four times slower (40 ms):
//! `3 × 800 + 200 = 2,600` requests per second of capacity, measured (a saturated closed loop
//! through one replica) rather than assumed. The workload is Poisson arrivals at `load` of that
//! capacity (65 % by default), seeded, every request the same (a classic server's requests
//! carry no token counts, so the balancer sees no sizes). Every registered policy runs it, then
//! the ideal of the `ideal_parallel` module (earliest finish time with an exact slot ledger).
//! Time to first token and latency are the same here: a reply comes whole at the end of its
//! service.
//!
//! Then every policy again as over real processes (rows suffixed [`REAL_SUFFIX`]): the requests
//! carry prompt sizes drawn from the bundled Azure trace, which the servers ignore (the key layer
//! extracts them from every KServe request, as in `switchyard bench hetero-parallel`), and each
//! reaches its replica after a seeded exponential delay of mean
//! [`HeteroParallelOptions::delay`], in order (the network and a busy machine's scheduler; on the
//! bench's quiet 2-core machine a 20 ms call takes about 22 ms at the median). This is the
//! setting in which the bench's figures differ from the lab's: a balancer that reads every
//! answer as exact mislearns its replicas here, in virtual time and reproducibly. The ideal has
//! no delays and stays the plain run's.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use switchyard_sim::{EngineConfig, LengthSampler, Pattern, Synthetic, TraceRecord};

use super::LabError;
use super::balanced::{Sizes, run_policy};
use super::capacity::measure_capacity;
use super::cluster::{ReplicaSpec, run_paused};
use super::hetero::lab_policies;
use super::ideal_parallel::run_ideal_parallel;
use super::report::{LabReport, PolicyResult, ReplicaInfo};

/// Slots of every replica.
pub const PARALLEL_SLOTS: u32 = 8;
/// Service time of a request on a full-speed replica.
pub const SERVICE_TIME: Duration = Duration::from_millis(10);
/// Requests replayed by default: about 12 s of arrivals at 65 % load, 200 above the p99.
pub const DEFAULT_PARALLEL_REQUESTS: usize = 20_000;
/// Offered load by default, as a share of the measured capacity.
pub const DEFAULT_PARALLEL_LOAD: f64 = 0.65;
/// The mean delay before a request reaches its replica in the rows run as over real processes:
/// a tenth of the service time.
pub const DEFAULT_PARALLEL_DELAY: Duration = Duration::from_millis(1);
/// The suffix of the rows run as over real processes (request sizes and delays).
pub const REAL_SUFFIX: &str = " (sizes, delays)";

/// Settings of a `hetero-parallel` run.
#[derive(Debug, Clone, PartialEq)]
pub struct HeteroParallelOptions {
    /// Seed of the arrivals and of the policies' random choices.
    pub seed: u64,
    /// Requests to replay.
    pub requests: usize,
    /// Offered load as a share of the cluster's measured capacity.
    pub load: f64,
    /// The mean delay before a request reaches its replica in the rows run as over real
    /// processes ([`REAL_SUFFIX`]); zero leaves those rows out.
    pub delay: Duration,
}

impl Default for HeteroParallelOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            requests: DEFAULT_PARALLEL_REQUESTS,
            load: DEFAULT_PARALLEL_LOAD,
            delay: DEFAULT_PARALLEL_DELAY,
        }
    }
}

/// The scenario's replicas: `replica-0` at speed 0.25, `replica-1` to `replica-3` at 1.0, each
/// [`PARALLEL_SLOTS`] slots at [`SERVICE_TIME`].
pub fn parallel_replicas() -> Vec<ReplicaSpec> {
    [0.25, 1.0, 1.0, 1.0]
        .iter()
        .enumerate()
        .map(|(i, &speed)| ReplicaSpec {
            name: format!("replica-{i}"),
            config: EngineConfig { speed, ..EngineConfig::parallel(PARALLEL_SLOTS, SERVICE_TIME) },
            delay: None,
        })
        .collect()
}

/// Runs the scenario: measures one full-speed replica's capacity, then replays the same seeded
/// Poisson arrivals through every policy of the registry and through the ideal, each on fresh
/// replicas under a paused clock.
pub fn run_hetero_parallel(options: &HeteroParallelOptions) -> Result<LabReport, LabError> {
    if !(options.load.is_finite() && options.load > 0.0) {
        return Err(LabError::Setting(format!("load must be > 0, got {}", options.load)));
    }
    if options.requests < 2 {
        return Err(LabError::Setting(format!(
            "the run needs at least 2 requests, got {}",
            options.requests
        )));
    }
    let replicas = parallel_replicas();
    let one =
        TraceRecord { at: Duration::ZERO, prompt_tokens: 1, output_tokens: 1, prefix: Default::default() };
    let full_speed = EngineConfig::parallel(PARALLEL_SLOTS, SERVICE_TIME);
    let replica_capacity_rps = run_paused(measure_capacity(&full_speed, std::slice::from_ref(&one)))??;
    let total_speed: f64 = replicas.iter().map(|r| r.config.speed).sum();
    let capacity_rps = replica_capacity_rps * total_speed;
    let offered_rps = options.load * capacity_rps;
    // Enough time for the requests asked for; the generator stops at the duration.
    let duration = Duration::from_secs_f64((options.requests as f64 + 1.0) / offered_rps * 1.2);
    let window: Vec<TraceRecord> = Synthetic::new(
        Pattern::Poisson { rate: offered_rps },
        LengthSampler::fixed(1, 1),
        duration,
        options.seed,
    )
    .take(options.requests)
    .collect();
    tracing::info!(replica_capacity_rps, capacity_rps, offered_rps, "lab hetero-parallel: capacity measured");

    let names: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
    let mut results = Vec::new();
    for spec in &lab_policies() {
        let run = run_paused(run_policy(spec, Sizes::Unknown, options.seed, &replicas, &window, 1.0))??;
        results.push(PolicyResult::summarise(spec.name(), &run, &names));
        tracing::info!(policy = spec.name(), "lab hetero-parallel: policy done");
    }
    let run = run_paused(run_ideal_parallel(&replicas, &window, 1.0))??;
    results.push(PolicyResult::summarise("ideal", &run, &names));
    if !options.delay.is_zero() {
        // The same arrivals, with the sizes of the bench's calls and the delays of real processes.
        let sizes = LengthSampler::from_trace(&crate::traces::azure_conv()?)
            .map_err(|e| LabError::Setting(e.to_string()))?;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(options.seed);
        let sized: Vec<TraceRecord> = window
            .iter()
            .map(|r| {
                let (prompt_tokens, output_tokens, _) = sizes.sample(&mut rng);
                TraceRecord { prompt_tokens, output_tokens, ..r.clone() }
            })
            .collect();
        let delayed: Vec<ReplicaSpec> =
            replicas.iter().map(|r| ReplicaSpec { delay: Some(options.delay), ..r.clone() }).collect();
        for spec in &lab_policies() {
            let run = run_paused(run_policy(spec, Sizes::Known, options.seed, &delayed, &sized, 1.0))??;
            results.push(PolicyResult::summarise(&format!("{}{REAL_SUFFIX}", spec.name()), &run, &names));
        }
    }

    let mut report = LabReport {
        scenario: "hetero-parallel".to_string(),
        seed: options.seed,
        trace: format!(
            "synthetic Poisson arrivals; {} slots at {} ms a request per replica",
            PARALLEL_SLOTS,
            SERVICE_TIME.as_millis()
        ),
        window_requests: window.len(),
        time_scale: 1.0,
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
