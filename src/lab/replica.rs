//! The sim adapter: a simulated replica as the balancer's endpoint service, and the
//! [`TrackCompletion`] that keeps a request counted on its replica until its last token.
//!
//! In production the balancer's endpoints are tonic channels and [`HttpCompletion`] reads the
//! response body: the latency sample at the first message, the outcome and the ORCA load report
//! in the trailers. Here the endpoint is an in-process [`EngineHandle`] and the response is a
//! [`Generation`], so [`SimCompletion`] does the same from the token stream: the latency sample
//! at the first token (the time to first token), and at the last token the engine's
//! [`reported_load`](EngineHandle::reported_load) (what the worker would put in its trailer)
//! and a successful finish. A stream that ends before its last token is a failure.
//!
//! [`HttpCompletion`]: switchyard_balance::HttpCompletion

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use switchyard_balance::{Completion, TrackCompletion};
use switchyard_core::EndpointId;
use switchyard_core::Outcome;
use switchyard_sim::{EngineHandle, Generation, GenerationRequest, SubmitError, Token};
use tower::Service;

/// One simulated replica as a balancer endpoint: submits each request's [`GenerationRequest`] to
/// its engine. Cheap to clone (clones share the engine).
#[derive(Debug, Clone)]
pub struct SimReplica {
    engine: EngineHandle,
}

impl SimReplica {
    /// The endpoint service of `engine`.
    pub fn new(engine: EngineHandle) -> Self {
        Self { engine }
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
    type Future = std::future::Ready<Result<Served, SubmitError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SubmitError>> {
        // The engine bounds its own queue and refuses the excess at submission.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<GenerationRequest>) -> Self::Future {
        let result = self
            .engine
            .submit(req.into_body())
            .map(|generation| Served { generation, engine: self.engine.clone() });
        std::future::ready(result)
    }
}

/// [`TrackCompletion`] for [`SimReplica`] responses: the latency sample at the first token, the
/// replica's load report and a successful finish at the last, a failure if the stream ends
/// before it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimCompletion;

impl TrackCompletion<Served> for SimCompletion {
    type Output = TrackedGeneration;

    fn track(&self, response: Served, completion: Completion) -> TrackedGeneration {
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
