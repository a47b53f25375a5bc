//! The `overload` scenario: offered load stepping from half to three times the cluster's
//! capacity, and what each protection keeps of it.
//!
//! Four replicas of Llama 3.1 8B on H100s (the sim's defaults) behind the real balancer (least
//! response time). Arrivals follow the Azure conversation trace's own pattern and request sizes,
//! time-compressed step by step so that each step's mean rate is `load × capacity` (the capacity
//! measured, as in `hetero`), for loads 0.5, 1, 1.5, 2, 2.5 and 3, `step_seconds` each, then one
//! more step at 3 that is not reported, so that the last reported step is followed by load like
//! the others (not by an idle cluster that drains its backlog).
//!
//! Every request has a priority class, 10 % critical, 60 % standard and 30 % sheddable (spread
//! evenly: of every ten consecutive requests one is critical and three sheddable), and a deadline
//! from its size: [`DEADLINE_BASE`] plus [`DEADLINE_FACTOR`] times its time alone on a replica
//! (its prefill, then its output tokens at the decode step time of a full batch of such requests).
//! The caller gives up at its deadline (its stream is dropped, and the replica stops working on
//! it); the engine drops a request still queued at its deadline, as the worker does with
//! `grpc-timeout`.
//!
//! Configurations:
//! - `none`: the balancer alone; excess load queues in the replicas.
//! - `fixed+load-shed`: a hand-tuned fixed limit over the whole pool ([`HAND_TUNED_LIMIT`]) with
//!   tower's `LoadShed` in front, which refuses whatever finds the limit full. tower's own
//!   `ConcurrencyLimit` cannot stand in for the fixed limit here: its permit ends when the
//!   response future resolves, which for a stream is when its first message is ready to be
//!   read, so it does not limit streams at all; the fixed limit of `switchyard-limit` holds its
//!   permit to the last token, as every configuration below does.
//! - `fixed+shed`: a hand-tuned fixed limit ([`HAND_TUNED_SHED_LIMIT`]) with `switchyard-shed`'s
//!   queue (default settings) in front instead: what the queue adds to a limit that is right.
//! - `<algorithm>+shed`: the shed queue in front of a pool-wide adaptive limit, for each
//!   algorithm of `switchyard-limit` with its default parameters but a ceiling of 4096 (see
//!   `algorithm_spec`); and Gradient2 and Vegas once more behind `Windowed` (Netflix's
//!   `WindowedLimit`: one averaged sample a second), which takes out the noise of unequal
//!   request sizes.
//!
//! Every request asks for `max_tokens` = its output rounded up to the next power of two
//! ([`max_tokens_of`]): the caller knows an upper bound, not the output's length, and the engine
//! stops at the trace's output length as a model stops at its end-of-sequence token (it still
//! reserves KV for `max_tokens`). Every limit holds a request's permit until its last token
//! ([`GenerationPermit`]) and hears of a drop as soon as the stream falls behind its pace
//! ([`switchyard_limit::PaceCheck`], with only what a caller knows: the deadline, `max_tokens`
//! and a per-token objective, [`PACE`]), not only at the deadline; the fixed limits ignore it.
//!
//! Per configuration and load step (requests counted by the step they arrive in):
//! `goodput_share` (requests completed within their deadline per second, as a share of the
//! capacity), `success_by_priority` (the share of each class completed within its deadline),
//! `admitted` (the share that reached a replica), and `latency_ms` of the admitted requests (an
//! admitted request that missed its deadline counts as longer than any other). The limit in force
//! is sampled every 250 ms of virtual time (`limit_over_time`, one point a second in the JSON;
//! all of them in the plot).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use switchyard_balance::{Backend, Balance, PolicyHandle, PolicyKind, Shared};
use switchyard_core::{Deadline, Endpoint, Outcome, Priority, RequestSize, Spec};
use switchyard_limit::{
    Fixed, LimitLayer, Limiter, Pace, PaceBudget, PaceCheck, PaceParams, Permit, TrackPermit,
};
use switchyard_shed::{ShedConfig, ShedLayer};
use switchyard_sim::{EngineConfig, GenerationRequest, Token, TraceRecord, trace};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use super::LabError;
use super::capacity::measure_capacity;
use super::cluster::{ReplicaSpec, read_tokens, run_paused, spawn_engines};
use super::replica::{SimCompletion, SimReplica, TrackedGeneration};
use super::report::LatencySummary;
use crate::report::Table;

