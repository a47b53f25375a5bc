//! The replica as callers see it: [`EngineHandle`], a cheap-to-clone handle that submits
//! requests, reads the load, and is a tower [`Service`].

use std::fmt;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use switchyard_core::{PrefixBlocks, ReportedLoad};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use crate::config::{ConfigError, EngineConfig};
use crate::engine::{EngineShared, Progress, RequestState, run};
use crate::generation::Generation;
use crate::load::ReplicaLoad;

/// What to generate: the engine needs sizes, not text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerationRequest {
    /// Tokens in the prompt (at least 1).
    pub prompt_tokens: u32,
    /// The most output tokens to generate: exactly this many unless
    /// [`output_tokens`](Self::output_tokens) says the model stops earlier. The KV reservation
    /// at admission covers all of them.
    pub max_tokens: u32,
    /// Identities of the prompt's leading KV blocks, for the prefix cache; empty for none.
    pub prefix: PrefixBlocks,
    /// The caller's deadline (a gRPC call's `grpc-timeout`): if the request is still queued at
    /// this instant, the engine drops it before its prefill and its generation ends with
    /// [`SimError::DeadlineExceeded`](crate::SimError::DeadlineExceeded). `None` waits as long
    /// as it takes. Once admitted, a request runs to its end (or until its generation is
    /// dropped).
    pub deadline: Option<Instant>,
    /// Where the model stops on its own (its end-of-sequence token), if before `max_tokens`:
    /// the output is `min(output_tokens, max_tokens)` tokens, at least one. `None` runs to
    /// `max_tokens`. A real caller knows only `max_tokens`, an upper bound; this is the part of
    /// the answer only the model knows.
    pub output_tokens: Option<u32>,
}

impl GenerationRequest {
    /// A request without prefix identities (never served from the prefix cache).
    pub fn new(prompt_tokens: u32, max_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            max_tokens,
            prefix: PrefixBlocks::default(),
            deadline: None,
            output_tokens: None,
        }
    }

    /// The same request with prefix block identities.
    pub fn with_prefix(mut self, prefix: PrefixBlocks) -> Self {
        self.prefix = prefix;
        self
    }

    /// The same request with a deadline for leaving the queue (see [`deadline`](Self::deadline)).
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The same request with the model stopping on its own after `output_tokens` tokens (see
    /// [`output_tokens`](Self::output_tokens)).
    pub fn with_output_tokens(mut self, output_tokens: u32) -> Self {
        self.output_tokens = Some(output_tokens);
        self
    }
}

/// Why the engine refused a request at submission.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is full.
    #[error("the replica's queue is full ({max_queue} requests waiting)")]
    QueueFull {
        /// The queue's bound ([`EngineConfig::max_queue`]).
        max_queue: usize,
    },
    /// The request needs more KV cache than the replica has, so it could never be admitted.
    #[error(
        "a prompt of {prompt_tokens} tokens with {max_tokens} output tokens needs more KV cache than the replica's {kv_capacity_tokens} tokens"
    )]
    PromptTooLong {
        /// Prompt tokens asked for.
        prompt_tokens: u32,
        /// Output tokens asked for (their KV is reserved at admission too).
        max_tokens: u32,
        /// The replica's KV capacity ([`EngineConfig::kv_capacity_tokens`]).
        kv_capacity_tokens: u64,
    },
    /// More output tokens than the replica accepts.
    #[error("max_tokens {max_tokens} exceeds the replica's limit of {limit}")]
    MaxTokensTooLarge {
        /// Output tokens asked for.
        max_tokens: u32,
        /// The limit ([`EngineConfig::max_tokens_limit`]).
        limit: u32,
    },
    /// A prompt of zero tokens.
    #[error("the prompt is empty (prompt_tokens must be at least 1)")]
    EmptyPrompt,
    /// A request for zero output tokens.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// The engine has stopped and accepts no more work.
    #[error("the engine has stopped")]
    Stopped,
}

/// A handle to one simulated replica; cheap to clone.
///
/// [`spawn`](EngineHandle::spawn) starts the engine task. It runs until
/// [`shutdown`](EngineHandle::shutdown), or until every handle has been dropped and every
/// submitted request has finished or been cancelled.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<EngineShared>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.shared.lock().handles_gone = true;
        self.shared.wake.notify_one();
    }
}

