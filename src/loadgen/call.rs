//! One inference call, unary or streaming, and what it measured.

use std::time::Duration;

use futures::StreamExt;
use switchyard_sim::trace::TraceRecord;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::proto::code_name;
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use crate::worker::request::{PREFIX_HASHES, PROMPT_TOKENS, int_parameter, text_request};

/// What one call measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The call succeeded.
    Ok {
        /// From sending the request to the first generated token.
        ttft: Duration,
        /// From sending the request to the end of the response.
        latency: Duration,
        /// Tokens generated.
        output_tokens: u32,
    },
    /// The call failed with this gRPC status code name (`UNAVAILABLE`, ...).
    Failed(&'static str),
}

/// The KServe request that replays `record`: a short prompt text, with the record's exact prompt
/// length, output length and prefix block ids as parameters.
pub fn infer_request(model: &str, id: u64, record: &TraceRecord) -> ModelInferRequest {
    let mut request = text_request(model, &format!("replayed request {id}"), record.output_tokens.max(1));
    request.id = id.to_string();
    request
        .parameters
        .insert(PROMPT_TOKENS.to_string(), int_parameter(i64::from(record.prompt_tokens.max(1))));
    if !record.prefix.is_empty() {
        let ids: Vec<String> = record.prefix.ids().iter().map(u64::to_string).collect();
        request.parameters.insert(
            PREFIX_HASHES.to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::StringParam(ids.join(","))) },
        );
    }
    request
}

/// The session of `record`: the conversation its prefix blocks name, its first two block ids
/// (`"0-14"`; a conversation's later turns repeat its earlier ones, so they share them, and the
/// first block alone is often a system prompt shared by every conversation); `None` without
/// prefix blocks.
pub fn session_of(record: &TraceRecord) -> Option<tonic::metadata::AsciiMetadataValue> {
    let ids = record.prefix.ids();
    let text = match ids {
        [] => return None,
        [only] => only.to_string(),
        [first, second, ..] => format!("{first}-{second}"),
    };
    tonic::metadata::AsciiMetadataValue::try_from(text).ok()
}

/// A session header's name as a metadata key, or why it is not one.
pub(crate) fn session_header(name: &str) -> Result<tonic::metadata::AsciiMetadataKey, String> {
    tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes())
        .map_err(|_| format!("--session-header {name:?} is not a valid header name"))
}

/// A request's session header, if it has one.
type Session = Option<(tonic::metadata::AsciiMetadataKey, tonic::metadata::AsciiMetadataValue)>;

fn with_session<T>(mut request: tonic::Request<T>, session: Session) -> tonic::Request<T> {
    if let Some((key, value)) = session {
        request.metadata_mut().insert(key, value);
    }
    request
}

/// An integer parameter of a response.
pub(crate) fn int_param(response: &ModelInferResponse, name: &str) -> Option<i64> {
    match response.parameters.get(name)?.parameter_choice {
        Some(ParameterChoice::Int64Param(v)) => Some(v),
        _ => None,
    }
}

/// A boolean parameter of a response.
pub(crate) fn bool_param(response: &ModelInferResponse, name: &str) -> Option<bool> {
    match response.parameters.get(name)?.parameter_choice {
        Some(ParameterChoice::BoolParam(v)) => Some(v),
        _ => None,
    }
}

/// A unary `ModelInfer` call.
///
/// A unary client sees no first token; its TTFT is the latency less the server's own time after
/// the first token (`total_us - ttft_us`): what the client would have seen, had it streamed.
pub(crate) async fn unary(
    mut client: GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
    timeout: Duration,
    session: Session,
) -> Outcome {
    let mut request = with_session(tonic::Request::new(request), session);
    request.set_timeout(timeout);
    let start = Instant::now();
    match client.model_infer(request).await {
        Ok(response) => {
            let latency = start.elapsed();
            let response = response.into_inner();
            let after_first = match (int_param(&response, "total_us"), int_param(&response, "ttft_us")) {
                (Some(total), Some(ttft)) => Duration::from_micros(u64::try_from(total - ttft).unwrap_or(0)),
                _ => Duration::ZERO,
            };
            let output_tokens =
                int_param(&response, "output_tokens").and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
            Outcome::Ok { ttft: latency.saturating_sub(after_first), latency, output_tokens }
        }
        // tonic's own timer ends a call at its deadline as CANCELLED ("Timeout expired"); a call
        // that ran out its deadline is counted as DEADLINE_EXCEEDED, as a streaming one is,
        // whichever side's timer fired first.
        Err(status) if status.code() == tonic::Code::Cancelled && start.elapsed() >= timeout => {
            Outcome::Failed("DEADLINE_EXCEEDED")
        }
        Err(status) => Outcome::Failed(code_name(status.code())),
    }
}

