//! The ideal: a reference no balancer can reach, to measure the policies against.
//!
//! A balancer in front of model servers knows little: what it sent where, how long answers
//! took, and what the replicas say in their load reports. The ideal knows everything the
//! simulation knows, and uses it to minimise each request's time to first token (TTFT):
//!
//! - **Every request's true size**: its prompt and output tokens (a policy sees neither).
//! - **Every replica's true speed and cost model**: its [`EngineConfig`], so
//!   [`EngineConfig::step_time`] gives the exact duration of any step it could run.
//! - **Every replica's live state, exactly**: the ideal is the only client of the replicas and
//!   reads every token they emit, so it keeps a ledger per replica of the requests submitted
//!   and not finished, in the engine's own FIFO order, and for each whether it still prefills
//!   (no token yet) or decodes, and how many tokens it has. This is finer than
//!   [`EngineHandle::load`](switchyard_sim::EngineHandle::load), which counts requests but
//!   does not say whose prefill is pending; under the paused clock the ledger changes at the
//!   same virtual instants as the engine.
//!
//! # The rule
//!
//! Requests wait in **one central FIFO queue**. The head is sent as soon as some replica can
//! *admit it at once*: fewer requests than `max_batch` in its ledger, and the KV reservations
//! (`prompt + output` tokens of each) plus the head's own fit in `kv_capacity_tokens` (an idle
//! replica admits anything, so a request no replica can hold is refused by the engine, not
//! held forever). Among the replicas that can admit it, the head goes to the one with the
//! **smallest predicted TTFT**, ties to the faster replica, then to the lower index. Nothing
//! overtakes the head.
//!
//! The predicted TTFT replays the engine's step loop (see the `switchyard_sim` crate docs) on the
//! ledger: each step, every decoding request takes one token of the `max_batched_tokens` budget
//! and the rest goes to prefill chunks of the pending prompts in FIFO order, the head's own
//! prompt last; each step costs `step_time` of its shape (decodes, resident context, prefill
//! chunks with their quadratic attention term) at the replica's speed; prompts that complete
//! join the decoders, and decoders' contexts grow by a token a step. The prediction is the sum
//! of the steps up to and including the one that completes the head's prompt. It leaves out
//! what nobody can know at dispatch (requests that arrive later and share the steps) and two
//! small things the ledger does not carry: the rest of the step the replica is running (up to
//! one step), and prefill already done on a prompt that has not produced its first token (its
//! whole prompt counts, so long prompts are slightly overestimated, on every replica alike).
//!
//! So a short prompt may go to the slow replica when every fast one is busy prefilling, and a
//! long one waits its turn on a fast one; a replica deep in decodes, whose steps are long, is
//! avoided in proportion. The central queue matters when replicas fill up (batch slots or KV):
//! then requests wait for the first slot anywhere instead of queueing behind one replica.
//!
//! The ideal optimises TTFT alone: it will use a slow replica whenever that starts a request
//! sooner, even though the request then decodes more slowly, so its end-to-end latency is a
//! reference for TTFT-first routing, not a bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use switchyard_sim::{
    ConfigError, EngineConfig, EngineHandle, GenerationRequest, StepShape, TraceRecord, workload,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cluster::{ReplicaSpec, read_tokens, spawn_engines};
use super::report::{RequestOutcome, RunRecord};

/// One request in a replica's ledger.
#[derive(Debug, Clone, Copy)]
struct Job {
    /// The request's index in the workload.
    id: usize,
    prompt: u32,
    output: u32,
    /// Tokens emitted so far; 0 while the prompt is waiting or prefilling.
    emitted: u32,
}

#[derive(Debug)]
struct Replica {
    engine: EngineHandle,
    config: EngineConfig,
    /// Requests submitted and not finished, in submission (= the engine's admission) order.
    jobs: Vec<Job>,
}

impl Replica {
    /// Whether the engine would admit `req` without queueing it (see the module docs).
    fn can_admit(&self, req: &GenerationRequest) -> bool {
        if self.jobs.is_empty() {
            return true;
        }
        let reserved: u64 = self.jobs.iter().map(|j| u64::from(j.prompt) + u64::from(j.output)).sum();
        let need = u64::from(req.prompt_tokens) + u64::from(req.max_tokens);
        self.jobs.len() < self.config.max_batch as usize && reserved + need <= self.config.kv_capacity_tokens
    }