/// The offered loads, as multiples of the measured capacity.
pub const LOAD_STEPS: [f64; 6] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0];

/// The fixed part of every deadline.
pub const DEADLINE_BASE: Duration = Duration::from_secs(2);

/// How many times its time alone on a replica a request may take, on top of [`DEADLINE_BASE`].
pub const DEADLINE_FACTOR: f64 = 4.0;

/// The hand-tuned pool-wide limit of `fixed+load-shed`: of 256, 384, 512, 768 and 1024 (20 s
/// steps, seed 1), the one with the best goodput at 3× (1.32 of capacity; 256: 1.02, 384: 1.15,
/// 512: 1.22, 1024: 1.06). `LoadShed` knows no priority, so no limit gets its critical success
/// above 0.44.
pub const HAND_TUNED_LIMIT: usize = 768;

/// The hand-tuned pool-wide limit of `fixed+shed`: of 256, 384, 512, 768 and 1024, the one with
/// the best goodput at 3× (1.15 of capacity; 256: 0.99) that keeps critical success at 3× above
/// 0.999 (512: 0.998, 768: 0.964, 1024: 0.674) and its admitted requests within their deadlines.
pub const HAND_TUNED_SHED_LIMIT: usize = 384;

/// The limit algorithms run with the shed layer, with their default parameters, but for AIMD's
/// two signals made for classic servers: its relative RTT threshold and its increase of one per
/// round trip after the first cut (`rtt_tolerance = 0`, `per_rtt_increase = false`; see
/// [`switchyard_limit::aimd`]). The RTT of a stream is its time to first token, mostly the prefill
/// of its prompt, which varies with the prompt's length by far more than the 1.5 × the threshold
/// allows: with its defaults AIMD reads every long prompt as queueing and sinks to its floor
/// (goodput 0.020 of capacity at 3×, critical success 0.066). And four replicas of 256 batch slots
/// need the limit to climb by hundreds within a step, which one a round trip of seconds cannot
/// (goodput 0.72 at 3× with `rtt_tolerance = 0` alone). Its drops here are the pace check's, the
/// shed queue's deadline misses and the replicas' refusals; floor 1 and one cut per round trip
/// stay. Netflix's parameters exactly: goodput 1.10, critical 1.0, p99 ratio 1.16.
pub const ALGORITHMS: [&str; 4] = ["aimd", "gradient2", "vegas", "envoy-gradient"];

/// The delay-based algorithms run again behind `Windowed` (one averaged sample a second).
pub const WINDOWED: [&str; 2] = ["gradient2", "vegas"];

/// Settings of an `overload` run.
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadOptions {
    /// Seed of the policies' random choices.
    pub seed: u64,
    /// Virtual seconds per load step.
    pub step_seconds: f64,
    /// A trace file (Azure CSV or Mooncake JSONL) instead of the bundled Azure trace.
    pub trace: Option<PathBuf>,
    /// Where to draw the limit-over-time plot, if anywhere.
    pub plot: Option<PathBuf>,
}

impl Default for OverloadOptions {
    fn default() -> Self {
        Self { seed: 1, step_seconds: 20.0, trace: None, plot: None }
    }
}

/// The scenario's replicas: four at speed 1.0.
pub fn replicas() -> Vec<ReplicaSpec> {
    (0..4).map(|i| ReplicaSpec::with_speed(format!("replica-{i}"), 1.0)).collect()
}

/// The `max_tokens` a caller asks for a request whose answer will be `output_tokens` long: the
/// next power of two (a caller's typical cap, an upper bound 1.34 times the output on average
/// over the bundled Azure trace), within the engine's `max_tokens_limit`. A fixed cap (2,048 or
/// 4,096) would be looser still, but the sim reserves KV for `max_tokens` at admission (no
/// preemption), so it would also halve the batch the KV cache admits: a different cluster.
pub fn max_tokens_of(config: &EngineConfig, output_tokens: u32) -> u32 {
    output_tokens
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(u32::MAX)
        .min(config.max_tokens_limit.max(output_tokens))
}

