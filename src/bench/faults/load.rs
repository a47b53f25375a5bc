//! The fault bench's load: calls at a steady rate through the gateway, each with its deadline,
//! in three shapes that rotate: `ModelMetadata` (unary, a read: the idempotent calls),
//! `ModelInfer` (unary) and `ModelStreamInfer` (one request, a response per token), which
//! generate and are the non-idempotent calls. Every call's send time, class and end are kept.
//!
//! A retrying client (fault `gateway-restart`) sends a call again on `UNAVAILABLE` (which
//! covers a refused or lost connection) with exponential backoff, within the call's deadline,
//! and a stream only while it has had no response: what a gRPC client with a retry policy for
//! `UNAVAILABLE` does. It also sends again, whatever its method, a call that never left it: one
//! its HTTP/2 connection closed under before the request was written (hyper's "canceled:
//! connection closed", which tonic reports as `CANCELLED`), as gRPC's transparent retry does
//! (gRFC A6).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::{ModelInferRequest, ModelMetadataRequest};

/// The model the workers serve.
const MODEL: &str = "sim-llm";

/// Tokens each `ModelInfer` and `ModelStreamInfer` call generates.
const MAX_TOKENS: u32 = 8;

/// Calls in flight at most; one that would pass this is counted failed (`LOADGEN_FULL`), not
/// sent.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// The code of a call the load generator could not send (more than [`MAX_IN_FLIGHT`] in flight).
pub(crate) const LOADGEN_FULL: &str = "LOADGEN_FULL";

/// First backoff of the retrying client; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest backoff of the retrying client.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// The shape of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallShape {
    /// `ModelMetadata`: unary, reads only.
    Metadata,
    /// `ModelInfer`: unary, generates.
    Infer,
    /// `ModelStreamInfer`: streaming, generates.
    StreamInfer,
}

impl CallShape {
    /// The shape of call number `i`: the three in turn.
    pub(crate) fn of(i: u64) -> Self {
        match i % 3 {
            0 => Self::Metadata,
            1 => Self::Infer,
            _ => Self::StreamInfer,
        }
    }

    /// Whether a call of this shape may be sent twice without harm.
    pub(crate) fn idempotent(self) -> bool {
        self == Self::Metadata
    }
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallEnd {
    /// Answered in full.
    Ok,
    /// Failed with this gRPC status code (the client's own deadline is `DeadlineExceeded`).
    Failed(tonic::Code),
    /// Not sent: the load generator had 4,096 (`MAX_IN_FLIGHT`) calls out.
    NotSent,
}

impl CallEnd {
    /// The name of a failure's code, as the report counts it; `None` for a success.
    pub(crate) fn code_name(self) -> Option<&'static str> {
        match self {
            Self::Ok => None,
            Self::Failed(code) => Some(crate::proto::code_name(code)),
            Self::NotSent => Some(LOADGEN_FULL),
        }
    }
}

/// One call: when it was sent (seconds since the run's start), its shape and how it ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) sent_s: f64,
    pub(crate) shape: CallShape,
    pub(crate) end: CallEnd,
    /// Attempts it took (1 without retries).
    pub(crate) attempts: u32,
}

/// The steady load of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Calls a second, evenly spaced.
    pub(crate) rate: f64,
    /// How long the load lasts.
    pub(crate) duration: Duration,
    /// Each call's deadline (`grpc-timeout`, and the client's own timer).
    pub(crate) deadline: Duration,
    /// Retry `UNAVAILABLE`, and what never left the client, within the deadline.
    pub(crate) retry_unavailable: bool,
}

/// Sends `load` over `channels` from `start` (call `i` on channel `i % len`) and returns every
/// call, in send order.
pub(crate) async fn drive(channels: &[Channel], load: Load, start: Instant) -> Vec<Call> {
    let total = (load.rate * load.duration.as_secs_f64()).floor() as u64;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let mut not_sent = Vec::new();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / load.rate);
        tokio::time::sleep_until(at).await;
        let shape = CallShape::of(i);
        let sent_s = at.duration_since(start).as_secs_f64();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            not_sent.push(Call { sent_s, shape, end: CallEnd::NotSent, attempts: 0 });
            continue;
        };
        let client = GrpcInferenceServiceClient::new(channels[(i as usize) % channels.len()].clone());
        calls.spawn(async move {
            let (end, attempts) = call(client, shape, load).await;
            drop(permit);
            Call { sent_s, shape, end, attempts }
        });
    }
    let mut all = not_sent;
    while let Some(result) = calls.join_next().await {
        if let Ok(call) = result {
            all.push(call);
        }
    }
    all.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
    all
}

