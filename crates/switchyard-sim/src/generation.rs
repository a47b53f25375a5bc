//! One request's output: a stream of tokens, and its timings once it is done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::engine::{EngineShared, RequestState};

/// One generated token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// Position in the output, from 0.
    pub index: u32,
    /// Whether this is the request's last token.
    pub last: bool,
    /// Prompt tokens the prefix cache served (skipped by prefill) for this request.
    pub cached_prompt_tokens: u32,
}

/// How a finished request went, in engine (virtual) time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationOutcome {
    /// Prompt tokens of the request.
    pub prompt_tokens: u32,
    /// Of those, how many the prefix cache served.
    pub cached_prompt_tokens: u32,
    /// Output tokens generated (the request's `max_tokens`, or fewer where the model stopped on
    /// its own).
    pub output_tokens: u32,
    /// From submission to admission into the running batch.
    pub queued: Duration,
    /// From submission to the first token (time to first token).
    pub ttft: Duration,
    /// From submission to the last token.
    pub total: Duration,
}

impl GenerationOutcome {
    /// Mean time between output tokens after the first (0 for a one-token output).
    pub fn time_per_output_token(&self) -> Duration {
        match self.output_tokens {
            0 | 1 => Duration::ZERO,
            n => self.total.saturating_sub(self.ttft) / (n - 1),
        }
    }
}

/// Why a generation ended without its last token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The engine stopped (shutdown, or its runtime went away) before the request finished.
    #[error("the engine stopped after {generated} of {expected} output tokens")]
    Stopped {
        /// Tokens generated before the stop.
        generated: u32,
        /// Tokens the request asked for.
        expected: u32,
    },
    /// The request's deadline passed while it waited in the queue, so the engine dropped it
    /// before its prefill.
    #[error("the deadline passed after {queued:?} in the queue, before the request ran")]
    DeadlineExceeded {
        /// Time spent in the queue.
        queued: Duration,
    },
}

/// One request's token stream, returned by [`EngineHandle::submit`](crate::EngineHandle::submit).
///
/// Yields [`Token`]s as the engine's steps produce them and ends after the last one, or early if
/// the engine stopped. Tokens are not queued per request: the engine only advances a counter, so
/// a slow reader never holds the engine back and memory stays bounded. Dropping the generation
/// cancels the request: it leaves the engine at once, whether queued, prefilling or decoding,
/// and its batch slot and KV reservation are free for the next admission.
#[derive(Debug)]
pub struct Generation {
    req: Arc<RequestState>,
    shared: Arc<EngineShared>,
    next: u32,
}

impl Generation {
    pub(crate) fn new(req: Arc<RequestState>, shared: Arc<EngineShared>) -> Self {
        Self { req, shared, next: 0 }
    }

    /// Prompt tokens of the request.
    pub fn prompt_tokens(&self) -> u32 {
        self.req.prompt_tokens
    }

    /// The most output tokens the request asked for.
    pub fn max_tokens(&self) -> u32 {
        self.req.max_tokens
    }

    /// Output tokens the request will generate: `max_tokens`, or fewer where the model stops on
    /// its own ([`GenerationRequest::output_tokens`](crate::GenerationRequest::output_tokens)).
    pub fn output_tokens(&self) -> u32 {
        self.req.output_tokens
    }

    /// Reads the stream to its end and returns the request's timings, or
    /// [`SimError::Stopped`] if the engine stopped first, or [`SimError::DeadlineExceeded`] if
    /// the request's deadline passed while it was queued.
    pub async fn collect_outcome(mut self) -> Result<GenerationOutcome, SimError> {
        while self.next().await.is_some() {}
        let p = self.req.progress();
        if let Some(at) = p.expired_at {
            return Err(SimError::DeadlineExceeded {
                queued: at.saturating_duration_since(self.req.submitted_at),
            });
        }
        let since =
            |at: Option<tokio::time::Instant>| at.map(|t| t.saturating_duration_since(self.req.submitted_at));
        match (since(p.admitted_at), since(p.first_token_at), since(p.finished_at)) {
            (Some(queued), Some(ttft), Some(total)) => Ok(GenerationOutcome {
                prompt_tokens: self.req.prompt_tokens,
                cached_prompt_tokens: p.cached_prompt_tokens,
                output_tokens: p.emitted,
                queued,
                ttft,
                total,
            }),
            _ => Err(SimError::Stopped { generated: p.emitted, expected: self.req.output_tokens }),
        }
    }
}

impl Stream for Generation {
    type Item = Token;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Token>> {
        let this = &mut *self;
        let mut p = this.req.progress();
        if this.next < p.emitted {
            let token = Token {
                index: this.next,
                last: this.next + 1 >= this.req.output_tokens,
                cached_prompt_tokens: p.cached_prompt_tokens,
            };
            this.next += 1;
            return Poll::Ready(Some(token));
        }
        if this.next >= this.req.output_tokens || p.aborted {
            return Poll::Ready(None);
        }
        match &mut p.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.req.output_tokens.saturating_sub(self.next) as usize;
        (0, Some(left))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let unfinished = {
            let p = self.req.progress();
            p.finished_at.is_none() && !p.aborted
        };
        // The progress lock is released before the engine's: the engine takes them the other
        // way round.
        if unfinished {
            self.shared.cancel(&self.req);
        }
    }
}