/// The pace check of every limit's permit: from the 16th token, a stream slower than 50 ms a
/// token that could not make its deadline if it ran to `max_tokens` is a drop (see
/// [`switchyard_limit::pace`]). 50 ms is the callers' per-token objective here, about twice the
/// decode step of a full batch on the sim's H100 (19-25 ms); of 30, 50, 70 and 100 ms (the
/// library's default) tried with AIMD, 30 held the limit too low (goodput at 3× 0.93 of
/// capacity), 100 let three critical requests of 441 miss their deadlines at 3× (0.9932), 50 and
/// 70 met every target (goodput 1.03 and 0.98, every critical request served).
pub const PACE: PaceParams = PaceParams { min_tokens: 16, tpot_objective_ms: 50 };

/// One request of the workload.
#[derive(Debug, Clone)]
struct Arrival {
    at: Duration,
    step: usize,
    record: TraceRecord,
    /// What the caller asks for: an upper bound on `record.output_tokens`.
    max_tokens: u32,
    priority: Priority,
    deadline: Duration,
    /// Its share of a saturated replica's time, relative to the workload's mean (1 on average).
    weight: f64,
}

/// The class of the `i`-th request: of every ten, one critical, six standard, three sheddable.
fn priority_of(i: usize) -> Priority {
    match i % 10 {
        0 => Priority::Critical,
        3 | 6 | 9 => Priority::Sheddable,
        _ => Priority::Standard,
    }
}

/// A request's deadline: [`DEADLINE_BASE`] + [`DEADLINE_FACTOR`] × its time alone on a replica
/// (prefill, then its output at the decode step time of a full batch of requests its size).
pub fn deadline_of(config: &EngineConfig, record: &TraceRecord) -> Duration {
    let context = u64::from(record.prompt_tokens) + u64::from(record.output_tokens) / 2;
    let step = config.decode_step_time(u64::from(config.max_batch), context);
    let alone = config.prefill_time(u64::from(record.prompt_tokens)) + step * record.output_tokens;
    DEADLINE_BASE + alone.mul_f64(DEADLINE_FACTOR)
}

/// The arrivals of every step, and of one more at the last load (not reported): the trace's
/// records in order (cycled), `load × capacity × step` of them per step, their gaps scaled so that they span the step (a gap across the end of the
/// trace counts as the trace's mean gap).
fn workload(records: &[TraceRecord], capacity_rps: f64, step_seconds: f64) -> Vec<Arrival> {
    let n = records.len();
    let mean_gap = records[n - 1].at.saturating_sub(records[0].at).as_secs_f64() / (n - 1) as f64;
    let gap_before = |k: usize| {
        if k.is_multiple_of(n) {
            mean_gap
        } else {
            records[k % n].at.saturating_sub(records[k % n - 1].at).as_secs_f64()
        }
    };
    let config = EngineConfig::default();
    let mut arrivals = Vec::new();
    let mut next = 0usize;
    // One more step at the last load, not reported: so that the last reported step is followed
    // by load, as every other is, rather than by an idle cluster draining its backlog.
    let last = LOAD_STEPS[LOAD_STEPS.len() - 1];
    for (step, load) in LOAD_STEPS.iter().chain([&last]).enumerate() {
        let count = (load * capacity_rps * step_seconds).round() as usize;
        // The chunk's own span, first arrival at the step's start: gaps 1..count, plus one more
        // so that the last arrival is not at the step's very end.
        let span: f64 = (1..=count).map(|k| gap_before(next + k)).sum();
        let scale = if span > 0.0 { step_seconds / span } else { 0.0 };
        let mut t = step as f64 * step_seconds;
        for k in 0..count {
            if k > 0 {
                t += gap_before(next + k) * scale;
            }
            let record = &records[(next + k) % n];
            let i = arrivals.len();
            arrivals.push(Arrival {
                at: Duration::from_secs_f64(t),
                step,
                record: record.clone(),
                max_tokens: max_tokens_of(&config, record.output_tokens),
                priority: priority_of(i),
                deadline: deadline_of(&config, record),
                weight: work_of(&config, record),
            });
        }
        next += count;
    }
    let mean = arrivals.iter().map(|a| a.weight).sum::<f64>() / arrivals.len().max(1) as f64;
    for a in &mut arrivals {
        a.weight /= mean;
    }
    arrivals
}