    /// The TTFT of a `prompt`-token request submitted now (see the module docs).
    fn predicted_ttft(&self, prompt: u32) -> Duration {
        let config = &self.config;
        let mut decodes = 0u64;
        let mut context = 0u64;
        let mut prefills = Vec::with_capacity(self.jobs.len() + 1);
        for job in &self.jobs {
            if job.emitted > 0 {
                decodes += 1;
                context += u64::from(job.prompt) + u64::from(job.emitted);
            } else {
                prefills.push(u64::from(job.prompt));
            }
        }
        prefills.push(u64::from(prompt));

        let mut total = Duration::ZERO;
        let (mut next, mut done) = (0usize, 0u64);
        while next < prefills.len() {
            let mut budget = u64::from(config.max_batched_tokens).saturating_sub(decodes).max(1);
            let mut shape =
                StepShape { context_tokens: context, decode_tokens: decodes, ..StepShape::default() };
            let (mut joined, mut joined_context) = (0u64, 0u64);
            while budget > 0 && next < prefills.len() {
                let n = (prefills[next] - done).min(budget);
                shape.add_prefill_chunk(done, n);
                budget -= n;
                done += n;
                if done == prefills[next] {
                    joined += 1;
                    joined_context += prefills[next] + 1;
                    next += 1;
                    done = 0;
                }
            }
            total = total.saturating_add(config.step_time(&shape));
            context += decodes + joined_context;
            decodes += joined;
        }
        total
    }
}

/// A request in the central queue.
#[derive(Debug)]
struct Waiting {
    id: usize,
    request: GenerationRequest,
    arrived_at: Instant,
}

#[derive(Debug)]
struct Dispatcher {
    replicas: Vec<Replica>,
    queue: VecDeque<Waiting>,
    outcomes: Vec<RequestOutcome>,
    tasks: Vec<JoinHandle<()>>,
    start: Instant,
}

type SharedDispatcher = Arc<Mutex<Dispatcher>>;

fn lock(shared: &SharedDispatcher) -> MutexGuard<'_, Dispatcher> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Dispatcher {
    /// The replica the head of the queue should go to now, if any can admit it.
    fn choose(&self, head: &GenerationRequest) -> Option<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.can_admit(head))
            .map(|(i, r)| (r.predicted_ttft(head.prompt_tokens), r.config.speed, i))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)))
            .map(|(_, _, i)| i)
    }

    /// Sends queued requests, in order, while the head can start somewhere at once.
    fn dispatch(&mut self, shared: &SharedDispatcher) {
        while let Some(head) = self.queue.front() {
            let Some(r) = self.choose(&head.request) else { return };
            let Some(waiting) = self.queue.pop_front() else { return };
            let now = Instant::now();
            let outcome = &mut self.outcomes[waiting.id];
            outcome.dispatched = now.saturating_duration_since(self.start);
            let replica = &mut self.replicas[r];
            let Ok(generation) = replica.engine.submit(waiting.request.clone()) else {
                continue; // refused: the outcome stays a failure
            };
            outcome.replica = Some(r);
            replica.jobs.push(Job {
                id: waiting.id,
                prompt: waiting.request.prompt_tokens,
                output: waiting.request.max_tokens,
                emitted: 0,
            });
            let shared = shared.clone();
            self.tasks.push(tokio::spawn(async move {
                let id = waiting.id;
                let times = read_tokens(generation, waiting.arrived_at, |_| {
                    if let Some(job) = lock(&shared).replicas[r].jobs.iter_mut().find(|j| j.id == id) {
                        job.emitted += 1;
                    }
                })
                .await;
                let mut d = lock(&shared);
                d.replicas[r].jobs.retain(|j| j.id != id);
                d.outcomes[id].ttft = times.first;
                d.outcomes[id].latency = times.last;
                d.dispatch(&shared);
            }));
        }
    }
}

