//! How the balancer learns that a request has ended, how it ended, and what load its replica
//! reported.
//!
//! A request ends when its response ends, not when the response starts: a gRPC stream counts as
//! in flight until its trailers. [`TrackCompletion`] turns the endpoint's response into one that
//! carries a [`Completion`] to its end. [`HttpCompletion`] does this for HTTP/gRPC responses: it
//! takes the latency sample at the first body frame (the whole response for a unary call, the
//! first message, so the time to first token, for a stream), reads the `grpc-status`,
//! `grpc-retry-pushback-ms` and the ORCA `endpoint-load-metrics-bin` entry from the trailers (or
//! from the headers of a trailers-only response), and ends the request with its [`Outcome`]. A
//! report in the headers of a response that goes on (a stream's, sent when the replica admitted
//! the request: Switchyard's worker sends one on `ModelStreamInfer`) is recorded when the
//! headers arrive, and the one in its trailers when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_core::{EndpointId, Error, ErrorKind, Outcome, ReportedLoad, orca};
use tokio::time::Instant;
use tower::BoxError;

use crate::endpoint::{InFlight, Timing};
use crate::observer::{Observation, PickedEndpoint};
use crate::outlier::{PoolState, Verdict};

/// The end of one request on one endpoint, handed to a [`TrackCompletion`] with the response.
///
/// Call [`finish`](Self::finish) with the outcome when the response ends; dropping it unfinished
/// ends the request as [cancelled](Outcome::Cancelled) (the caller went away): neither a success
/// nor a failure.
#[derive(Debug)]
pub struct Completion {
    in_flight: Option<InFlight>,
    pool: Arc<PoolState>,
}

impl Completion {
    pub(crate) fn new(in_flight: InFlight, pool: Arc<PoolState>) -> Self {
        Self { in_flight: Some(in_flight), pool }
    }

    /// The endpoint that serves the request.
    pub fn endpoint(&self) -> Option<&EndpointId> {
        self.in_flight.as_ref().map(|f| f.state().id())
    }

    /// Takes the latency sample now (the first byte of the response arrived), if none was taken.
    pub fn first_byte(&mut self) {
        if let Some(f) = &mut self.in_flight {
            f.first_byte();
        }
    }

    /// Records the load report the replica sent.
    pub fn report(&self, load: ReportedLoad) {
        if let Some(f) = &self.in_flight {
            f.state().record_report(load, Instant::now());
        }
    }

    /// Records the replica's load report as its ORCA header value carries it
    /// ([`orca::TRAILER_NAME`]); it is decoded when a reader first asks for it, and dropped then if
    /// it is malformed.
    pub fn report_encoded(&self, value: &http::HeaderValue) {
        if let Some(f) = &self.in_flight {
            f.state().record_encoded_report(value, Instant::now());
        }
    }

    /// Ends the request with `outcome`: the board counts it, outlier ejection reads it
    /// ([`Outcome::is_endpoint_failure`]), and the observer is told.
    pub fn finish(mut self, outcome: Outcome) {
        let Some(mut in_flight) = self.in_flight.take() else { return };
        let (verdict, timing) = in_flight.end(outcome, &self.pool.outlier);
        if self.pool.endpoint_limit.is_some() {
            self.pool.limit_waiters.wake_all();
        }
        self.observe(&in_flight, outcome, timing);
        if verdict == Verdict::Eject {
            self.eject(&in_flight);
        }
    }

    /// Ends the request on an error from the endpoint's service (it could not be reached, or its
    /// connection failed), and returns the error typed for the caller: the balancer's name and
    /// the endpoint's id, with the cause kept for the log.
    pub(crate) fn fail(self, error: BoxError) -> BoxError {
        let endpoint = self.endpoint().cloned();
        let name = self.pool.name.clone();
        let mut error = match error.downcast::<Error>() {
            Ok(typed) => *typed,
            Err(other) => {
                let kind = if refused(&*other) { ErrorKind::ConnectFailed } else { ErrorKind::Upstream };
                Error::new(kind).with_source(other)
            }
        };
        let outcome = match error.kind() {
            ErrorKind::ConnectFailed => Outcome::ConnectFailed,
            ErrorKind::Overloaded { retry_after } | ErrorKind::Shed { retry_after } => {
                Outcome::Overloaded { pushback: *retry_after }
            }
            ErrorKind::DeadlineExceeded => Outcome::DeadlineExceeded,
            _ => Outcome::Unavailable,
        };
        self.finish(outcome);
        if let (None, Some(endpoint)) = (error.endpoint(), endpoint) {
            error = error.at_endpoint(endpoint);
        }
        if let (None, Some(name)) = (error.pool(), name) {
            error = error.in_pool(name);
        }
        Box::new(error)
    }

    fn observe(&self, in_flight: &InFlight, outcome: Outcome, timing: Timing) {
        if let Some(observer) = &self.pool.observer {
            observer.on_end(&Observation {
                pool: self.pool.name.as_deref(),
                endpoint: in_flight.state().id(),
                outcome,
                first_byte: timing.first_byte,
                latency: timing.latency,
                work: in_flight.work(),
            });
        }
    }