/// The time a request takes of a saturated replica: its prefill, and its share of the decode
/// steps of a full batch.
fn work_of(config: &EngineConfig, record: &TraceRecord) -> f64 {
    let context = u64::from(record.prompt_tokens) + u64::from(record.output_tokens) / 2;
    let step = config.decode_step_time(u64::from(config.max_batch), context).as_secs_f64();
    config.prefill_time(u64::from(record.prompt_tokens)).as_secs_f64()
        + step * f64::from(record.output_tokens) / f64::from(config.max_batch.max(1))
}

/// How a configuration protects the pool.
#[derive(Debug, Clone)]
enum Protection {
    None,
    FixedLoadShed(usize),
    Shed(Spec),
}

/// The algorithms' parameters in this scenario: their defaults (AIMD's with the two changes
/// [`ALGORITHMS`] gives), with the ceiling raised to 4096 where it is lower (Netflix's AIMD and Gradient2 stop at 200, Vegas and Envoy at 1000: sized for
/// RPC services, below what four LLM replicas of 256 batch slots each hold).
fn algorithm_spec(name: &str) -> Spec {
    let mut params = serde_json::Map::new();
    params.insert("max_limit".into(), serde_json::Value::from(4096));
    if name == "aimd" {
        // LLM streams: no relative RTT threshold and one more per success (see `ALGORITHMS`).
        params.insert("rtt_tolerance".into(), serde_json::Value::from(0));
        params.insert("per_rtt_increase".into(), serde_json::Value::from(false));
    }
    Spec::with_params(name, params)
}

impl Protection {
    fn name(&self) -> String {
        match self {
            Protection::None => "none".to_string(),
            Protection::FixedLoadShed(n) => format!("fixed({n})+load-shed"),
            Protection::Shed(spec) if spec.name() == "fixed" => {
                format!(
                    "fixed({})+shed",
                    spec.raw_params().get("limit").map_or(0, |v| v.as_u64().unwrap_or(0))
                )
            }
            Protection::Shed(spec) if spec.name() == "windowed" => {
                let inner =
                    spec.raw_params().get("algorithm").and_then(|a| a.get("name")).and_then(|n| n.as_str());
                format!("windowed-{}+shed", inner.unwrap_or("?"))
            }
            Protection::Shed(spec) => format!("{}+shed", spec.name()),
        }
    }
}

/// How one request went.
#[derive(Debug, Clone, Copy, Default)]
struct Served {
    admitted: bool,
    latency: Option<Duration>,
}

/// One configuration's run: every request's outcome, and the limit over time.
#[derive(Debug, Default)]
struct ConfigRun {
    served: Vec<Served>,
    limit: Vec<(f64, u32)>,
}

/// The balancer's answer with what its caller knows of the request: its deadline and the most
/// tokens it asked for (built by [`Paced`]).
#[derive(Debug)]
pub struct PacedGeneration {
    inner: TrackedGeneration,
    budget: PaceBudget,
}

/// Passes each request on and pairs its answer with the request's deadline and `max_tokens`,
/// for [`GenerationPermit`]'s pace check.
#[derive(Debug, Clone)]
pub struct Paced<S> {
    inner: S,
}

impl<S> Service<Request> for Paced<S>
where
    S: Service<Request, Response = TrackedGeneration>,
    S::Future: Send + 'static,
{
    type Response = PacedGeneration;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<PacedGeneration, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let budget = PaceBudget { deadline: req.body().deadline, max_tokens: Some(req.body().max_tokens) };
        let answer = self.inner.call(req);
        Box::pin(async move { answer.await.map(|inner| PacedGeneration { inner, budget }) })
    }
}

/// [`TrackPermit`] for the lab's token streams: the RTT at the first token, success at the last,
/// a failure if the stream ends early. The lab's callers only give up at their deadline, so a
/// stream dropped before its end is `DEADLINE_EXCEEDED` (a drop, for the limit).
///
/// A stream is a drop as soon as [`PaceCheck`] finds it behind ([`PACE`]: from its 16th token,
/// slower than 50 ms a token and, at that pace, past its deadline if it ran to `max_tokens`):
/// the permit is [settled](Permit::settle) as `DEADLINE_EXCEEDED` there (the request keeps its
/// place until it ends). On an LLM engine an overload shows first in the time per output token
/// (every step of a saturated engine carries a prefill chunk, and a decoding request waits for
/// it), and the deadline it costs comes seconds later; a loss-based limit that hears of the
/// drop only then has admitted seconds' worth of requests too many. The check knows only what
/// a caller knows: not the output's length, which the engine alone decides.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationPermit;

