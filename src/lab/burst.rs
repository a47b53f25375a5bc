//! The `burst` scenario: autoscalers against load that swings faster than a replica starts.
//!
//! A pool of simulated replicas (Llama 3.1 8B on one H100 each, [`EngineConfig::default`]) with
//! a cold start (30 s by default: weights loading) is sized by each autoscaler in turn, through
//! the real loop ([`Autoscaler`]: signals from the balancer's board → recommender → a
//! [`Scaler`] over simulated replicas that join the balancer when started and leave it by
//! draining), and by a fixed pool sized for the workload's peak. Replica capacity `C` is
//! measured ([`measure_capacity`]) on the trace's request mix.
//!
//! # Workloads
//!
//! - `azure`: the Azure LLM 2023 conversation trace (or `--trace`), accelerated until its busiest
//!   300 s window (trace time) offers 4.5 × `C` (about 11× for the bundled trace: its hour in
//!   five minutes), with its swings stretched: the 300 s windows' rates span only 1.7× in the
//!   trace, so each window is thinned (deterministically, keeping its requests in order) to
//!   `C × (1 + 3.5 × (r − r_min) / (r_max − r_min))`: from 1 × to 4.5 × one replica's capacity,
//!   keeping the trace's shape, its faster swings within a window, and its request sizes.
//! - `step`: Poisson arrivals at 1 × `C` for 120 s, then 5 × for 240 s.
//! - `spike`: 1 × `C`, 5 × for 20 s at 120 s, 1 × until 360 s.
//! - `steady`: 2 × `C` with ±20 % noise (a new uniform rate every 10 s) for 600 s.
//!
//! Request sizes of the synthetic ones are drawn from the trace.
//!
//! # Autoscalers
//!
//! Switchyard's [`LlmAware`] (cold start told), the Kubernetes [`Hpa`], Knative's [`Kpa`] and
//! llm-d's [`Saturation`] with their published defaults, all bounded to 1..=12 replicas. Every
//! target that is the operator's to choose is set from one calibration run, one replica at 70 %
//! of its capacity for 120 s, as an operator would measure and configure it: the HPA's target (in
//! flight per replica) is what the replica holds in flight there, the KPA's concurrency target
//! that over its 0.7 utilisation, and Switchyard's target utilisation the demand its recommender
//! reads off the board there (its learnt capacity and its snapshot of work per request are biased
//! estimates, so the reading at a known load is its calibration). llm-d's thresholds are its
//! defaults. Signals are the board's, with each replica's queue and KV use read from its engine
//! at each sample, as llm-d scrapes vLLM's gauges.
//! `fixed-peak`: `ceil(peak rate / (0.8 C))` replicas throughout, the peak taken over 30 s
//! windows.
//!
//! `clairvoyant` is a bound, not an autoscaler: it is given the workload's arrivals and sizes
//! the pool, every second, to the most that any 10 s window of arrivals up to one cold start
//! ahead needs at 70 % of `C`, in whole replicas, letting replicas go as soon as the future
//! allows (see `src/lab/burst_clairvoyant.rs`). It goes through the same pool,
//! cold start and drain as the others, so its SLO and replica-seconds are measured: what the
//! set-up allows an autoscaler that knew the future to reach.
//!
//! # Figures
//!
//! Per workload and autoscaler: `slo_attainment` (share of requests with a first token within
//! the SLO, 2 s by default; a refused request misses it), TTFT p50/p99, `replica_seconds`
//! (starting, ready and draining replicas, over the workload's duration), its ratio to the fixed
//! pool's, `scale_events` (decisions that changed the count), `direction_changes` (an up after a
//! down or the reverse), and for `step` the time from the step to the first scale-up decision
//! (`decision_s`) and until enough replicas are ready to carry 5 × (`time_to_ready_s`, ready ≥
//! `ceil(5 C / C)`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use switchyard_autoscale::{
    Autoscaler, BoardSignals, Bounds, Hpa, HpaConfig, Kpa, KpaConfig, LlmAware, LlmAwareConfig, PoolSize,
    Recommender, Saturation, SaturationConfig, SignalSource, Signals,
};
use switchyard_balance::{Balance, PolicyHandle, PolicyKind};
use switchyard_core::RequestSize;
use switchyard_sim::{
    EngineConfig, GenerationRequest, LengthSampler, Pattern, Synthetic, TraceRecord, trace,
};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tower::{Service, ServiceExt};

