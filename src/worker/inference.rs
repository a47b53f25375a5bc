//! The KServe v2 `GRPCInferenceService` over one simulated engine.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use switchyard_sim::{EngineHandle, SimError, SubmitError};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::request::{self, ParsedInfer, TEXT_INPUT, TEXT_OUTPUT};
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::proto::inference::repository_index_response::ModelIndex;
use crate::proto::inference::*;

/// Generated requests one `ModelStreamInfer` stream may have running at once; the stream's
/// next request is read only when one of them ends.
const MAX_IN_FLIGHT_PER_STREAM: usize = 256;
/// Responses buffered per `ModelStreamInfer` stream before the generators wait for the client.
const STREAM_BUFFER: usize = 64;
/// How long a `ModelStreamInfer` call waits for its first request before it answers with its
/// headers: a client sends its first request with the call, but one may wait for the headers
/// first (`StreamExt::next` is cancel-safe: a request arriving later is read by the stream's
/// reader).
const FIRST_REQUEST_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The inference service of a worker: one model, served by one simulated engine.
#[derive(Clone)]
pub struct InferenceService {
    model: Arc<str>,
    engine: EngineHandle,
    ready: Arc<AtomicBool>,
    /// Set when the worker starts draining: readiness answers false from then on, while
    /// inference is still served through the drain grace.
    draining: Arc<AtomicBool>,
}

impl InferenceService {
    /// A service for `model` over `engine`; `ready` turns false when the worker drains.
    pub fn new(model: &str, engine: EngineHandle, ready: Arc<AtomicBool>) -> Self {
        Self { model: Arc::from(model), engine, ready, draining: Arc::new(AtomicBool::new(false)) }
    }

    /// The same service, whose `ServerReady` and `ModelReady` answer false once `draining` is
    /// set (the worker's drain grace: health NOT_SERVING, inference still served), so that every
    /// readiness signal turns at the same moment.
    pub fn with_draining(mut self, draining: Arc<AtomicBool>) -> Self {
        self.draining = draining;
        self
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    fn parse(&self, req: &ModelInferRequest) -> Result<ParsedInfer, Status> {
        request::parse_infer(req, &self.model, self.engine.config().block_tokens)
    }

    /// Submits to the engine; a request still queued at `deadline` (the call's `grpc-timeout`)
    /// is dropped before its prefill.
    fn submit(
        &self,
        parsed: &ParsedInfer,
        deadline: Option<Instant>,
    ) -> Result<switchyard_sim::Generation, Status> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(Status::unavailable("worker is shutting down"));
        }
        self.engine.submit(parsed.generation_request(deadline)).map_err(submit_status)
    }

    /// Parses a request and submits it to the engine.
    fn admit(
        &self,
        req: &ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<(switchyard_sim::Generation, ParsedInfer), Status> {
        let parsed = self.parse(req)?;
        Ok((self.submit(&parsed, deadline)?, parsed))
    }

    /// Reads a `ModelStreamInfer` stream's requests and starts a generation for each, at most
    /// [`MAX_IN_FLIGHT_PER_STREAM`] at once; `first` is the first request, already admitted.
    async fn read_stream(
        &self,
        mut first: Option<Admitted>,
        mut incoming: Streaming<ModelInferRequest>,
        tx: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
        deadline: Option<Instant>,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_STREAM));
        while let Ok(permit) = slots.clone().acquire_owned().await {
            let (req, admitted) = match first.take() {
                Some(first) => first,
                None => match incoming.next().await {
                    Some(Ok(req)) => {
                        let admitted = self.admit(&req, deadline);
                        (req, admitted)
                    }
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    None => return,
                },
            };
            let (generation, parsed) = match admitted {
                Ok(ok) => ok,
                Err(status) => {
                    // Triton reports a failed request in the stream and keeps the stream open.
                    if tx.send(Ok(stream_error(&req.id, &status))).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let tx = tx.clone();
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = this.stream_tokens(generation, &req.id, parsed.raw, &tx) => {}
                    // The response was dropped (client cancel, deadline or closed connection):
                    // dropping the generation here takes it out of the engine at once, even
                    // while it is queued or prefilling and has no token to send.
                    () = tx.closed() => {}
                }
            });
        }
    }

    /// Sends one response per generated token; a generation that ends early sends its error.
    async fn stream_tokens(
        &self,
        mut generation: switchyard_sim::Generation,
        id: &str,
        raw: bool,
        tx: &mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
    ) {
        let mut last_seen = false;
        while let Some(token) = generation.next().await {
            last_seen = token.last;
            let params = [
                ("token_index", i64::from(token.index)),
                ("cached_prompt_tokens", i64::from(token.cached_prompt_tokens)),
            ];
            let response =
                self.response(id, token_text(token.index).to_string(), raw, &params, Some(token.last));
            let message =
                ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) };
            if tx.send(Ok(message)).await.is_err() {
                return; // client gone: dropping the generation frees the engine
            }
        }
        if !last_seen {
            let status = match generation.collect_outcome().await {
                Err(e) => sim_status(e),
                Ok(_) => Status::internal("generation ended without its last token"),
            };
            let _ = tx.send(Ok(stream_error(id, &status))).await;
        }
    }

    fn response(
        &self,
        id: &str,
        text: String,
        raw: bool,
        params: &[(&str, i64)],
        final_flag: Option<bool>,
    ) -> ModelInferResponse {
        let mut parameters: std::collections::HashMap<String, InferParameter> =
            params.iter().map(|(k, v)| (k.to_string(), int_param(*v))).collect();
        if let Some(last) = final_flag {
            parameters.insert(
                "triton_final_response".into(),
                InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(last)) },
            );
        }
        let mut output = InferOutputTensor {
            name: TEXT_OUTPUT.into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        };
        let mut raw_output_contents = Vec::new();
        if raw {
            let mut bytes = (text.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(text.as_bytes());
            raw_output_contents.push(bytes);
        } else {
            output.contents =
                Some(InferTensorContents { bytes_contents: vec![text.into_bytes()], ..Default::default() });
        }
        ModelInferResponse {
            model_name: self.model.to_string(),
            model_version: "1".into(),
            id: id.to_string(),
            parameters,
            outputs: vec![output],
            raw_output_contents,
        }
    }
}