impl TrackPermit<PacedGeneration> for GenerationPermit {
    type Output = PermitGeneration;

    fn track(&self, response: PacedGeneration, permit: Permit) -> PermitGeneration {
        PermitGeneration {
            inner: response.inner,
            pace: PaceCheck::new(PACE, response.budget),
            permit: Some(permit),
        }
    }
}

/// A token stream holding its request's permit until its last token.
#[derive(Debug)]
pub struct PermitGeneration {
    inner: TrackedGeneration,
    pace: PaceCheck,
    permit: Option<Permit>,
}

impl Stream for PermitGeneration {
    type Item = Token;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Token>> {
        let this = &mut *self;
        let item = std::task::ready!(Pin::new(&mut this.inner).poll_next(cx));
        match &item {
            Some(token) => {
                let behind = this.pace.token(Instant::now()) == Pace::Behind;
                if let Some(permit) = this.permit.as_mut() {
                    permit.first_byte();
                    if behind {
                        permit.settle(Outcome::DeadlineExceeded);
                    }
                }
                if token.last
                    && let Some(permit) = this.permit.take()
                {
                    permit.finish(Outcome::Ok);
                }
            }
            None => {
                if let Some(permit) = this.permit.take() {
                    permit.finish(Outcome::Unavailable);
                }
            }
        }
        Poll::Ready(item)
    }
}

impl Drop for PermitGeneration {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            permit.finish(Outcome::DeadlineExceeded);
        }
    }
}

type Request = http::Request<GenerationRequest>;

/// Runs one configuration on fresh replicas. Call inside a paused runtime.
async fn run_config(
    protection: &Protection,
    replicas: &[ReplicaSpec],
    arrivals: &[Arrival],
    seed: u64,
) -> Result<ConfigRun, LabError> {
    let engines = spawn_engines(replicas)?;
    let backends = replicas.iter().zip(&engines).map(|(spec, engine)| {
        let endpoint = Endpoint::new(spec.name.as_str(), format!("sim://{}", spec.name));
        Backend::new(endpoint, SimReplica::new(engine.clone()))
    });
    let balancer = Shared::new(
        Balance::from_backends(backends)
            .with_policy(PolicyHandle::of(PolicyKind::DEFAULT, seed))
            .with_completion(SimCompletion),
    );
    let run = match protection {
        Protection::None => drive(balancer, None, arrivals).await,
        Protection::FixedLoadShed(n) => {
            let limit = LimitLayer::new(Fixed::new(*n)).with_tracking(GenerationPermit);
            let limiter = limit.limiter().clone();
            let service = ServiceBuilder::new()
                .load_shed()
                .layer(limit)
                .layer_fn(|inner| Paced { inner })
                .service(balancer);
            drive(service, Some(limiter), arrivals).await
        }
        Protection::Shed(spec) => {
            let algorithm = switchyard_limit::algorithm_from_spec(spec)
                .map_err(|e| LabError::Setting(format!("limit algorithm {e}")))?;
            let limiter = Limiter::from_boxed(algorithm);
            let limit = LimitLayer::with_limiter(limiter.clone()).with_tracking(GenerationPermit);
            let shed = ShedLayer::new(ShedConfig { pool: Some("overload".into()), ..ShedConfig::default() });
            let service = ServiceBuilder::new()
                .layer(shed)
                .layer(limit)
                .layer_fn(|inner| Paced { inner })
                .service(balancer);
            drive(service, Some(limiter), arrivals).await
        }
    };
    for engine in &engines {
        engine.shutdown();
    }
    Ok(run)
}