use super::LabError;
use super::burst_clairvoyant::{Clairvoyant, ClairvoyantConfig};
use super::burst_pool::{PoolEvent, SimPool};
use super::capacity::measure_capacity;
use super::cluster::{read_tokens, run_paused};
use super::replica::SimCompletion;
use crate::report::{Percentiles, Table};

/// The autoscalers compared, in the report's order. `clairvoyant` is a bound (it knows the
/// arrivals in advance), not an autoscaler one could deploy.
pub const BURST_AUTOSCALERS: [&str; 6] = ["switchyard", "hpa", "kpa", "llm-d", "clairvoyant", "fixed-peak"];
/// Replica bounds of every autoscaler.
pub const BURST_BOUNDS: (u32, u32) = (1, 12);

/// Settings of a `burst` run.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstOptions {
    /// Seed of the synthetic arrivals and the policies.
    pub seed: u64,
    /// A trace (Azure CSV or Mooncake JSONL) instead of the bundled Azure trace.
    pub trace: Option<PathBuf>,
    /// A replica's cold start.
    pub cold_start: Duration,
    /// The TTFT objective.
    pub slo_ttft: Duration,
    /// Draw one plot per workload: `FILE` gives `FILE-STEM-WORKLOAD.png` beside it.
    pub plot: Option<PathBuf>,
    /// Only these workloads (`azure`, `step`, `spike`, `steady`); all when empty. A shorter run
    /// gives the same rows as the full one for what it runs (each run is on its own runtime).
    pub workloads: Vec<String>,
    /// Only these autoscalers (of [`BURST_AUTOSCALERS`]), and always `fixed-peak`, which the
    /// costs are relative to; all when empty.
    pub autoscalers: Vec<String>,
}

impl Default for BurstOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            trace: None,
            cold_start: Duration::from_secs(30),
            slo_ttft: Duration::from_secs(2),
            plot: None,
            workloads: Vec::new(),
            autoscalers: Vec::new(),
        }
    }
}

/// One workload's arrivals.
#[derive(Debug, Clone)]
struct Workload {
    name: &'static str,
    records: Vec<TraceRecord>,
    duration: f64,
    /// Rate at the start, in requests a second.
    initial_rate: f64,
    /// The highest rate over 30 s windows.
    peak_rate: f64,
    /// For `step`: when, and the rate after.
    step: Option<(f64, f64)>,
}

/// One workload under one autoscaler.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BurstResult {
    /// The workload.
    pub workload: String,
    /// The autoscaler.
    pub autoscaler: String,
    /// Requests offered.
    pub requests: usize,
    /// Requests refused or failed.
    pub failed: usize,
    /// Share of requests with a first token within the SLO.
    pub slo_attainment: f64,
    /// TTFT median, ms (answered requests).
    pub ttft_p50_ms: f64,
    /// TTFT p99, ms (answered requests).
    pub ttft_p99_ms: f64,
    /// Replica-seconds paid over the workload (starting, ready and draining replicas).
    pub replica_seconds: f64,
    /// `replica_seconds` over the fixed-peak pool's on the same workload.
    pub cost_vs_fixed_peak: f64,
    /// Decisions that changed the replica count.
    pub scale_events: usize,
    /// Changes of direction between successive scale events.
    pub direction_changes: usize,
    /// The same per five minutes of the workload.
    pub direction_changes_per_5min: f64,
    /// The most replicas asked for.
    pub max_replicas: u32,
    /// `step`: seconds from the step to the first scale-up decision.
    pub decision_s: Option<f64>,
    /// `step`: seconds from the step until enough replicas are ready for the new load.
    pub time_to_ready_s: Option<f64>,
}