    fn eject(&self, in_flight: &InFlight) {
        let state = in_flight.state();
        let now = Instant::now();
        let mut outlier = state.outlier.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if outlier.retired || outlier.ejected_until.is_some_and(|until| now < until) {
            // Gone from the pool, or another request's failure got there first.
            return;
        }
        // An ejection that ran out but that the balancer has not ended yet still holds its slot,
        // which the new ejection keeps; otherwise the pool must allow one more. Both under the
        // endpoint's lock, so that removal (`retire`) sees either no ejection or one with a slot.
        if outlier.ejected_until.is_none() && !self.pool.try_reserve_ejection(&self.pool.outlier) {
            return;
        }
        let until = outlier.eject(&self.pool.outlier, now);
        drop(outlier);
        self.pool.bump();
        tracing::warn!(endpoint = %state.id(), ejected_for = ?until.saturating_duration_since(now), "ejecting failing endpoint");
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(mut in_flight) = self.in_flight.take() {
            let timing = in_flight.cancel();
            if self.pool.endpoint_limit.is_some() {
                self.pool.limit_waiters.wake_all();
            }
            self.observe(&in_flight, Outcome::Cancelled, timing);
        }
    }
}

/// Whether the error's chain holds a refused or unreachable connection: the request never
/// reached the endpoint.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Turns an endpoint's response into one that ends its [`Completion`] when it ends.
pub trait TrackCompletion<Rsp> {
    /// The response handed back to the caller.
    type Output;

    /// Wraps `response` so that `completion` is finished when it ends.
    fn track(&self, response: Rsp, completion: Completion) -> Self::Output;
}

/// Ends the request as soon as the response arrives, as a success. For services whose response
/// is the whole answer (not a stream) and that send no load reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompleteOnResponse;

impl<Rsp> TrackCompletion<Rsp> for CompleteOnResponse {
    type Output = Rsp;

    fn track(&self, response: Rsp, completion: Completion) -> Rsp {
        completion.finish(Outcome::Ok);
        response
    }
}

/// [`TrackCompletion`] for HTTP and gRPC responses: in flight until the body ends, latency at the
/// first body frame, [`Outcome`] and ORCA load report from the trailers (or the headers of a
/// trailers-only response), and the [`PickedEndpoint`] in the response's extensions.
///
/// A gRPC response whose body ends without trailers, or fails, was cut short: it ends as
/// [`Outcome::Unavailable`]. An HTTP error status without a `grpc-status` is classified by
/// [`Outcome::from_http_status`].
#[derive(Debug, Clone, Copy)]
pub struct HttpCompletion {
    picked_endpoint: bool,
}

impl Default for HttpCompletion {
    fn default() -> Self {
        Self { picked_endpoint: true }
    }
}

impl HttpCompletion {
    /// Tracking that records the [`PickedEndpoint`] in responses.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same tracking, recording the [`PickedEndpoint`] in responses (the default) or not.
    /// Turn it off when nothing reads the response's extensions (a proxy forwarding the response
    /// over the wire, where extensions do not travel): it costs an extension insert per request.
    /// The [`Observer`](crate::Observer) is told the endpoint either way.
    pub fn with_picked_endpoint(mut self, record: bool) -> Self {
        self.picked_endpoint = record;
        self
    }
}

fn read_report(headers: &http::HeaderMap, completion: &Completion) {
    if let Some(value) = headers.get(&orca::TRAILER_HEADER) {
        completion.report_encoded(value);
    }
}

impl<B> TrackCompletion<http::Response<B>> for HttpCompletion
where
    B: Body<Data = Bytes>,
{
    type Output = http::Response<TrackedBody<B>>;

    fn track(&self, response: http::Response<B>, completion: Completion) -> Self::Output {
        let (mut parts, body) = response.into_parts();
        if self.picked_endpoint
            && let Some(id) = completion.endpoint()
        {
            parts.extensions.insert(PickedEndpoint(id.clone()));
        }
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let http_outcome = Outcome::from_http_status(parts.status);
        let completion = if let Some(outcome) = Outcome::from_trailers(&parts.headers) {
            // Trailers-only gRPC response: the headers say it all (a refusal or an error is no
            // sample of the endpoint's speed: `finish` takes one only for an answer).
            read_report(&parts.headers, &completion);
            completion.finish(outcome);
            None
        } else if !http_outcome.is_ok() {
            completion.finish(http_outcome);
            None
        } else if body.is_end_stream() {
            // An empty body that will not be polled: the response has ended (without the
            // trailers a gRPC response must have).
            completion.finish(if grpc { Outcome::Unavailable } else { Outcome::Ok });
            None
        } else {
            // The replica's load as the response started, where it sends it (see the module docs).
            read_report(&parts.headers, &completion);
            Some(completion)
        };
        http::Response::from_parts(parts, TrackedBody { inner: body, completion, grpc })
    }
}

pin_project! {
    /// A response body that finishes its request's [`Completion`] when it ends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        completion: Option<Completion>,
        // A gRPC response must end with trailers (`grpc-status`); one that ends without them
        // was cut short.
        grpc: bool,
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    if let Some(mut c) = this.completion.take() {
                        c.first_byte();
                        read_report(trailers, &c);
                        c.finish(Outcome::from_trailers(trailers).unwrap_or(Outcome::Ok));
                    }
                } else if let Some(c) = this.completion.as_mut() {
                    c.first_byte();
                    if this.inner.is_end_stream() {
                        // The body says it has ended: consumers such as hyper stop polling
                        // here, so the `None` below may never come.
                        if let Some(c) = this.completion.take() {
                            c.finish(cut_short(*this.grpc));
                        }
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(c) = this.completion.take() {
                    c.finish(Outcome::Unavailable);
                }
            }
            None => {
                if let Some(c) = this.completion.take() {
                    c.finish(cut_short(*this.grpc));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The outcome of a body that ended without trailers: cut short for gRPC, fine for plain HTTP.
fn cut_short(grpc: bool) -> Outcome {
    if grpc { Outcome::Unavailable } else { Outcome::Ok }
}