/// One call, retried on `UNAVAILABLE` (and when it never left) within its deadline when the load
/// says so.
async fn call(client: GrpcInferenceServiceClient<Channel>, shape: CallShape, load: Load) -> (CallEnd, u32) {
    let deadline = Instant::now() + load.deadline;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    let never_left = AtomicBool::new(false);
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (CallEnd::Failed(tonic::Code::DeadlineExceeded), attempts - 1);
        }
        let (end, answered) =
            match tokio::time::timeout(left, attempt(client.clone(), shape, left, &never_left)).await {
                Ok(result) => result,
                Err(_) => (CallEnd::Failed(tonic::Code::DeadlineExceeded), true),
            };
        let never_sent = never_left.swap(false, Ordering::Relaxed);
        let retryable = never_sent || end == CallEnd::Failed(tonic::Code::Unavailable) && !answered;
        if !(load.retry_unavailable && retryable) {
            return (end, attempts);
        }
        let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt with `timeout` as its `grpc-timeout`: how it ended, and whether a response
/// message had come (a stream that did may not be sent again); `never_left` is set when its
/// request never left this client.
async fn attempt(
    mut client: GrpcInferenceServiceClient<Channel>,
    shape: CallShape,
    timeout: Duration,
    never_left: &AtomicBool,
) -> (CallEnd, bool) {
    let failed = |status: tonic::Status| {
        if never_sent(&status) {
            never_left.store(true, Ordering::Relaxed);
        }
        CallEnd::Failed(status.code())
    };
    match shape {
        CallShape::Metadata => {
            let mut request =
                tonic::Request::new(ModelMetadataRequest { name: MODEL.into(), version: String::new() });
            request.set_timeout(timeout);
            (client.model_metadata(request).await.map_or_else(failed, |_| CallEnd::Ok), false)
        }
        CallShape::Infer => {
            let mut request = tonic::Request::new(infer_request());
            request.set_timeout(timeout);
            (client.model_infer(request).await.map_or_else(failed, |_| CallEnd::Ok), false)
        }
        CallShape::StreamInfer => {
            let mut request = tonic::Request::new(futures::stream::iter([infer_request()]));
            request.set_timeout(timeout);
            let mut responses = match client.model_stream_infer(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => return (failed(status), false),
            };
            let mut answered = false;
            let mut last = false;
            while let Some(message) = responses.next().await {
                match message {
                    Ok(message) if !message.error_message.is_empty() => {
                        return (CallEnd::Failed(code_of_stream_error(&message.error_message)), true);
                    }
                    Ok(message) => {
                        answered = true;
                        last |= message.infer_response.as_ref().is_some_and(is_final);
                    }
                    Err(status) => return (failed(status), answered),
                }
            }
            if last { (CallEnd::Ok, true) } else { (CallEnd::Failed(tonic::Code::Unknown), answered) }
        }
    }
}

fn infer_request() -> ModelInferRequest {
    crate::worker::request::text_request(MODEL, "fault bench", MAX_TOKENS)
}

/// Whether a stream's response is its generation's last (`triton_final_response`).
fn is_final(response: &crate::proto::inference::ModelInferResponse) -> bool {
    matches!(
        response.parameters.get("triton_final_response").and_then(|p| p.parameter_choice.as_ref()),
        Some(ParameterChoice::BoolParam(true))
    )
}

/// Whether `status` says its request never left this client: hyper cancelled it because the
/// connection closed before the request was written (a stream the server had begun, reset or cut,
/// is an h2 error instead).
fn never_sent(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = cause {
        if error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The code a worker names at the head of a stream's error message (`UNAVAILABLE: ...`).
fn code_of_stream_error(message: &str) -> tonic::Code {
    let name = message.split(':').next().unwrap_or("");
    (0..=16)
        .map(tonic::Code::from_i32)
        .find(|code| crate::proto::code_name(*code) == name)
        .unwrap_or(tonic::Code::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_whose_connection_closed_before_it_left_is_told_from_one_the_caller_cancelled() {
        let (io, _server) = tokio::io::duplex(64);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, String>(hyper_util::rt::TokioIo::new(io))
                .await
                .unwrap();
        drop(connection);
        let error = sender.send_request(http::Request::new(String::new())).await.unwrap_err();
        assert!(error.is_canceled(), "{error:?}");
        let status = tonic::Status::from_error(Box::new(error));
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        assert!(never_sent(&status), "{status:?}");
        assert!(!never_sent(&tonic::Status::cancelled("the caller gave up")));
        assert!(!never_sent(&tonic::Status::unavailable("connection refused")));
    }

    #[test]
    fn shapes_rotate_and_only_metadata_is_idempotent() {
        let shapes: Vec<CallShape> = (0..6).map(CallShape::of).collect();
        assert_eq!(
            shapes,
            [
                CallShape::Metadata,
                CallShape::Infer,
                CallShape::StreamInfer,
                CallShape::Metadata,
                CallShape::Infer,
                CallShape::StreamInfer
            ]
        );
        assert_eq!(shapes.iter().filter(|s| s.idempotent()).count(), 2);
    }

    #[test]
    fn a_stream_error_names_its_code() {
        assert_eq!(code_of_stream_error("UNAVAILABLE: worker is shutting down"), tonic::Code::Unavailable);
        assert_eq!(code_of_stream_error("gibberish"), tonic::Code::Unknown);
    }
}