/// A workload's description in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadInfo {
    /// Its name.
    pub workload: String,
    /// Requests.
    pub requests: usize,
    /// Seconds of arrivals.
    pub duration_s: f64,
    /// Peak rate over 30 s windows, in replica capacities.
    pub peak_load: f64,
    /// Lowest rate over 30 s windows, in replica capacities.
    pub min_load: f64,
    /// The fixed pool's size.
    pub fixed_peak_replicas: u32,
}

/// The `burst` report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BurstReport {
    /// `"burst"`.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The trace replayed by `azure` and sampled for sizes.
    pub trace: String,
    /// One replica's measured capacity, requests a second.
    pub replica_capacity_rps: f64,
    /// Requests one replica holds in flight at 70 % of its capacity (the HPA and KPA targets).
    pub in_flight_at_70: f64,
    /// The demand (replicas of work) Switchyard's recommender reads off one replica at 70 % of its
    /// capacity: its target utilisation here.
    pub switchyard_target: f64,
    /// A replica's cold start, seconds.
    pub cold_start_s: f64,
    /// The TTFT objective, ms.
    pub slo_ttft_ms: f64,
    /// The workloads.
    pub workloads: Vec<WorkloadInfo>,
    /// Every workload under every autoscaler.
    pub results: Vec<BurstResult>,
}

impl BurstReport {
    /// A terminal summary.
    pub fn summary(&self) -> String {
        let mut table = Table::new([
            "workload",
            "autoscaler",
            "SLO",
            "p99 ms",
            "replica-s",
            "vs fixed",
            "events",
            "dir. changes",
            "decision s",
            "ready s",
        ]);
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        for r in &self.results {
            table.row([
                r.workload.clone(),
                r.autoscaler.clone(),
                format!("{:.4}", r.slo_attainment),
                format!("{:.0}", r.ttft_p99_ms),
                format!("{:.0}", r.replica_seconds),
                format!("{:.2}", r.cost_vs_fixed_peak),
                r.scale_events.to_string(),
                r.direction_changes.to_string(),
                opt(r.decision_s),
                opt(r.time_to_ready_s),
            ]);
        }
        format!(
            "burst: replica capacity {:.1} req/s, cold start {:.0} s, SLO TTFT ≤ {:.0} ms\n{table}",
            self.replica_capacity_rps, self.cold_start_s, self.slo_ttft_ms
        )
    }
}

/// What one run recorded.
#[derive(Debug, Default)]
struct RunOutput {
    /// Per request: arrival (s from the start) and TTFT (s), `None` if it failed.
    requests: Vec<(f64, Option<f64>)>,
    /// Decisions that changed the count: (s, from, to).
    decisions: Vec<(f64, u32, u32)>,
    events: Vec<PoolEvent>,
}

struct Context {
    capacity: f64,
    demand_at_70: f64,
    in_flight_at_70: f64,
    cold_start: Duration,
    seed: u64,
}

/// The recommender `name` for a run of `records` whose arrivals count from `origin` (`None`: the
/// fixed pool).
fn recommender(
    name: &str,
    ctx: &Context,
    origin: Instant,
    records: &[TraceRecord],
) -> Option<Box<dyn Recommender>> {
    let bounds = Bounds::new(BURST_BOUNDS.0, BURST_BOUNDS.1);
    Some(match name {
        "clairvoyant" => Box::new(Clairvoyant::new(
            ClairvoyantConfig {
                capacity_rps: ctx.capacity,
                target_utilisation: 0.7,
                lead: ctx.cold_start,
                rate_window: Duration::from_secs(10),
                hold: Duration::ZERO,
                bounds,
            },
            origin,
            records,
        )),
        "switchyard" => Box::new(LlmAware::new(LlmAwareConfig {
            cold_start: ctx.cold_start,
            target_utilisation: ctx.demand_at_70,
            bounds,
            ..LlmAwareConfig::default()
        })),
        "hpa" => {
            Box::new(Hpa::new(HpaConfig { target: ctx.in_flight_at_70, bounds, ..HpaConfig::default() }))
        }
        "kpa" => Box::new(Kpa::new(KpaConfig {
            target: ctx.in_flight_at_70 / 0.7,
            bounds,
            ..KpaConfig::default()
        })),
        "llm-d" => Box::new(Saturation::new(SaturationConfig { bounds, ..SaturationConfig::default() })),
        _ => return None,
    })
}

