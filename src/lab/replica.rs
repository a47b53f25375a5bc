//! The sim adapter: a simulated replica as the balancer's endpoint service, and the
//! [`TrackCompletion`] that keeps a request counted on its replica until its last token.
//!
//! In production the balancer's endpoints are tonic channels and [`HttpCompletion`] reads the
//! response body: the latency sample at the first message, the outcome and the ORCA load report
//! in the trailers. Here the endpoint is an in-process [`EngineHandle`] and the response is a
//! [`Generation`], so [`SimCompletion`] does the same from the token stream: the latency sample
//! at the first token (the time to first token), and at the last token the engine's
//! [`reported_load`](EngineHandle::reported_load) (what the worker would put in its trailer)
//! and a successful finish. A stream that ends before its last token is a failure. An LLM
//! engine's response also reports its load when the engine has admitted the request, as the
//! worker's `ModelStreamInfer` headers do; a classic server's ([`ReplicaKind::Parallel`], a
//! unary call, whose headers leave with its trailers) reports only at its end.
//!
//! [`HttpCompletion`]: switchyard_balance::HttpCompletion

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use std::task::{Context, Poll};

use futures::Stream;
use switchyard_balance::{Completion, TrackCompletion};
use switchyard_core::EndpointId;
use switchyard_core::Outcome;
use switchyard_sim::{EngineHandle, Generation, GenerationRequest, ReplicaKind, SubmitError, Token};
use tower::Service;

/// One simulated replica as a balancer endpoint: submits each request's [`GenerationRequest`] to
/// its engine. Cheap to clone (clones share the engine).
#[derive(Debug, Clone)]
pub struct SimReplica {
    engine: EngineHandle,
    delay: Option<Arc<Mutex<Delay>>>,
}

/// Seeded exponential delays before a request reaches its replica: what the network and a
/// loaded machine's scheduler add to every call of a real process. Requests keep their order
/// (a request never overtakes one sent before it), as on one HTTP/2 connection.
#[derive(Debug)]
pub struct Delay {
    mean_secs: f64,
    rng: Xoshiro256PlusPlus,
    /// When the last request sent reaches the replica: requests keep their order, as the frames
    /// of one HTTP/2 connection do.
    last: Option<tokio::time::Instant>,
}

impl Delay {
    /// Exponential delays of mean `mean`, drawn from `seed`.
    pub fn exponential(mean: Duration, seed: u64) -> Self {
        Self { mean_secs: mean.as_secs_f64(), rng: Xoshiro256PlusPlus::seed_from_u64(seed), last: None }
    }

    /// When a request sent now reaches the replica.
    fn next(&mut self) -> tokio::time::Instant {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let at = tokio::time::Instant::now() + Duration::from_secs_f64(-u.ln() * self.mean_secs);
        let at = self.last.map_or(at, |last| at.max(last));
        self.last = Some(at);
        at
    }
}

impl SimReplica {
    /// The endpoint service of `engine`.
    pub fn new(engine: EngineHandle) -> Self {
        Self { engine, delay: None }
    }

    /// The endpoint service of `engine`, each request reaching it after a delay from `delay`.
    pub fn with_delay(engine: EngineHandle, delay: Delay) -> Self {
        Self { engine, delay: Some(Arc::new(Mutex::new(delay))) }
    }
}

/// A replica's answer: the token stream, and the replica that produces it (for its load report).
#[derive(Debug)]
pub struct Served {
    /// The request's tokens.
    pub generation: Generation,
    /// The replica generating them.
    pub engine: EngineHandle,
}

impl Service<http::Request<GenerationRequest>> for SimReplica {
    type Response = Served;
    type Error = SubmitError;
    type Future = Pin<Box<dyn Future<Output = Result<Served, SubmitError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SubmitError>> {
        // The engine bounds its own queue and refuses the excess at submission.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<GenerationRequest>) -> Self::Future {
        let engine = self.engine.clone();
        let delay = self.delay.as_ref().map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).next());
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep_until(delay).await;
            }
            engine.submit(req.into_body()).map(|generation| Served { generation, engine: engine.clone() })
        })
    }
}

/// [`TrackCompletion`] for [`SimReplica`] responses: an LLM engine's load report when it admitted
/// the request, the latency sample at the first token, the replica's load report and a
/// successful finish at the last, a failure if the stream ends before it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimCompletion;

impl TrackCompletion<Served> for SimCompletion {
    type Output = TrackedGeneration;

    fn track(&self, response: Served, completion: Completion) -> TrackedGeneration {
        if response.engine.config().kind == ReplicaKind::Llm {
            // A stream's headers: the load as the engine admitted the request.
            completion.report(response.engine.reported_load());
        }
        TrackedGeneration {
            endpoint: completion.endpoint().cloned(),
            generation: response.generation,
            engine: response.engine,
            completion: Some(completion),
        }
    }
}

/// A token stream that ends its request's [`Completion`] with the stream: latency sample at the
/// first token, load report and success at the last, failure if it ends early.
#[derive(Debug)]
pub struct TrackedGeneration {
    endpoint: Option<EndpointId>,
    generation: Generation,
    engine: EngineHandle,
    completion: Option<Completion>,
}

impl TrackedGeneration {
    /// The endpoint serving the request.
    pub fn endpoint(&self) -> Option<&EndpointId> {
        self.endpoint.as_ref()
    }
}

impl Stream for TrackedGeneration {
    type Item = Token;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Token>> {
        let this = &mut *self;
        let item = std::task::ready!(Pin::new(&mut this.generation).poll_next(cx));
        match item {
            Some(token) => {
                if token.last {
                    if let Some(mut completion) = this.completion.take() {
                        completion.first_byte();
                        completion.report(this.engine.reported_load());
                        completion.finish(Outcome::Ok);
                    }
                } else if let Some(completion) = this.completion.as_mut() {
                    completion.first_byte();
                }
            }
            None => {
                if let Some(completion) = this.completion.take() {
                    completion.finish(Outcome::Unavailable);
                }
            }
        }
        Poll::Ready(item)
    }
}
