//! The step loop: continuous batching with chunked prefill, KV admission and the prefix cache.
//!
//! One task per replica runs [`run`]. All engine state sits behind one mutex that the task takes
//! twice per step (to plan the step, then to emit its tokens) and never holds across an await;
//! submissions and load reads take it briefly. Every collection that decides behaviour is ordered
//! (`VecDeque`, `Vec` in admission order, the prefix cache's `BTreeMap`), so a run under the
//! paused clock is reproducible.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use switchyard_core::PrefixBlocks;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

use crate::config::{EngineConfig, ReplicaKind, StepShape};
use crate::load::ReplicaLoad;
use crate::prefix_cache::PrefixCache;

mod parallel;

/// State shared by the engine task, its handles and its generations.
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub(crate) config: EngineConfig,
    pub(crate) state: Mutex<EngineState>,
    /// Wakes the idle engine: a submission, the last handle gone, shutdown.
    pub(crate) wake: Notify,
    pub(crate) load_tx: watch::Sender<ReplicaLoad>,
    /// The sequence number of the prefix cache's last block event.
    pub(crate) kv_tx: watch::Sender<u64>,
}

impl EngineShared {
    pub(crate) fn new(config: EngineConfig) -> Self {
        let state = EngineState::new(&config);
        let load_tx = watch::Sender::new(state.snapshot(&config));
        Self { config, state: Mutex::new(state), wake: Notify::new(), load_tx, kv_tx: watch::Sender::new(0) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, EngineState> {
        // The state stays consistent between statements, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn publish(&self, state: &EngineState) {
        self.load_tx.send_replace(state.snapshot(&self.config));
        let last = state.cache.last_event();
        self.kv_tx.send_if_modified(|seq| std::mem::replace(seq, last) != last);
    }

    /// Takes `req` out of the engine at once, wherever it is (queued, prefilling or decoding),
    /// releasing its batch slot and KV reservation: its client has gone. A request that already
    /// finished or was aborted is not there any more, and nothing happens.
    pub(crate) fn cancel(&self, req: &Arc<RequestState>) {
        let mut state = self.lock();
        if state.remove(req) {
            state.cancelled += 1;
            self.publish(&state);
            drop(state);
            // Room was freed: let the engine admit the next request if it is idle.
            self.wake.notify_one();
        }
    }
}

/// One request as the engine and its [`Generation`](crate::Generation) both see it.
#[derive(Debug)]
pub(crate) struct RequestState {
    pub(crate) prompt_tokens: u32,
    pub(crate) max_tokens: u32,
    /// Tokens it generates before it stops: `max_tokens`, or fewer where the model stops on its
    /// own.
    pub(crate) output_tokens: u32,
    pub(crate) prefix: PrefixBlocks,
    pub(crate) submitted_at: Instant,
    /// Past this instant the request is dropped if it is still queued (its caller's deadline).
    pub(crate) deadline: Option<Instant>,
    pub(crate) progress: Mutex<Progress>,
}

impl RequestState {
    pub(crate) fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// What the engine has done for a request so far, with the model time of each milestone.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) emitted: u32,
    pub(crate) cached_prompt_tokens: u32,
    pub(crate) admitted_at: Option<Instant>,
    pub(crate) first_token_at: Option<Instant>,
    pub(crate) finished_at: Option<Instant>,
    /// The engine stopped before the request finished.
    pub(crate) aborted: bool,
    /// When the engine dropped the request from the queue, its deadline passed; it never ran.
    pub(crate) expired_at: Option<Instant>,
    pub(crate) waker: Option<Waker>,
}

/// The part of a step one running sequence takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Idle,
    Decode,
    Prefill(u32),
}

#[derive(Debug)]
struct Sequence {
    req: Arc<RequestState>,
    /// Prompt tokens whose KV exists (cached at admission or prefilled since).
    prefilled: u32,
    emitted: u32,
    reservation: u64,
    work: Work,
    /// When its service ends: set for a parallel-kind replica only.
    ends_at: Option<Instant>,
}

impl Sequence {
    fn decoding(&self) -> bool {
        self.prefilled >= self.req.prompt_tokens
    }
}

/// Everything the engine decides on.
#[derive(Debug)]
pub(crate) struct EngineState {
    pub(crate) waiting: VecDeque<Arc<RequestState>>,
    running: Vec<Sequence>,
    reserved_tokens: u64,
    cache: PrefixCache,
    hit_blocks: u64,
    lookup_blocks: u64,
    admitted_prompt_tokens: u64,
    cached_prompt_tokens: u64,
    completed: u64,
    cancelled: u64,
    expired: u64,
    /// No more work will be accepted: shutdown was asked for, or the task is gone.
    pub(crate) stopped: bool,
    /// Every `EngineHandle` has been dropped.
    pub(crate) handles_gone: bool,
}

impl EngineState {
    fn new(config: &EngineConfig) -> Self {
        Self {
            waiting: VecDeque::new(),
            running: Vec::new(),
            reserved_tokens: 0,
            cache: PrefixCache::new(config.block_tokens, config.kv_event_buffer),
            hit_blocks: 0,
            lookup_blocks: 0,
            admitted_prompt_tokens: 0,
            cached_prompt_tokens: 0,
            completed: 0,
            cancelled: 0,
            expired: 0,
            stopped: false,
            handles_gone: false,
        }
    }

