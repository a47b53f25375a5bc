//! One policy's run: the real [`Balance`] with a policy from the registry over simulated replicas.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use switchyard_balance::{Backend, Balance, PolicyHandle, PolicySpec, policy};
use switchyard_core::{Endpoint, EndpointId, RequestSize};
use switchyard_sim::{GenerationRequest, TraceRecord, workload};

use super::LabError;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::cluster::{ReplicaSpec, read_tokens, spawn_engines};
use super::replica::{Delay, SimCompletion, SimReplica};
use super::report::{RequestOutcome, RunRecord};

/// The seed of replica `i`'s delays ([`ReplicaSpec::delay`]) is this plus `i`.
const DELAY_SEED: u64 = 0x5eed;

/// Replays `records` at `time_scale` through a balancer with policy `kind` (random choices from
/// `seed`) over `replicas`, and records every request. Call inside a paused runtime
/// ([`run_paused`](super::cluster::run_paused)).
///
/// Whether requests carry their [`RequestSize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sizes {
    /// Every request carries its true prompt and output lengths, as the key layer extracts them.
    Known,
    /// No request carries a size: what a client that sends none (or a non-KServe protocol) gets.
    Unknown,
}

/// The arrival loop owns the balancer: at each arrival it waits for `poll_ready` and calls it,
/// which makes the pick and counts the request in flight at once; a task per request then
/// drives the response and reads its tokens, so requests overlap as they would behind a gateway.
pub(crate) async fn run_policy(
    spec: &PolicySpec,
    sizes: Sizes,
    seed: u64,
    replicas: &[ReplicaSpec],
    records: &[TraceRecord],
    time_scale: f64,
) -> Result<RunRecord, LabError> {
    run_policy_with(policy::registry().build(spec, seed)?, sizes, replicas, records, time_scale, |_| {
        Vec::new()
    })
    .await
}

/// [`run_policy`] with a policy built by the caller, and `attach`, given the replicas' engines
/// before the first request, to start tasks beside them (the precise prefix policy's event
/// delivery); they are aborted when the last request has ended.
pub(crate) async fn run_policy_with(
    policy: Arc<dyn switchyard_balance::Policy>,
    sizes: Sizes,
    replicas: &[ReplicaSpec],
    records: &[TraceRecord],
    time_scale: f64,
    attach: impl FnOnce(&[switchyard_sim::EngineHandle]) -> Vec<tokio::task::JoinHandle<()>>,
) -> Result<RunRecord, LabError> {
    run_balancers(vec![policy], |_| 0, sizes, replicas, records, time_scale, None, attach).await
}

