//! How the balancer learns that a request has ended, whether it failed, and what load its
//! replica reported.
//!
//! A request ends when its response ends, not when the response starts: a gRPC stream counts as
//! in flight until its trailers. [`TrackCompletion`] turns the endpoint's response into one that
//! carries a [`Completion`] to its end. [`HttpCompletion`] does this for HTTP/gRPC responses: it
//! takes the latency sample at the first body frame (the whole response for a unary call, the
//! first message, so the time to first token, for a stream), reads the `grpc-status` and the ORCA
//! `endpoint-load-metrics-bin` entry from the trailers (or from the headers of a trailers-only
//! response), and classifies the outcome with a [`FailureClass`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_core::{EndpointId, ReportedLoad, orca};
use tokio::time::Instant;

use crate::endpoint::InFlight;
use crate::outlier::{PoolState, Verdict};

/// The end of one request on one endpoint, handed to a [`TrackCompletion`] with the response.
///
/// Call [`finish`](Self::finish) when the response ends; dropping it unfinished ends the request
/// as cancelled (the caller went away): neither a success nor a failure.
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

    /// Ends the request; `failed` feeds the outlier detector.
    pub fn finish(mut self, failed: bool) {
        let Some(mut in_flight) = self.in_flight.take() else { return };
        if in_flight.end(failed, &self.pool.outlier) != Verdict::Eject {
            return;
        }
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
        completion.finish(false);
        response
    }
}

/// Which outcomes count as failures for outlier ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureClass {
    /// gRPC status codes that are failures. Default: `UNAVAILABLE` (14), the code of an
    /// endpoint that cannot serve, as opposed to a request that was wrong.
    pub grpc_codes: Vec<i32>,
    /// HTTP statuses that are failures. Default: 502, 503, 504.
    pub http_statuses: Vec<u16>,
}

impl Default for FailureClass {
    fn default() -> Self {
        Self { grpc_codes: vec![14], http_statuses: vec![502, 503, 504] }
    }
}

impl FailureClass {
    fn grpc_failed(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i32>().ok())
            .is_some_and(|code| self.grpc_codes.contains(&code))
    }
}

/// [`TrackCompletion`] for HTTP and gRPC responses: in flight until the body ends, latency at the
/// first body frame, outcome and ORCA load report from the trailers.
#[derive(Debug, Clone, Default)]
pub struct HttpCompletion {
    class: Arc<FailureClass>,
}

impl HttpCompletion {
    /// Tracking with these failure classes.
    pub fn new(class: FailureClass) -> Self {
        Self { class: Arc::new(class) }
    }
}

fn read_report(headers: &http::HeaderMap, completion: &Completion) {
    if let Some(value) = headers.get(orca::TRAILER_NAME) {
        completion.report_encoded(value);
    }
}

impl<B> TrackCompletion<http::Response<B>> for HttpCompletion
where
    B: Body<Data = Bytes>,
{
    type Output = http::Response<TrackedBody<B>>;

    fn track(&self, response: http::Response<B>, mut completion: Completion) -> Self::Output {
        let (parts, body) = response.into_parts();
        let http_failed = self.class.http_statuses.contains(&parts.status.as_u16());
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let completion = if parts.headers.contains_key("grpc-status") || http_failed {
            // Trailers-only gRPC response, or an HTTP error: the headers say it all.
            completion.first_byte();
            read_report(&parts.headers, &completion);
            completion.finish(http_failed || self.class.grpc_failed(&parts.headers));
            None
        } else if body.is_end_stream() {
            // An empty body that will not be polled: the response has ended (without the
            // trailers a gRPC response must have).
            completion.finish(grpc);
            None
        } else {
            Some(completion)
        };
        http::Response::from_parts(
            parts,
            TrackedBody { inner: body, completion, class: self.class.clone(), grpc },
        )
    }
}

pin_project! {
    /// A response body that finishes its request's [`Completion`] when it ends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        completion: Option<Completion>,
        class: Arc<FailureClass>,
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
                        c.finish(this.class.grpc_failed(trailers));
                    }
                } else if let Some(c) = this.completion.as_mut() {
                    c.first_byte();
                    if this.inner.is_end_stream() {
                        // The body says it has ended: consumers such as hyper stop polling
                        // here, so the `None` below may never come.
                        if let Some(c) = this.completion.take() {
                            c.finish(*this.grpc);
                        }
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(c) = this.completion.take() {
                    c.finish(true);
                }
            }
            None => {
                if let Some(c) = this.completion.take() {
                    c.finish(*this.grpc);
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