    /// Block events after `after`, or a snapshot; see [`EngineHandle::kv_read`](crate::EngineHandle::kv_read).
    pub(crate) fn kv_read(&self, after: Option<u64>, max_events: usize) -> crate::KvRead {
        self.cache.kv_read(after, max_events)
    }

    pub(crate) fn snapshot(&self, config: &EngineConfig) -> ReplicaLoad {
        let kv_used_tokens = self.reserved_tokens.saturating_add(self.cache.tokens());
        let capacity = config.kv_capacity_tokens;
        let queued: u64 = self.waiting.iter().map(|r| u64::from(r.prompt_tokens)).sum();
        let prefilling: u64 =
            self.running.iter().map(|s| u64::from(s.req.prompt_tokens.saturating_sub(s.prefilled))).sum();
        ReplicaLoad {
            prefill_backlog_tokens: (!matches!(config.kind, ReplicaKind::Parallel { .. }))
                .then_some(queued + prefilling),
            queue_depth: u32::try_from(self.waiting.len()).unwrap_or(u32::MAX),
            running: u32::try_from(self.running.len()).unwrap_or(u32::MAX),
            max_batch: config.max_batch,
            kv_used_tokens,
            kv_capacity_tokens: capacity,
            kv_cache_utilization: if capacity == 0 {
                0.0
            } else {
                (kv_used_tokens as f64 / capacity as f64).min(1.0)
            },
            prefix_cache_blocks: self.cache.blocks(),
            prefix_hit_blocks: self.hit_blocks,
            prefix_lookup_blocks: self.lookup_blocks,
            prompt_tokens: self.admitted_prompt_tokens,
            cached_prompt_tokens: self.cached_prompt_tokens,
            completed: self.completed,
            cancelled: self.cancelled,
            expired: self.expired,
            oldest_queued_at: self.waiting.front().map(|r| r.submitted_at),
        }
    }

    /// Removes `req` from the queue or the batch, freeing its reservation; whether it was there.
    fn remove(&mut self, req: &Arc<RequestState>) -> bool {
        if let Some(i) = self.waiting.iter().position(|r| Arc::ptr_eq(r, req)) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| Arc::ptr_eq(&s.req, req)) {
            let seq = self.running.remove(i);
            self.reserved_tokens -= seq.reservation;
            return true;
        }
        false
    }

