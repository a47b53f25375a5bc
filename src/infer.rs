//! `switchyard infer`: one KServe v2 call from the command line, without grpcurl.
//!
//! Sends one prompt to a worker, a gateway or any KServe v2 / Triton gRPC server, unary
//! (`ModelInfer`) or streaming (`ModelStreamInfer`, one response per token), and prints the answer,
//! the time to first token and the replica's ORCA load report, decoded from the
//! `endpoint-load-metrics-bin` trailer (which grpcurl prints as base64 and Python's gRPC client
//! does not show).
//!
//! A streaming call's TTFT is measured here, at the first response; a unary call's answer arrives
//! whole, so its TTFT is the one the server reports (the worker's `ttft_us` parameter), if any.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::{ReportedLoad, orca};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::Endpoint;

use crate::loadgen::call::{bool_param, int_param};
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::inference::{ModelInferResponse, ModelStreamInferResponse};
use crate::worker::request::{TEXT_OUTPUT, text_request};

/// Flags of `switchyard infer`.
#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// gRPC address of a worker, a gateway or any KServe v2 server (`http://HOST:PORT`, or
    /// `HOST:PORT`).
    #[arg(long, default_value = "http://127.0.0.1:9001")]
    pub target: String,
    /// Model name to ask for.
    #[arg(long, default_value = "sim-llm")]
    pub model: String,
    /// Output tokens to generate.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// Use the streaming `ModelStreamInfer` call and print tokens as they come.
    #[arg(long)]
    pub stream: bool,
    /// Deadline of the call (sent as `grpc-timeout`), e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The prompt.
    pub prompt: String,
}

/// What one call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResult {
    /// The generated text.
    pub answer: String,
    /// Responses received (1 for a unary call, one per token for a stream).
    pub responses: usize,
    /// Time to first token: measured for a stream, reported by the server for a unary call
    /// (`None` if it reports none).
    pub ttft: Option<Duration>,
    /// Whether `ttft` was measured by this client (stream) rather than reported by the server.
    pub ttft_measured: bool,
    /// From sending the request to the end of the response.
    pub latency: Duration,
    /// The decoded `endpoint-load-metrics-bin` trailer; `None` if the response had none.
    pub load: Option<ReportedLoad>,
}

impl InferResult {
    /// The result as the command prints it: the answer, the timings, the load report.
    pub fn summary(&self) -> String {
        let ttft = match (self.ttft, self.ttft_measured) {
            (Some(t), true) => format!("{:.1} ms", ms(t)),
            (Some(t), false) => format!("{:.1} ms (reported by the server)", ms(t)),
            (None, _) => "n/a (the server reports none; --stream measures it)".into(),
        };
        let load = match &self.load {
            Some(l) => {
                let named: Vec<String> = l.named.iter().map(|(k, v)| format!(", {k} {v:.3}")).collect();
                format!(
                    "queue_depth {}, running {}, kv_cache_utilization {:.4}, capacity {}{}",
                    l.queue_depth,
                    l.running,
                    l.kv_cache_utilization,
                    l.capacity,
                    named.concat()
                )
            }
            None => format!("none (no {} trailer)", orca::TRAILER_NAME),
        };
        format!(
            "answer: {}\nttft: {ttft}\nlatency: {:.1} ms ({} response{})\nload report: {load}",
            self.answer.trim_end(),
            ms(self.latency),
            self.responses,
            if self.responses == 1 { "" } else { "s" },
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Why a call could not be made or failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The target is not a URI or is not reachable.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The target.
        target: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{}: {}", crate::proto::code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// A message in the stream reported an error (Triton keeps the stream open).
    #[error("{0}")]
    StreamError(String),
}

/// Sends the call `args` describes and returns what came back.
pub async fn run(args: &InferArgs) -> Result<InferResult, InferError> {
    let target = crate::loadgen::target_uri(&args.target);
    let connect_error = |source| InferError::Connect { target: args.target.clone(), source };
    let channel = Endpoint::from_shared(target)
        .map_err(connect_error)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(connect_error)?;
    let mut client = GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let request = text_request(&args.model, &args.prompt, args.max_tokens);
    let start = Instant::now();
    if !args.stream {
        let mut call = tonic::Request::new(request);
        call.set_timeout(args.timeout);
        let response = client.model_infer(call).await.map_err(InferError::Status)?;
        let latency = start.elapsed();
        // tonic merges a unary response's trailers into its metadata.
        let load = load_report(response.metadata());
        let response = response.into_inner();
        let ttft = int_param(&response, "ttft_us").map(|us| Duration::from_micros(us.max(0) as u64));
        return Ok(InferResult {
            answer: text_output(&response),
            responses: 1,
            ttft,
            ttft_measured: false,
            latency,
            load,
        });
    }
    let mut call = tonic::Request::new(futures::stream::iter([request]));
    call.set_timeout(args.timeout);
    let mut stream = client.model_stream_infer(call).await.map_err(InferError::Status)?.into_inner();
    let (mut answer, mut responses, mut ttft) = (String::new(), 0, None);
    while let Some(message) = stream.next().await {
        let ModelStreamInferResponse { error_message, infer_response } =
            message.map_err(InferError::Status)?;
        if !error_message.is_empty() {
            return Err(InferError::StreamError(error_message));
        }
        ttft.get_or_insert_with(|| start.elapsed());
        responses += 1;
        let Some(response) = infer_response else { continue };
        answer.push_str(&text_output(&response));
        if bool_param(&response, "triton_final_response") == Some(true) {
            break;
        }
    }
    let trailers = stream.trailers().await.map_err(InferError::Status)?;
    let latency = start.elapsed();
    Ok(InferResult {
        answer,
        responses,
        ttft,
        ttft_measured: true,
        latency,
        load: trailers.as_ref().and_then(load_report),
    })
}

/// The decoded ORCA report of `metadata`, if it carries a valid one.
fn load_report(metadata: &MetadataMap) -> Option<ReportedLoad> {
    let value = metadata.get_bin(orca::TRAILER_NAME)?;
    orca::decode(&value.to_bytes().ok()?).ok()
}

/// The text of the `text_output` tensor (or of the first raw output).
fn text_output(response: &ModelInferResponse) -> String {
    let from_tensor = response
        .outputs
        .iter()
        .position(|o| o.name == TEXT_OUTPUT)
        .and_then(|i| response.outputs[i].contents.as_ref())
        .and_then(|c| c.bytes_contents.first())
        .map(|b| String::from_utf8_lossy(b).into_owned());
    from_tensor
        .or_else(|| {
            // A raw BYTES element: a 4-byte little-endian length, then the bytes.
            let raw = response.raw_output_contents.first()?;
            let (_, text) = raw.split_first_chunk::<4>()?;
            Some(String::from_utf8_lossy(text).into_owned())
        })
        .unwrap_or_default()
}