impl fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineHandle").field("load", &self.load()).finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Validates `config` and spawns the engine's step loop on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Like [`tokio::spawn`], when called outside a tokio runtime.
    pub fn spawn(config: EngineConfig) -> Result<EngineHandle, ConfigError> {
        config.validate()?;
        let shared = Arc::new(EngineShared::new(config));
        tokio::spawn(run(shared.clone()));
        Ok(EngineHandle { inner: Arc::new(HandleInner { shared }) })
    }

    fn shared(&self) -> &Arc<EngineShared> {
        &self.inner.shared
    }

    /// Queues a request and returns its token stream.
    ///
    /// Refuses at once what could never be served (an empty prompt, zero or too many output
    /// tokens, more KV than the replica has) and what does not fit the queue.
    pub fn submit(&self, req: GenerationRequest) -> Result<Generation, SubmitError> {
        let config = self.config();
        if req.prompt_tokens == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::ZeroMaxTokens);
        }
        if req.max_tokens > config.max_tokens_limit {
            return Err(SubmitError::MaxTokensTooLarge {
                max_tokens: req.max_tokens,
                limit: config.max_tokens_limit,
            });
        }
        if u64::from(req.prompt_tokens) + u64::from(req.max_tokens) > config.kv_capacity_tokens {
            return Err(SubmitError::PromptTooLong {
                prompt_tokens: req.prompt_tokens,
                max_tokens: req.max_tokens,
                kv_capacity_tokens: config.kv_capacity_tokens,
            });
        }
        let shared = self.shared();
        let request = Arc::new(RequestState {
            prompt_tokens: req.prompt_tokens,
            max_tokens: req.max_tokens,
            output_tokens: req.output_tokens.map_or(req.max_tokens, |n| n.clamp(1, req.max_tokens)),
            prefix: req.prefix,
            submitted_at: Instant::now(),
            deadline: req.deadline,
            progress: Mutex::new(Progress::default()),
        });
        {
            let mut state = shared.lock();
            if state.stopped {
                return Err(SubmitError::Stopped);
            }
            if state.waiting.len() >= config.max_queue {
                return Err(SubmitError::QueueFull { max_queue: config.max_queue });
            }
            state.waiting.push_back(request.clone());
            shared.publish(&state);
        }
        shared.wake.notify_one();
        Ok(Generation::new(request, shared.clone()))
    }

    /// The latest load snapshot.
    pub fn load(&self) -> ReplicaLoad {
        self.shared().load_tx.borrow().clone()
    }

    /// A receiver that sees every new load snapshot.
    pub fn watch_load(&self) -> watch::Receiver<ReplicaLoad> {
        self.shared().load_tx.subscribe()
    }

    /// The prefix cache's block events after sequence `after` (at most `max_events` of them), or,
    /// when `after` is `None` or the events after it have left the ring, a snapshot of the blocks
    /// held now with the sequence it stands for. A subscriber that applies what it reads, in
    /// order, and asks again from the last sequence it applied misses no event and applies none
    /// twice.
    pub fn kv_read(&self, after: Option<u64>, max_events: usize) -> crate::KvRead {
        self.shared().lock().kv_read(after, max_events)
    }

    /// A receiver of the sequence number of the prefix cache's last block event: it changes when
    /// there is something new to [`kv_read`](Self::kv_read).
    pub fn watch_kv_sequence(&self) -> watch::Receiver<u64> {
        self.shared().kv_tx.subscribe()
    }

    /// The latest load as the replica reports it in its ORCA trailer (see
    /// [`ReplicaLoad::to_reported`]).
    pub fn reported_load(&self) -> ReportedLoad {
        self.load().to_reported()
    }

    /// The replica's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.shared().config
    }

    /// Stops the engine after its current step: unfinished generations end early (their
    /// [`collect_outcome`](Generation::collect_outcome) fails with
    /// [`SimError::Stopped`](crate::SimError::Stopped)) and later submissions fail with
    /// [`SubmitError::Stopped`].
    pub fn shutdown(&self) {
        self.shared().lock().stopped = true;
        self.shared().wake.notify_one();
    }

    /// Whether the engine has stopped (or is stopping) and accepts no more work.
    pub fn is_stopped(&self) -> bool {
        self.shared().lock().stopped
    }
}

/// Submitting as a tower service: always ready (the queue bound is enforced per call, as
/// [`SubmitError::QueueFull`]); the response is the request's token stream.
impl Service<GenerationRequest> for EngineHandle {
    type Response = Generation;
    type Error = SubmitError;
    type Future = Ready<Result<Generation, SubmitError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SubmitError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GenerationRequest) -> Self::Future {
        ready(self.submit(req))
    }
}