/// Replays `arrivals` through `service`, each caller giving up at its deadline.
async fn drive<S>(service: S, limiter: Option<Limiter>, arrivals: &[Arrival]) -> ConfigRun
where
    S: Service<Request> + Clone + Send + 'static,
    S::Response: Stream<Item = Token> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let start = Instant::now();
    let served = Arc::new(Mutex::new(vec![Served::default(); arrivals.len()]));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = limiter.map(|limiter| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut points = Vec::new();
            while !done.load(Ordering::Relaxed) {
                points.push((
                    start.elapsed().as_secs_f64(),
                    u32::try_from(limiter.limit()).unwrap_or(u32::MAX),
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            points
        })
    });
    let mut tasks = Vec::with_capacity(arrivals.len());
    for (i, arrival) in arrivals.iter().enumerate() {
        tokio::time::sleep_until(start + arrival.at).await;
        let arrived_at = Instant::now();
        let deadline = arrived_at + arrival.deadline;
        let mut generation = GenerationRequest::from(&arrival.record);
        generation.max_tokens = arrival.max_tokens;
        generation.output_tokens = Some(arrival.record.output_tokens);
        generation.deadline = Some(deadline);
        let mut request = http::Request::new(generation);
        let extensions = request.extensions_mut();
        extensions.insert(arrival.priority);
        extensions.insert(Deadline(deadline));
        extensions.insert(RequestSize::new(arrival.record.prompt_tokens, arrival.max_tokens));
        let service = service.clone();
        let served = served.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = false;
            let call = async {
                let tokens = service.oneshot(request).await.ok()?;
                admitted = true;
                read_tokens(tokens, arrived_at, |_| {}).await.last
            };
            let latency = tokio::time::timeout_at(deadline, call).await.ok().flatten();
            if let Some(slot) = served.lock().unwrap_or_else(PoisonError::into_inner).get_mut(i) {
                *slot = Served { admitted, latency };
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    done.store(true, Ordering::Relaxed);
    let limit = match sampler {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let served = std::mem::take(&mut *served.lock().unwrap_or_else(PoisonError::into_inner));
    ConfigRun { served, limit }
}

/// The share of each class that completed within its deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ByPriority {
    /// Critical requests.
    pub critical: f64,
    /// Standard requests.
    pub standard: f64,
    /// Sheddable requests.
    pub sheddable: f64,
}

/// One load step of one configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepResult {
    /// Offered load, as a multiple of the capacity.
    pub load: f64,
    /// Requests that arrived in the step.
    pub requests: usize,
    /// Offered requests per second.
    pub offered_rps: f64,
    /// Requests completed within their deadline, per second.
    pub goodput_rps: f64,
    /// `goodput_rps` as a share of the capacity.
    pub goodput_share: f64,
    /// The same, each request weighted by its share of a replica's time (1 on average over the
    /// workload), so that completing only the small requests does not count as full goodput.
    pub goodput_work_share: f64,
    /// Share of the requests that reached a replica.
    pub admitted: f64,
    /// Share of each class completed within its deadline.
    pub success_by_priority: ByPriority,
    /// End-to-end latency of the admitted requests (one that missed its deadline ranks above
    /// every time: `null` when a percentile falls among them).
    pub latency_ms: LatencySummary,
}

/// One configuration's results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConfigResult {
    /// `none`, `fixed(N)+load-shed`, or `<algorithm>+shed`.
    pub config: String,
    /// One result per load step.
    pub steps: Vec<StepResult>,
    /// The limit in force, one point a second: `(seconds, limit)`. Empty without a limit.
    pub limit_over_time: Vec<(f64, u32)>,
}

impl ConfigResult {
    fn step(&self, load: f64) -> Option<&StepResult> {
        self.steps.iter().find(|s| (s.load - load).abs() < 1e-9)
    }
}

/// A target of the issue and whether a configuration met it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetCheck {
    /// The configuration.
    pub config: String,
    /// Goodput at 3× as a share of capacity (target ≥ 0.95).
    pub goodput_share_at_3x: f64,
    /// The same, weighted by work.
    pub goodput_work_share_at_3x: f64,
    /// Critical success at 3× (target ≥ 0.999).
    pub critical_success_at_3x: f64,
    /// p99 latency of admitted requests at 3× over its value at 0.5× (target ≤ 2).
    pub admitted_p99_ratio: f64,
    /// Whether all three targets are met.
    pub met: bool,
}

/// The `overload` report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OverloadReport {
    /// `overload`.
    pub scenario: String,
    /// Seed of the policies' random choices.
    pub seed: u64,
    /// The trace whose arrival pattern and request sizes are replayed.
    pub trace: String,
    /// Replicas, all at speed 1.0.
    pub replicas: usize,
    /// Requests per second one replica completes on the trace's mix, measured.
    pub replica_capacity_rps: f64,
    /// The cluster's capacity.
    pub capacity_rps: f64,
    /// Virtual seconds per load step.
    pub step_seconds: f64,
    /// The deadline rule.
    pub deadline: String,
    /// The priority mix.
    pub mix: String,
    /// Every configuration's results.
    pub configs: Vec<ConfigResult>,
    /// The targets, per configuration.
    pub targets: Vec<TargetCheck>,
}