/// A `ModelStreamInfer` call with one request: TTFT at the first token's response, latency at the
/// final one.
pub(crate) async fn streaming(
    mut client: GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
    timeout: Duration,
    session: Session,
) -> Outcome {
    let start = Instant::now();
    let call = async {
        let mut request = with_session(tonic::Request::new(futures::stream::iter([request])), session);
        request.set_timeout(timeout);
        let mut responses = match client.model_stream_infer(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Outcome::Failed(code_name(status.code())),
        };
        let mut ttft = None;
        let mut tokens = 0u32;
        while let Some(message) = responses.next().await {
            let message = match message {
                Ok(m) => m,
                Err(status) => return Outcome::Failed(code_name(status.code())),
            };
            if !message.error_message.is_empty() {
                return Outcome::Failed(in_stream_code(&message.error_message));
            }
            let Some(response) = message.infer_response else { continue };
            tokens += 1;
            ttft.get_or_insert_with(|| start.elapsed());
            if bool_param(&response, "triton_final_response") == Some(true) {
                let latency = start.elapsed();
                // Read the call to its end (the trailers), as a well-behaved client does: leaving
                // at the last message resets the stream, and a balancer in between may then count
                // the call as cancelled rather than completed, racing the trailers.
                if let Err(status) = responses.trailers().await {
                    return Outcome::Failed(code_name(status.code()));
                }
                return Outcome::Ok { ttft: ttft.unwrap_or_default(), latency, output_tokens: tokens };
            }
        }
        Outcome::Failed("UNKNOWN")
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed("DEADLINE_EXCEEDED"),
    }
}

/// The code name at the front of an in-stream error message (`"UNAVAILABLE: ..."`), or `UNKNOWN`.
fn in_stream_code(message: &str) -> &'static str {
    let head = message.split(':').next().unwrap_or("").trim();
    crate::proto::ALL_CODES.iter().map(|c| code_name(*c)).find(|name| *name == head).unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::PrefixBlocks;

    #[test]
    fn replays_the_record_exactly() {
        let record = TraceRecord {
            at: Duration::ZERO,
            prompt_tokens: 1500,
            output_tokens: 20,
            prefix: PrefixBlocks::new(vec![1u64, 2]),
        };
        let req = infer_request("m", 7, &record);
        let parsed = crate::worker::request::parse_infer(&req, "m", 512).unwrap();
        assert_eq!((parsed.prompt_tokens, parsed.max_tokens), (1500, 20));
        assert_eq!(parsed.prefix.ids(), &[1, 2]);
        assert_eq!(req.id, "7");
    }

    #[test]
    fn a_session_is_the_conversation_of_the_first_two_blocks() {
        let record = |ids: Vec<u64>| TraceRecord {
            at: Duration::ZERO,
            prompt_tokens: 1500,
            output_tokens: 20,
            prefix: PrefixBlocks::new(ids),
        };
        let first = session_of(&record(vec![0, 14, 15])).unwrap();
        assert_eq!(first, "0-14");
        assert_eq!(session_of(&record(vec![0, 14, 15, 16, 99])), Some(first), "a later turn");
        assert_eq!(session_of(&record(vec![7])).unwrap(), "7");
        assert_eq!(session_of(&record(vec![])), None);
        assert!(session_header("x-session-id").is_ok());
        assert!(session_header("a b").is_err());
    }

    #[test]
    fn reads_the_code_of_an_in_stream_error() {
        assert_eq!(in_stream_code("RESOURCE_EXHAUSTED: queue full"), "RESOURCE_EXHAUSTED");
        assert_eq!(in_stream_code("something odd"), "UNKNOWN");
    }
}