    /// Drops the queued requests whose deadline has passed at `now`, before they cost a prefill;
    /// returns the wakers of their generations, which end with a deadline error.
    fn drop_expired(&mut self, now: Instant) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let mut expired = 0;
        self.waiting.retain(|req| {
            if !req.expired(now) {
                return true;
            }
            let mut p = req.progress();
            p.expired_at = Some(now);
            p.aborted = true;
            wakers.extend(p.waker.take());
            expired += 1;
            false
        });
        self.expired += expired;
        wakers
    }

    /// Admits waiting requests in FIFO order while the batch and the KV cache have room.
    fn admit(&mut self, config: &EngineConfig, now: Instant) {
        let block_tokens = u64::from(config.block_tokens.max(1));
        while let Some(front) = self.waiting.front() {
            if self.running.len() >= config.max_batch as usize {
                break;
            }
            let reservation = u64::from(front.prompt_tokens) + u64::from(front.max_tokens);
            let reserved_after = self.reserved_tokens + reservation;
            if reserved_after > config.kv_capacity_tokens {
                break; // head of line: later requests wait behind this one
            }
            let Some(req) = self.waiting.pop_front() else { break };
            let ids = full_blocks(&req.prefix, req.prompt_tokens, block_tokens);
            self.cache.touch_leading(ids);
            self.cache.shrink_to(config.kv_capacity_tokens - reserved_after);
            let hits = self.cache.leading_hits(ids) as u64;
            self.hit_blocks += hits;
            self.lookup_blocks += ids.len() as u64;
            let cached = u32::try_from(hits.saturating_mul(block_tokens))
                .unwrap_or(u32::MAX)
                .min(req.prompt_tokens.saturating_sub(1));
            self.reserved_tokens = reserved_after;
            self.admitted_prompt_tokens += u64::from(req.prompt_tokens);
            self.cached_prompt_tokens += u64::from(cached);
            {
                let mut p = req.progress();
                p.admitted_at = Some(now);
                p.cached_prompt_tokens = cached;
            }
            self.running.push(Sequence {
                req,
                prefilled: cached,
                emitted: 0,
                reservation,
                work: Work::Idle,
                ends_at: None,
            });
        }
    }

    /// Chooses each running sequence's work for the next step, or `None` when nothing runs.
    fn plan(&mut self, config: &EngineConfig) -> Option<StepShape> {
        if self.running.is_empty() {
            return None;
        }
        let mut shape = StepShape::default();
        let mut budget = u64::from(config.max_batched_tokens);
        for seq in &mut self.running {
            seq.work = Work::Idle;
            if seq.decoding() && budget > 0 {
                seq.work = Work::Decode;
                shape.decode_tokens += 1;
                shape.context_tokens += u64::from(seq.req.prompt_tokens) + u64::from(seq.emitted);
                budget -= 1;
            }
        }
        for seq in &mut self.running {
            if !seq.decoding() && budget > 0 {
                let remaining = u64::from(seq.req.prompt_tokens - seq.prefilled);
                let n = remaining.min(budget);
                seq.work = Work::Prefill(n as u32);
                shape.add_prefill_chunk(u64::from(seq.prefilled), n);
                budget -= n;
            }
        }
        Some(shape)
    }

    /// Applies the step that ended at `end`: emits tokens, retires finished requests, caches
    /// the prefixes of completed prefills. Returns the wakers of the generations to wake.
    fn finish_step(&mut self, config: &EngineConfig, end: Instant) -> Vec<Waker> {
        let block_tokens = u64::from(config.block_tokens.max(1));
        let mut wakers = Vec::new();
        let mut to_cache: Vec<(PrefixBlocks, u32)> = Vec::new();
        for seq in &mut self.running {
            let first_token = match seq.work {
                Work::Idle => continue,
                Work::Decode => {
                    seq.emitted += 1;
                    false
                }
                Work::Prefill(n) => {
                    seq.prefilled += n;
                    if !seq.decoding() {
                        continue;
                    }
                    seq.emitted = 1;
                    to_cache.push((seq.req.prefix.clone(), seq.req.prompt_tokens));
                    true
                }
            };
            let mut p = seq.req.progress();
            p.emitted = seq.emitted;
            if first_token {
                p.first_token_at = Some(end);
            }
            if seq.emitted >= seq.req.output_tokens {
                p.finished_at = Some(end);
            }
            wakers.extend(p.waker.take());
        }
        let mut freed = 0;
        let mut done = 0;
        self.running.retain(|s| {
            let keep = s.emitted < s.req.output_tokens;
            if !keep {
                freed += s.reservation;
                done += 1;
            }
            keep
        });
        self.reserved_tokens -= freed;
        self.completed += done;
        let room = config.kv_capacity_tokens - self.reserved_tokens;
        for (prefix, prompt_tokens) in &to_cache {
            self.cache.insert(full_blocks(prefix, *prompt_tokens, block_tokens), room);
        }
        wakers
    }

    /// Marks every unfinished request aborted; returns the wakers to wake.
    fn abort_all(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let reqs = self.waiting.drain(..).chain(self.running.drain(..).map(|s| s.req));
        for req in reqs {
            let mut p = req.progress();
            p.aborted = true;
            wakers.extend(p.waker.take());
        }
        self.reserved_tokens = 0;
        wakers
    }
}

/// The ids of the prompt's full blocks: a partial last block is never cached or looked up.
fn full_blocks(prefix: &PrefixBlocks, prompt_tokens: u32, block_tokens: u64) -> &[u64] {
    let full = (u64::from(prompt_tokens) / block_tokens).min(prefix.len() as u64) as usize;
    &prefix.ids()[..full]
}

/// Marks the engine stopped and aborts its requests when the task ends, however it ends (also
/// when the runtime drops the task).
struct StopGuard(Arc<EngineShared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let wakers = {
            let mut state = self.0.lock();
            state.stopped = true;
            let wakers = state.abort_all();
            self.0.publish(&state);
            wakers
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The engine task: runs steps while there is work, sleeps on `wake` while idle, and returns
/// on shutdown or once every handle and every request is gone.
pub(crate) async fn run(shared: Arc<EngineShared>) {
    let _guard = StopGuard(shared.clone());
    let config = &shared.config;
    if let Some(service_time) = config.parallel_service_time() {
        return parallel::run(&shared, service_time).await;
    }
    // When busy, the next step starts exactly where the last one ended (no drift).
    let mut busy_until: Option<Instant> = None;
    loop {
        let (step, expired, done) = {
            let mut state = shared.lock();
            if state.stopped {
                return;
            }
            let start = busy_until.unwrap_or_else(Instant::now);
            let expired = state.drop_expired(start);
            state.admit(config, start);
            let step = state.plan(config).map(|shape| start + config.step_time(&shape));
            shared.publish(&state);
            let done = step.is_none() && state.handles_gone && state.waiting.is_empty();
            (step, expired, done)
        };
        expired.into_iter().for_each(Waker::wake);
        if done {
            return;
        }
        let Some(end) = step else {
            busy_until = None;
            shared.wake.notified().await;
            continue;
        };
        sleep_until(end).await;
        let wakers = {
            let mut state = shared.lock();
            let wakers = state.finish_step(config, end);
            shared.publish(&state);
            wakers
        };
        wakers.into_iter().for_each(Waker::wake);
        busy_until = Some(end);
    }
}