fn summarise(
    name: String,
    run: &ConfigRun,
    arrivals: &[Arrival],
    capacity_rps: f64,
    step_seconds: f64,
) -> ConfigResult {
    let steps = LOAD_STEPS
        .iter()
        .enumerate()
        .map(|(step, &load)| {
            let in_step: Vec<(&Arrival, &Served)> =
                arrivals.iter().zip(&run.served).filter(|(a, _)| a.step == step).collect();
            let requests = in_step.len();
            let good = in_step.iter().filter(|(_, s)| s.latency.is_some()).count();
            let admitted: Vec<&Served> =
                in_step.iter().filter(|(_, s)| s.admitted).map(|(_, s)| *s).collect();
            let share = |p: Priority| {
                let class: Vec<_> = in_step.iter().filter(|(a, _)| a.priority == p).collect();
                let ok = class.iter().filter(|(_, s)| s.latency.is_some()).count();
                if class.is_empty() { 1.0 } else { round4(ok as f64 / class.len() as f64) }
            };
            let goodput_rps = good as f64 / step_seconds;
            let good_work: f64 =
                in_step.iter().filter(|(_, s)| s.latency.is_some()).map(|(a, _)| a.weight).sum();
            StepResult {
                load,
                requests,
                offered_rps: round4(requests as f64 / step_seconds),
                goodput_rps: round4(goodput_rps),
                goodput_share: round4(goodput_rps / capacity_rps),
                goodput_work_share: round4(good_work / step_seconds / capacity_rps),
                admitted: round4(admitted.len() as f64 / requests.max(1) as f64),
                success_by_priority: ByPriority {
                    critical: share(Priority::Critical),
                    standard: share(Priority::Standard),
                    sheddable: share(Priority::Sheddable),
                },
                latency_ms: LatencySummary::with_failures(admitted.iter().map(|s| s.latency)),
            }
        })
        .collect();
    let mut next_second = 0.0;
    let limit_over_time = run
        .limit
        .iter()
        .filter(|(t, _)| {
            let keep = *t >= next_second;
            if keep {
                next_second = t.floor() + 1.0;
            }
            keep
        })
        .map(|&(t, l)| (round4(t), l))
        .collect();
    ConfigResult { config: name, steps, limit_over_time }
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

fn check(result: &ConfigResult) -> TargetCheck {
    let at3 = result.step(3.0);
    let at_half = result.step(0.5);
    let goodput = at3.map_or(0.0, |s| s.goodput_share);
    let critical = at3.map_or(0.0, |s| s.success_by_priority.critical);
    let ratio = match (at3, at_half) {
        (Some(a), Some(b)) if b.latency_ms.p99.is_finite() && b.latency_ms.p99 > 0.0 => {
            round4(a.latency_ms.p99 / b.latency_ms.p99)
        }
        _ => f64::INFINITY,
    };
    TargetCheck {
        config: result.config.clone(),
        goodput_share_at_3x: goodput,
        goodput_work_share_at_3x: at3.map_or(0.0, |s| s.goodput_work_share),
        critical_success_at_3x: critical,
        admitted_p99_ratio: ratio,
        met: goodput >= 0.95 && critical >= 0.999 && ratio <= 2.0,
    }
}

/// Runs the scenario: measures the capacity, then replays the stepped workload through each
/// configuration on fresh replicas under a paused clock, and draws the limit over time where
/// `options.plot` says.
pub fn run_overload(options: &OverloadOptions) -> Result<OverloadReport, LabError> {
    if !(options.step_seconds.is_finite() && options.step_seconds >= 1.0) {
        return Err(LabError::Setting(format!("step_seconds must be ≥ 1, got {}", options.step_seconds)));
    }
    let (records, trace_name) = match &options.trace {
        Some(path) => (trace::read_trace(path)?, path.display().to_string()),
        None => (crate::traces::azure_conv()?, "azure_llm_2023_conv.csv (bundled)".to_string()),
    };
    if records.len() < 2 || records[records.len() - 1].at <= records[0].at {
        return Err(LabError::Setting("the trace needs at least 2 requests spread in time".to_string()));
    }
    let replicas = replicas();
    let replica_capacity_rps = run_paused(measure_capacity(&EngineConfig::default(), &records))??;
    let capacity_rps = replica_capacity_rps * replicas.len() as f64;
    let arrivals = workload(&records, capacity_rps, options.step_seconds);
    tracing::info!(capacity_rps, requests = arrivals.len(), "lab overload: workload ready");

    let mut fixed = serde_json::Map::new();
    fixed.insert("limit".into(), serde_json::Value::from(HAND_TUNED_SHED_LIMIT));
    let mut protections = vec![
        Protection::None,
        Protection::FixedLoadShed(HAND_TUNED_LIMIT),
        Protection::Shed(Spec::with_params("fixed", fixed)),
    ];
    protections.extend(ALGORITHMS.iter().map(|a| Protection::Shed(algorithm_spec(a))));
    for inner in WINDOWED {
        let mut params = serde_json::Map::new();
        params.insert("algorithm".into(), serde_json::to_value(algorithm_spec(inner)).unwrap_or_default());
        protections.push(Protection::Shed(Spec::with_params("windowed", params)));
    }
    let mut configs = Vec::with_capacity(protections.len());
    let mut series = Vec::new();
    for protection in &protections {
        let run = run_paused(run_config(protection, &replicas, &arrivals, options.seed))??;
        configs.push(summarise(protection.name(), &run, &arrivals, capacity_rps, options.step_seconds));
        tracing::info!(config = protection.name(), "lab overload: configuration done");
        if !run.limit.is_empty() {
            series.push((protection.name(), run.limit));
        }
    }
    if let Some(path) = &options.plot {
        super::overload_plot::limit_plot(path, &series, options.step_seconds, &LOAD_STEPS, "virtual")
            .map_err(|e| LabError::Setting(format!("plot: {e}")))?;
    }
    let targets = configs.iter().map(check).collect();
    Ok(OverloadReport {
        scenario: "overload".to_string(),
        seed: options.seed,
        trace: trace_name,
        replicas: replicas.len(),
        replica_capacity_rps,
        capacity_rps,
        step_seconds: options.step_seconds,
        deadline: format!(
            "{} s + {DEADLINE_FACTOR} × (prefill + output tokens × decode step at a full batch)",
            DEADLINE_BASE.as_secs_f64()
        ),
        mix: "10 % critical, 60 % standard, 30 % sheddable".to_string(),
        configs,
        targets,
    })
}

impl OverloadReport {
    /// A terminal summary: per configuration and step, goodput and success by class; then the
    /// targets.
    pub fn summary(&self) -> String {
        let mut table = Table::new([
            "config",
            "load",
            "goodput",
            "by work",
            "admitted",
            "critical",
            "standard",
            "sheddable",
            "p50 ms",
            "p99 ms",
        ]);
        for c in &self.configs {
            for s in &c.steps {
                table.row([
                    c.config.clone(),
                    format!("{:.1}×", s.load),
                    format!("{:.3}", s.goodput_share),
                    format!("{:.3}", s.goodput_work_share),
                    format!("{:.3}", s.admitted),
                    format!("{:.4}", s.success_by_priority.critical),
                    format!("{:.4}", s.success_by_priority.standard),
                    format!("{:.4}", s.success_by_priority.sheddable),
                    format!("{:.0}", s.latency_ms.p50),
                    format!("{:.0}", s.latency_ms.p99),
                ]);
            }
        }
        let mut targets =
            Table::new(["config", "goodput at 3×", "by work", "critical at 3×", "p99 3× / 0.5×", "met"]);
        for t in &self.targets {
            targets.row([
                t.config.clone(),
                format!("{:.3} (≥ 0.95)", t.goodput_share_at_3x),
                format!("{:.3}", t.goodput_work_share_at_3x),
                format!("{:.4} (≥ 0.999)", t.critical_success_at_3x),
                format!("{:.2} (≤ 2)", t.admitted_p99_ratio),
                if t.met { "met" } else { "not met" }.to_string(),
            ]);
        }
        format!(
            "lab overload: {} replicas, capacity {:.1} req/s ({:.2} per replica, measured), steps of {} s, {}\n\
             deadlines: {}; mix: {}\n\n{table}\n{targets}",
            self.replicas,
            self.capacity_rps,
            self.replica_capacity_rps,
            self.step_seconds,
            self.trace,
            self.deadline,
            self.mix,
        )
    }
}