/// Replays `records` through independent balancers over ONE set of replicas: balancer `k` has
/// policy `policies[k]` and its own board, and request `i` goes to balancer `balancer_of(i)`
/// (taken modulo the number of balancers). Each balancer sees only its own requests in flight
/// and the load reports of the responses it gets, as separate gateways or client processes do.
/// With one policy this is [`run_policy_with`]. Every outcome records its balancer.
///
/// With `load_reports`, every balancer also gets every replica's load report at that interval,
/// as a subscriber to the worker's out-of-band `OpenRcaService` does
/// ([`OobReports`](crate::oob_reports::OobReports)): balancer `b`'s stream from replica `r`
/// starts at a phase of its own within the interval (the golden-ratio sequence over `b` and
/// `r`), as independent subscriptions would.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_balancers(
    policies: Vec<Arc<dyn switchyard_balance::Policy>>,
    balancer_of: impl Fn(usize) -> usize,
    sizes: Sizes,
    replicas: &[ReplicaSpec],
    records: &[TraceRecord],
    time_scale: f64,
    load_reports: Option<Duration>,
    attach: impl FnOnce(&[switchyard_sim::EngineHandle]) -> Vec<tokio::task::JoinHandle<()>>,
) -> Result<RunRecord, LabError> {
    if policies.is_empty() {
        return Err(LabError::Setting("a run needs at least one balancer".to_string()));
    }
    let engines = spawn_engines(replicas)?;
    let attached = attach(&engines);
    let names: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
    let mut balancers: Vec<_> = policies
        .into_iter()
        .map(|policy| {
            let backends = replicas.iter().zip(&engines).enumerate().map(|(i, (spec, engine))| {
                let endpoint = Endpoint::new(spec.name.as_str(), format!("sim://{}", spec.name))
                    .with_weight(spec.weight());
                let replica = match spec.delay {
                    Some(mean) => SimReplica::with_delay(
                        engine.clone(),
                        Delay::exponential(mean, DELAY_SEED + i as u64),
                    ),
                    None => SimReplica::new(engine.clone()),
                };
                Backend::new(endpoint, replica)
            });
            Balance::from_backends(backends)
                .with_policy(PolicyHandle::new(policy))
                .with_completion(SimCompletion)
        })
        .collect();
    let count = balancers.len();
    let mut streams = Vec::new();
    if let Some(interval) = load_reports.filter(|i| !i.is_zero()) {
        let per_balancer = engines.len();
        for (b, balancer) in balancers.iter().enumerate() {
            for (r, (spec, engine)) in replicas.iter().zip(&engines).enumerate() {
                let phase = ((b * per_balancer + r) as f64 * 0.618_033_988_75).fract();
                streams.push(tokio::spawn(report_out_of_band(
                    balancer.board(),
                    EndpointId::from(spec.name.as_str()),
                    engine.clone(),
                    interval,
                    interval.mul_f64(phase),
                )));
            }
        }
    }

    let outcomes = Arc::new(Mutex::new(vec![RequestOutcome::default(); records.len()]));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(records.len());
    let arrivals = workload::paced(records.iter().cloned(), time_scale).enumerate();
    let mut arrivals = std::pin::pin!(arrivals);
    while let Some((i, record)) = arrivals.next().await {
        let arrived_at = Instant::now();
        let arrived = arrived_at.saturating_duration_since(start);
        let b = balancer_of(i) % count;
        let mut request = http::Request::new(GenerationRequest::from(&record));
        if sizes == Sizes::Known {
            // What the key-extraction layer puts in: the request's size.
            request.extensions_mut().insert(RequestSize::new(record.prompt_tokens, record.output_tokens));
        }
        if !record.prefix.is_empty() {
            // And its prefix blocks, when the trace has them.
            request.extensions_mut().insert(record.prefix.clone());
        }
        let Some(balancer) = balancers.get_mut(b) else { continue };
        let response = match balancer.ready().await {
            Ok(ready) => ready.call(request),
            Err(_) => {
                set(
                    &outcomes,
                    i,
                    RequestOutcome { arrived, dispatched: arrived, balancer: b, ..RequestOutcome::default() },
                );
                continue;
            }
        };
        let outcomes = outcomes.clone();
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcome =
                RequestOutcome { arrived, dispatched: arrived, balancer: b, ..RequestOutcome::default() };
            if let Ok(tokens) = response.await {
                outcome.replica =
                    tokens.endpoint().and_then(|id| names.iter().position(|n| n.as_str() == id.as_str()));
                let mut cached = 0;
                let times = read_tokens(tokens, arrived_at, |t| cached = t.cached_prompt_tokens).await;
                outcome.cached_prompt_tokens = cached;
                outcome.ttft = times.first;
                outcome.latency = times.last;
            }
            set(&outcomes, i, outcome);
        }));
    }
    for task in tasks {
        // A task only ends by finishing its body: a join error would be a panic, already reported.
        let _ = task.await;
    }
    for task in attached.into_iter().chain(streams) {
        task.abort();
    }
    for engine in &engines {
        engine.shutdown();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(RunRecord { outcomes })
}

/// One replica's out-of-band report stream to one balancer: its load every `interval`, from
/// `phase` on, recorded as the balancer records a trailer's.
async fn report_out_of_band(
    board: switchyard_balance::LoadBoard,
    id: EndpointId,
    engine: switchyard_sim::EngineHandle,
    interval: Duration,
    phase: Duration,
) {
    tokio::time::sleep(phase).await;
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        match board.state(&id) {
            Some(state) => state.record_report(engine.reported_load(), Instant::now()),
            None => return,
        }
    }
}

fn set(outcomes: &Mutex<Vec<RequestOutcome>>, i: usize, outcome: RequestOutcome) {
    if let Some(slot) = outcomes.lock().unwrap_or_else(PoisonError::into_inner).get_mut(i) {
        *slot = outcome;
    }
}