/// The board's signals, with each replica's engine state as a scrape of its metrics would give
/// it (the way llm-d's autoscaler reads vLLM's queue and KV-cache gauges), rather than the last
/// ORCA report, which arrives only when a response ends and goes stale under heavy queueing.
struct ScrapedSignals {
    board: BoardSignals,
    pool: SimPool,
}

impl SignalSource for ScrapedSignals {
    fn sample(&mut self) -> Option<Signals> {
        let mut signals = self.board.sample()?;
        let scraped = self.pool.scrape();
        for replica in &mut signals.replicas {
            if let Some((_, report)) = scraped.iter().find(|(id, _)| *id == replica.id) {
                replica.report = Some(report.clone());
            }
        }
        Some(signals)
    }
}

/// Replays `records` through a pool of `initial` replicas sized by the autoscaler `name` (the
/// fixed pool: none).
async fn run_one(
    records: &[TraceRecord],
    name: &str,
    ctx: &Context,
    initial: u32,
) -> Result<RunOutput, LabError> {
    let cold_start = ctx.cold_start;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let mut balancer =
        Balance::new(ReceiverStream::new(rx)).with_policy(balancer_policy()).with_completion(SimCompletion);
    let board = balancer.board();
    let pool = SimPool::new(tx, board.clone(), EngineConfig::default(), cold_start);
    pool.start_ready(initial).await.map_err(|e| LabError::Setting(e.to_string()))?;
    let start = Instant::now();
    let decisions: Arc<Mutex<Vec<(f64, u32, u32)>>> = Arc::default();
    let loop_task = recommender(name, ctx, start, records).map(|recommender| {
        let decisions = decisions.clone();
        let signals = ScrapedSignals { board: BoardSignals::new(board.clone()), pool: pool.clone() };
        let autoscaler = Autoscaler::new(signals, recommender, pool.clone());
        tokio::spawn(autoscaler.run(move |d| {
            if d.changed() {
                let at = d.at.saturating_duration_since(start).as_secs_f64();
                decisions.lock().unwrap_or_else(PoisonError::into_inner).push((
                    at,
                    d.before.desired,
                    d.recommendation.desired,
                ));
            }
        }))
    });
    let outcomes: Arc<Mutex<Vec<Arrival>>> = Arc::new(Mutex::new(vec![(0.0, None); records.len()]));
    let mut tasks = Vec::with_capacity(records.len());
    let arrivals = switchyard_sim::paced(records.iter().cloned(), 1.0).enumerate();
    let mut arrivals = std::pin::pin!(arrivals);
    while let Some((i, record)) = arrivals.next().await {
        let arrived_at = Instant::now();
        let arrived = arrived_at.saturating_duration_since(start).as_secs_f64();
        let mut request = http::Request::new(GenerationRequest::from(&record));
        request.extensions_mut().insert(RequestSize::new(record.prompt_tokens, record.output_tokens));
        let response = match balancer.ready().await {
            Ok(ready) => ready.call(request),
            Err(_) => {
                set(&outcomes, i, (arrived, None));
                continue;
            }
        };
        let outcomes = outcomes.clone();
        tasks.push(tokio::spawn(async move {
            let ttft = match response.await {
                Ok(tokens) => read_tokens(tokens, arrived_at, |_| {}).await.first.map(|d| d.as_secs_f64()),
                Err(_) => None,
            };
            set(&outcomes, i, (arrived, ttft));
        }));
    }
    for task in tasks {
        // A task only ends by finishing its body: a join error would be a panic, already reported.
        let _ = task.await;
    }
    if let Some(task) = loop_task {
        task.abort();
    }
    pool.shutdown();
    let requests = std::mem::take(&mut *outcomes.lock().unwrap_or_else(PoisonError::into_inner));
    let decisions = std::mem::take(&mut *decisions.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(RunOutput { requests, decisions, events: pool.events() })
}

/// A request's arrival (s from the start) and TTFT (s), `None` if it failed.
type Arrival = (f64, Option<f64>);

fn set(outcomes: &Mutex<Vec<Arrival>>, i: usize, value: Arrival) {
    if let Some(slot) = outcomes.lock().unwrap_or_else(PoisonError::into_inner).get_mut(i) {
        *slot = value;
    }
}

/// Rates over `window`-second windows of `records`' arrivals.
fn window_rates(records: &[TraceRecord], window: f64, duration: f64) -> Vec<f64> {
    let n = (duration / window).ceil().max(1.0) as usize;
    let mut counts = vec![0usize; n];
    for r in records {
        let i = (r.at.as_secs_f64() / window) as usize;
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    // The last window may be partial: leave it out unless it is the only one.
    let whole = if n > 1 && duration % window != 0.0 { n - 1 } else { n };
    counts[..whole].iter().map(|&c| c as f64 / window).collect()
}

fn workload(
    name: &'static str,
    records: Vec<TraceRecord>,
    duration: f64,
    step: Option<(f64, f64)>,
) -> Workload {
    let rates = window_rates(&records, 30.0, duration);
    let peak_rate = rates.iter().copied().fold(0.0, f64::max);
    let initial_rate = rates.first().copied().unwrap_or(0.0);
    Workload { name, records, duration, initial_rate, peak_rate, step }
}

/// The trace accelerated until its busiest 300 s (trace time) window offers 4.5 × `capacity`,
/// with every window thinned to `capacity × (1 + 3.5 × (r − r_min) / (r_max − r_min))`.
fn azure(records: &[TraceRecord], capacity: f64) -> Result<Workload, LabError> {
    const WINDOW: f64 = 300.0;
    const PEAK: f64 = 4.5;
    let span = records.last().map_or(0.0, |r| r.at.as_secs_f64());
    let rates = window_rates(records, WINDOW, span);
    let (lo, hi) = rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    if rates.len() < 2 || hi <= lo {
        return Err(LabError::Setting(
            "the trace's load does not swing over 300 s windows: nothing to stretch".into(),
        ));
    }
    let speedup = PEAK * capacity / hi;
    let mut kept = Vec::new();
    let mut credit = vec![0.0f64; rates.len()];
    for r in records {
        let t = r.at.as_secs_f64();
        let w = (t / WINDOW) as usize;
        let Some(&rate) = rates.get(w) else { break };
        // The wanted rate (accelerated time) over the one this window offers accelerated.
        let wanted = capacity * (1.0 + (PEAK - 1.0) * (rate - lo) / (hi - lo));
        let keep = (wanted / (rate * speedup)).min(1.0);
        credit[w] += keep;
        if credit[w] >= 1.0 - 1e-9 {
            credit[w] -= 1.0;
            kept.push(TraceRecord { at: Duration::from_secs_f64(t / speedup), ..r.clone() });
        }
    }
    let duration = rates.len() as f64 * WINDOW / speedup;
    tracing::info!(speedup, duration, requests = kept.len(), "lab burst: the trace stretched");
    Ok(workload("azure", kept, duration, None))
}

fn synthetic(
    name: &'static str,
    pattern: Pattern,
    lengths: &LengthSampler,
    seconds: u64,
    seed: u64,
    step: Option<(f64, f64)>,
) -> Workload {
    let records: Vec<TraceRecord> =
        Synthetic::new(pattern, lengths.clone(), Duration::from_secs(seconds), seed).collect();
    workload(name, records, seconds as f64, step)
}

/// Steady load at `rate` with a new uniform ±20 % rate every 10 s.
fn steady(rate: f64, lengths: &LengthSampler, seconds: u64, seed: u64) -> Workload {
    let mut records = Vec::new();
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for segment in 0..seconds / 10 {
        // splitmix64: a reproducible uniform in [0, 1).
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let u = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
        let pattern = Pattern::Poisson { rate: rate * (0.8 + 0.4 * u) };
        let offset = Duration::from_secs(segment * 10);
        records.extend(
            Synthetic::new(pattern, lengths.clone(), Duration::from_secs(10), seed.wrapping_add(segment))
                .map(|r| TraceRecord { at: r.at + offset, ..r }),
        );
    }
    workload("steady", records, seconds as f64, None)
}

fn summarise(w: &Workload, autoscaler: &str, run: &RunOutput, slo: f64, capacity: f64) -> BurstResult {
    let requests = run.requests.len();
    let failed = run.requests.iter().filter(|(_, t)| t.is_none()).count();
    let within = run.requests.iter().filter(|(_, t)| t.is_some_and(|t| t <= slo)).count();
    let mut ttfts: Vec<f64> = run.requests.iter().filter_map(|&(_, t)| t.map(|t| t * 1e3)).collect();
    let p = Percentiles::of(&mut ttfts);
    // Replica-seconds: the provisioned count, a step function of the events, over the workload.
    let mut replica_seconds = 0.0;
    for pair in run.events.windows(2) {
        let (a, b) = (pair[0].at.min(w.duration), pair[1].at.min(w.duration));
        replica_seconds += f64::from(pair[0].provisioned) * (b - a);
    }
    if let Some(last) = run.events.last() {
        replica_seconds += f64::from(last.provisioned) * (w.duration - last.at).max(0.0);
    }
    let mut direction_changes = 0;
    let mut last_up: Option<bool> = None;
    for &(_, from, to) in &run.decisions {
        let up = to > from;
        if last_up.is_some_and(|l| l != up) {
            direction_changes += 1;
        }
        last_up = Some(up);
    }
    let max_replicas = run.events.iter().map(|e| e.desired).max().unwrap_or(0);
    let (decision_s, time_to_ready_s) = match w.step {
        Some((at, rate)) => {
            let needed = (rate / capacity).ceil() as u32;
            let decision =
                run.decisions.iter().find(|&&(t, from, to)| t >= at && to > from).map(|&(t, ..)| t - at);
            let ready = run.events.iter().find(|e| e.at >= at && e.ready >= needed).map(|e| e.at - at);
            let ready_before = run.events.iter().rev().find(|e| e.at < at).is_some_and(|e| e.ready >= needed);
            (decision, if ready_before { Some(0.0) } else { ready })
        }
        None => (None, None),
    };
    BurstResult {
        workload: w.name.to_string(),
        autoscaler: autoscaler.to_string(),
        requests,
        failed,
        slo_attainment: if requests == 0 { 0.0 } else { within as f64 / requests as f64 },
        ttft_p50_ms: p.p50,
        ttft_p99_ms: p.p99,
        replica_seconds,
        cost_vs_fixed_peak: 0.0,
        scale_events: run.decisions.len(),
        direction_changes,
        direction_changes_per_5min: direction_changes as f64 * 300.0 / w.duration.max(1.0),
        max_replicas,
        decision_s,
        time_to_ready_s,
    }
}

/// The target utilisation of Switchyard's recommender for LLM replicas of `capacity` requests a
/// second on the mix of `records`, calibrated as this scenario calibrates it (one replica at 70 %
/// of its capacity, the demand the recommender reads off the board); in virtual time, so it must
/// run on a paused clock. `switchyard cluster` autoscales with it.
pub(crate) async fn switchyard_target(
    capacity: f64,
    records: &[TraceRecord],
    seed: u64,
) -> Result<f64, LabError> {
    let lengths = LengthSampler::from_trace(records).map_err(|e| LabError::Setting(e.to_string()))?;
    let (_, demand) = calibrate_at_70(capacity, &lengths, seed).await?;
    if demand.is_finite() && demand > 0.0 {
        Ok(demand)
    } else {
        Err(LabError::Setting("the calibration run gave Switchyard's recommender no demand".into()))
    }
}

/// One replica at 70 % of its capacity: its mean in flight (Little's law) and the mean demand
/// Switchyard's recommender reads off its board (sampled every second after the first 30 s).
async fn calibrate_at_70(capacity: f64, lengths: &LengthSampler, seed: u64) -> Result<(f64, f64), LabError> {
    let seconds = 120;
    let records: Vec<TraceRecord> = Synthetic::new(
        Pattern::Poisson { rate: 0.7 * capacity },
        lengths.clone(),
        Duration::from_secs(seconds),
        seed,
    )
    .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut balancer =
        Balance::new(ReceiverStream::new(rx)).with_policy(balancer_policy()).with_completion(SimCompletion);
    let pool = SimPool::new(tx, balancer.board(), EngineConfig::default(), Duration::ZERO);
    pool.start_ready(1).await.map_err(|e| LabError::Setting(e.to_string()))?;
    let mut signals = BoardSignals::new(balancer.board());
    let reader = tokio::spawn(async move {
        let mut aware = LlmAware::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut readings = Vec::new();
        let size = PoolSize { desired: 1, current: 1, ready: 1 };
        for second in 0..seconds {
            tick.tick().await;
            let sample = signals.sample_at(Instant::now());
            let demand = aware.recommend(Instant::now(), size, Some(&sample)).metric;
            if second >= 30
                && let Some(d) = demand
            {
                readings.push(d);
            }
        }
        readings.iter().sum::<f64>() / readings.len().max(1) as f64
    });
    let mut tasks = Vec::new();
    let arrivals = switchyard_sim::paced(records, 1.0);
    let mut arrivals = std::pin::pin!(arrivals);
    let start = Instant::now();
    while let Some(record) = arrivals.next().await {
        let mut request = http::Request::new(GenerationRequest::from(&record));
        request.extensions_mut().insert(RequestSize::new(record.prompt_tokens, record.output_tokens));
        let Ok(ready) = balancer.ready().await else { continue };
        let response = ready.call(request);
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            if let Ok(tokens) = response.await {
                read_tokens(tokens, begun, |_| {}).await.last.map(|d| d.as_secs_f64())
            } else {
                None
            }
        }));
    }
    let mut busy = 0.0;
    for task in tasks {
        busy += task.await.ok().flatten().unwrap_or(0.0);
    }
    let demand = reader.await.unwrap_or(0.0);
    pool.shutdown();
    let span = Instant::now().saturating_duration_since(start).as_secs_f64().max(1.0);
    Ok((busy / span, demand))
}