/// A failed request inside a `ModelStreamInfer` stream, as Triton reports it: the stream stays
/// open.
fn stream_error(id: &str, status: &Status) -> ModelStreamInferResponse {
    ModelStreamInferResponse {
        error_message: format!("{}: {}", crate::proto::code_name(status.code()), status.message()),
        infer_response: Some(ModelInferResponse { id: id.to_string(), ..Default::default() }),
    }
}

/// The responses of a stream until `at`, the call's deadline, where the stream ends with
/// DEADLINE_EXCEEDED (tonic's server applies `grpc-timeout` to the response headers only). The
/// response then ends, its receiver is dropped, and every generation of the stream leaves the
/// engine.
fn until_deadline(
    responses: ReceiverStream<Result<ModelStreamInferResponse, Status>>,
    at: Instant,
) -> InferStream {
    let state = (responses, Box::pin(sleep_until(at)), false);
    Box::pin(futures::stream::unfold(state, |(mut responses, mut expiry, expired)| async move {
        if expired {
            return None;
        }
        tokio::select! {
            // The deadline first: a stream with tokens always ready still ends on time.
            biased;
            () = &mut expiry => {
                let status = Status::deadline_exceeded("the call's deadline passed");
                Some((Err(status), (responses, expiry, true)))
            }
            item = responses.next() => item.map(|item| (item, (responses, expiry, false))),
        }
    }))
}

/// The gRPC status for an engine's refusal.
fn submit_status(e: SubmitError) -> Status {
    match e {
        SubmitError::QueueFull { .. } => Status::resource_exhausted(e.to_string()),
        SubmitError::Stopped => Status::unavailable(e.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// The gRPC status for a generation that did not finish.
fn sim_status(e: SimError) -> Status {
    match e {
        SimError::DeadlineExceeded { .. } => Status::deadline_exceeded(e.to_string()),
        SimError::Stopped { .. } => Status::unavailable(format!("generation did not finish: {e}")),
    }
}

/// The instant a call's `grpc-timeout` runs out, measured from now (when the worker read it).
fn call_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    request::grpc_timeout(metadata).and_then(|t| Instant::now().checked_add(t))
}

fn int_param(v: i64) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(v)) }
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The text of generated token `index`: the sim generates no language, so each token is a word
/// from a fixed list, which keeps outputs deterministic and their size proportional to the count.
pub fn token_text(index: u32) -> &'static str {
    const WORDS: [&str; 8] =
        ["lorem ", "ipsum ", "dolor ", "sit ", "amet ", "consectetur ", "adipiscing ", "elit "];
    WORDS[index as usize % WORDS.len()]
}

type InferStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

/// A stream's request and what submitting it gave: its generation, or the status that refused it.
type Admitted = (ModelInferRequest, Result<(switchyard_sim::Generation, ParsedInfer), Status>);

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.is_ready() }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let req = req.into_inner();
        request::check_model(&req.name, &req.version, &self.model)?;
        Ok(Response::new(ModelReadyResponse { ready: self.is_ready() }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "switchyard-worker".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![
                "model_stream_infer".into(),
                "model_repository".into(),
                "orca_load_report".into(),
            ],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        request::check_model(&req.name, &req.version, &self.model)?;
        let tensor =
            |name: &str| TensorMetadata { name: name.into(), datatype: "BYTES".into(), shape: vec![1] };
        Ok(Response::new(ModelMetadataResponse {
            name: self.model.to_string(),
            versions: vec!["1".into()],
            platform: "switchyard-sim".into(),
            inputs: vec![tensor(TEXT_INPUT)],
            outputs: vec![tensor(TEXT_OUTPUT)],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        // If the client goes (cancel, deadline, closed connection), the server drops this future
        // and with it the generation, which leaves the engine at once.
        let deadline = call_deadline(req.metadata());
        let req = req.into_inner();
        let parsed = self.parse(&req)?;
        let generation = self.submit(&parsed, deadline)?;
        let outcome = generation.collect_outcome().await.map_err(sim_status)?;
        let text: String = (0..outcome.output_tokens).map(token_text).collect();
        let params = [
            ("prompt_tokens", i64::from(outcome.prompt_tokens)),
            ("cached_prompt_tokens", i64::from(outcome.cached_prompt_tokens)),
            ("output_tokens", i64::from(outcome.output_tokens)),
            ("queue_us", micros(outcome.queued)),
            ("ttft_us", micros(outcome.ttft)),
            ("total_us", micros(outcome.total)),
        ];
        Ok(Response::new(self.response(&req.id, text, parsed.raw, &params, None)))
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let deadline = call_deadline(req.metadata());
        let mut incoming = req.into_inner();
        // The first request is admitted before the response starts: the load report in the
        // response's headers (`LoadReportLayer::with_head_report`) then counts it, as the
        // balancer that sent it does. A client that waits for the headers before it sends gets
        // them after FIRST_REQUEST_WAIT, and its requests are read as they come.
        let first = match tokio::time::timeout(FIRST_REQUEST_WAIT, incoming.next()).await {
            Ok(Some(Ok(req))) => {
                let admitted = self.admit(&req, deadline);
                Some((req, admitted))
            }
            Ok(Some(Err(status))) => return Err(status),
            Ok(None) | Err(_) => None,
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = this.read_stream(first, incoming, tx.clone(), deadline) => {}
                // The response was dropped (the client went away): stop reading its requests.
                () = tx.closed() => {}
            }
        });
        let responses = ReceiverStream::new(rx);
        Ok(Response::new(match deadline {
            Some(at) => until_deadline(responses, at),
            None => Box::pin(responses),
        }))
    }

    async fn repository_index(
        &self,
        req: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready = self.ready.load(Ordering::Acquire);
        let models = if req.into_inner().ready && !ready {
            vec![]
        } else {
            vec![ModelIndex {
                name: self.model.to_string(),
                version: "1".into(),
                state: if ready { "READY" } else { "UNAVAILABLE" }.into(),
                reason: if ready { String::new() } else { "worker is shutting down".into() },
            }]
        };
        Ok(Response::new(RepositoryIndexResponse { models }))
    }
}