/// Replays `records` at `time_scale` through the ideal dispatcher over `replicas` and records
/// every request. Call inside a paused runtime ([`run_paused`](super::cluster::run_paused)).
pub(crate) async fn run_ideal(
    replicas: &[ReplicaSpec],
    records: &[TraceRecord],
    time_scale: f64,
) -> Result<RunRecord, ConfigError> {
    let engines = spawn_engines(replicas)?;
    let start = Instant::now();
    let shared: SharedDispatcher = Arc::new(Mutex::new(Dispatcher {
        replicas: replicas
            .iter()
            .zip(&engines)
            .map(|(spec, engine)| Replica {
                engine: engine.clone(),
                config: spec.config.clone(),
                jobs: Vec::new(),
            })
            .collect(),
        queue: VecDeque::new(),
        outcomes: vec![RequestOutcome::default(); records.len()],
        tasks: Vec::new(),
        start,
    }));

    let arrivals = workload::paced(records.iter().cloned(), time_scale).enumerate();
    let mut arrivals = std::pin::pin!(arrivals);
    while let Some((id, record)) = arrivals.next().await {
        let arrived_at = Instant::now();
        let mut d = lock(&shared);
        let arrived = arrived_at.saturating_duration_since(start);
        d.outcomes[id] = RequestOutcome { arrived, dispatched: arrived, ..RequestOutcome::default() };
        d.queue.push_back(Waiting { id, request: GenerationRequest::from(&record), arrived_at });
        d.dispatch(&shared);
    }
    loop {
        let tasks = std::mem::take(&mut lock(&shared).tasks);
        if tasks.is_empty() {
            // Every replica is idle, so the queue is empty too: an idle replica admits anything.
            break;
        }
        for task in tasks {
            // A task only ends by finishing its body: a join error would be a panic, already reported.
            let _ = task.await;
        }
    }
    for engine in &engines {
        engine.shutdown();
    }
    let outcomes = std::mem::take(&mut lock(&shared).outcomes);
    Ok(RunRecord { outcomes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(speed: f64, jobs: Vec<Job>) -> Replica {
        let config = EngineConfig { speed, ..EngineConfig::default() };
        Replica { engine: EngineHandle::spawn(config.clone()).unwrap(), config, jobs }
    }

    fn job(id: usize, prompt: u32, emitted: u32) -> Job {
        Job { id, prompt, output: 100, emitted }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_replica_predicts_its_prefill_time() {
        let idle = replica(1.0, vec![]);
        assert_eq!(idle.predicted_ttft(2000), idle.config.prefill_time(2000));
        let slow = replica(0.25, vec![]);
        assert_eq!(slow.predicted_ttft(2000), slow.config.prefill_time(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_prefills_and_decodes_delay_the_first_token() {
        let idle = replica(1.0, vec![]).predicted_ttft(1000);
        let decoding = replica(1.0, (0..50).map(|i| job(i, 1000, 10)).collect()).predicted_ttft(1000);
        let backlog = replica(1.0, vec![job(0, 8000, 0), job(1, 4000, 0)]).predicted_ttft(1000);
        assert!(decoding > idle, "{decoding:?} vs {idle:?}");
        assert!(backlog > decoding, "{backlog:?} vs {decoding:?}");
        // A quarter-speed idle replica beats a full-speed one with 12k prompt tokens ahead.
        assert!(replica(0.25, vec![]).predicted_ttft(1000) < backlog);
    }

    /// The prediction against the engine itself, with a backlog: requests decoding and a long
    /// prompt waiting ahead of the one predicted. The prediction leaves out the rest of the step
    /// running when the request arrives, so it may fall short of the truth by at most one step.
    #[tokio::test(start_paused = true)]
    async fn the_predicted_ttft_is_the_engine_s_with_a_backlog() {
        for speed in [1.0, 0.25] {
            let config = EngineConfig { speed, ..EngineConfig::default() };
            let engine = EngineHandle::spawn(config.clone()).unwrap();
            // Four requests prefill together in one step and then decode.
            let mut decoding: Vec<_> =
                (0..4).map(|_| engine.submit(GenerationRequest::new(1000, 500)).unwrap()).collect();
            for generation in &mut decoding {
                assert_eq!(generation.next().await.unwrap().index, 0);
            }
            let mut jobs: Vec<Job> =
                (0..4).map(|i| Job { id: i, prompt: 1000, output: 500, emitted: 1 }).collect();
            // A long prompt queued behind them, then the request whose first token is predicted.
            let long = engine.submit(GenerationRequest::new(6000, 10)).unwrap();
            jobs.push(Job { id: 4, prompt: 6000, output: 10, emitted: 0 });
            let replica = Replica { engine: engine.clone(), config: config.clone(), jobs };
            let predicted = replica.predicted_ttft(1000);
            let actual =
                engine.submit(GenerationRequest::new(1000, 1)).unwrap().collect_outcome().await.unwrap().ttft;
            let one_step = config.decode_step_time(4, 1001);
            assert!(
                actual >= predicted && actual - predicted <= one_step + Duration::from_millis(1),
                "speed {speed}: predicted {predicted:?}, the engine took {actual:?} (one step {one_step:?})"
            );
            // The backlog matters: the prediction is far from the idle prefill time.
            assert!(predicted > 2 * config.prefill_time(1000), "{predicted:?}");
            drop((decoding, long));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn admission_needs_a_slot_and_kv_room() {
        let r = replica(1.0, vec![job(0, 390_000, 0)]);
        assert!(!r.can_admit(&GenerationRequest::new(20_000, 10)));
        assert!(r.can_admit(&GenerationRequest::new(1_000, 10)));
        assert!(replica(1.0, vec![]).can_admit(&GenerationRequest::new(500_000, 10)));
    }
}