/// Runs the scenario: every workload under every autoscaler, each on a fresh paused runtime.
pub fn run_burst(options: &BurstOptions) -> Result<BurstReport, LabError> {
    const WORKLOADS: [&str; 4] = ["azure", "step", "spike", "steady"];
    if let Some(w) = options.workloads.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
        return Err(LabError::Setting(format!("burst: no workload {w:?} (one of {WORKLOADS:?})")));
    }
    if let Some(a) = options.autoscalers.iter().find(|a| !BURST_AUTOSCALERS.contains(&a.as_str())) {
        return Err(LabError::Setting(format!("burst: no autoscaler {a:?} (one of {BURST_AUTOSCALERS:?})")));
    }
    let chosen = |list: &[String], name: &str| list.is_empty() || list.iter().any(|n| n == name);
    let (records, trace_name) = match &options.trace {
        Some(path) => (trace::read_trace(path)?, path.display().to_string()),
        None => (crate::traces::azure_conv()?, "azure_llm_2023_conv.csv (bundled)".to_string()),
    };
    let lengths = LengthSampler::from_trace(&records).map_err(|e| LabError::Setting(e.to_string()))?;
    let capacity = run_paused(measure_capacity(&EngineConfig::default(), &records))??;
    let (in_flight, demand) = run_paused(calibrate_at_70(capacity, &lengths, options.seed))??;
    if !(demand.is_finite() && demand > 0.0) {
        return Err(LabError::Setting("the calibration run gave Switchyard's recommender no demand".into()));
    }
    tracing::info!(capacity, in_flight, demand, "lab burst: replica capacity measured");
    let ctx = Context {
        capacity,
        in_flight_at_70: in_flight,
        demand_at_70: demand,
        cold_start: options.cold_start,
        seed: options.seed,
    };
    let secs = Duration::from_secs;
    let workloads = vec![
        azure(&records, capacity)?,
        synthetic(
            "step",
            Pattern::Step { before: capacity, after: 5.0 * capacity, at: secs(120) },
            &lengths,
            360,
            ctx.seed,
            Some((120.0, 5.0 * capacity)),
        ),
        synthetic(
            "spike",
            Pattern::Spike { base: capacity, peak: 5.0 * capacity, start: secs(120), length: secs(20) },
            &lengths,
            360,
            ctx.seed,
            None,
        ),
        steady(2.0 * capacity, &lengths, 600, ctx.seed),
    ];
    let workloads: Vec<Workload> =
        workloads.into_iter().filter(|w| chosen(&options.workloads, w.name)).collect();
    let slo = options.slo_ttft.as_secs_f64();
    let mut infos = Vec::new();
    let mut results = Vec::new();
    let mut plots = Vec::new();
    for w in &workloads {
        let fixed = ((w.peak_rate / (0.8 * capacity)).ceil() as u32).max(1);
        let rates = window_rates(&w.records, 30.0, w.duration);
        infos.push(WorkloadInfo {
            workload: w.name.to_string(),
            requests: w.records.len(),
            duration_s: w.duration,
            peak_load: w.peak_rate / capacity,
            min_load: rates.iter().copied().fold(f64::MAX, f64::min) / capacity,
            fixed_peak_replicas: fixed,
        });
        let initial =
            ((w.initial_rate / (0.7 * capacity)).ceil() as u32).clamp(BURST_BOUNDS.0, BURST_BOUNDS.1);
        let mut runs = Vec::new();
        for name in BURST_AUTOSCALERS {
            if name != "fixed-peak" && !chosen(&options.autoscalers, name) {
                continue;
            }
            let start_with = if name == "fixed-peak" { fixed } else { initial };
            let run = run_paused(run_one(&w.records, name, &ctx, start_with))??;
            let result = summarise(w, name, &run, slo, capacity);
            tracing::info!(
                workload = w.name,
                autoscaler = name,
                slo = result.slo_attainment,
                "lab burst: run done"
            );
            results.push(result);
            runs.push((name.to_string(), run));
        }
        plots.push((w.name, w.duration, runs));
    }
    // Cost relative to the fixed pool on the same workload.
    let fixed_cost: Vec<(String, f64)> = results
        .iter()
        .filter(|r| r.autoscaler == "fixed-peak")
        .map(|r| (r.workload.clone(), r.replica_seconds))
        .collect();
    for r in &mut results {
        if let Some((_, f)) = fixed_cost.iter().find(|(w, _)| *w == r.workload) {
            r.cost_vs_fixed_peak = if *f > 0.0 { r.replica_seconds / f } else { 0.0 };
        }
    }
    if let Some(path) = &options.plot {
        for (name, duration, runs) in &plots {
            let file = super::burst_plot::plot_path(path, name);
            let series: Vec<super::burst_plot::Series> = runs
                .iter()
                .map(|(autoscaler, run)| {
                    super::burst_plot::Series::new(
                        autoscaler,
                        run.events.iter().map(|e| (e.at, e.desired, e.ready)).collect(),
                        &run.requests,
                    )
                })
                .collect();
            super::burst_plot::burst_plot(&file, name, *duration, &series, slo)
                .map_err(|e| LabError::Setting(e.to_string()))?;
        }
    }
    Ok(BurstReport {
        scenario: "burst".into(),
        seed: options.seed,
        trace: trace_name,
        replica_capacity_rps: capacity,
        in_flight_at_70: in_flight,
        switchyard_target: demand,
        cold_start_s: options.cold_start.as_secs_f64(),
        slo_ttft_ms: slo * 1e3,
        workloads: infos,
        results,
    })
}

/// The pool's balancer policy: the default one, its random draws seeded alike in every run (a
/// default balancer draws a seed of its own, `switchyard_balance::fresh_seed`), so that the
/// same options give the same report.
fn balancer_policy() -> PolicyHandle {
    PolicyHandle::of(PolicyKind::DEFAULT, 0)
}
