//! The worker over real loopback gRPC, with the generated clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::proto::inference::infer_parameter::ParameterChoice;
use switchyard::proto::inference::*;
use switchyard::worker::{self, WorkerArgs};
use switchyard_core::{ReportedLoad, orca};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Worker {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), worker::WorkerError>>,
}

impl Worker {
    /// A worker with a fast simulated GPU, so tests take milliseconds of real time.
    async fn start() -> Self {
        Self::start_with(WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() }).await
    }

    async fn start_with(args: WorkerArgs) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(worker::serve(args, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, stop: Some(tx), task }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    async fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(self.channel().await)
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn infer(model: &str, text: &str, max_tokens: i64) -> ModelInferRequest {
    let mut req = worker::request::text_request(model, text, 1);
    req.id = "req-1".into();
    req.parameters.insert("max_tokens".into(), worker::request::int_parameter(max_tokens));
    req
}

fn load_report(metadata: &MetadataMap) -> ReportedLoad {
    let value = metadata.get_bin(orca::TRAILER_NAME).expect("endpoint-load-metrics-bin present");
    orca::decode(&value.to_bytes().expect("valid base64")).expect("an OrcaLoadReport")
}

fn int_param(resp: &ModelInferResponse, name: &str) -> i64 {
    match resp.parameters.get(name).and_then(|p| p.parameter_choice.clone()) {
        Some(ParameterChoice::Int64Param(v)) => v,
        other => panic!("parameter {name}: {other:?}"),
    }
}

#[tokio::test]
async fn model_infer_round_trip_with_load_report() {
    let w = Worker::start().await;
    let mut client = w.client().await;
    let response =
        client.model_infer(infer("sim-llm", "Tell me a story about a switchyard.", 12)).await.unwrap();
    let report = load_report(response.metadata());
    assert_eq!(report.capacity, 256, "max_batch in the report");
    let resp = response.into_inner();
    assert_eq!(
        (resp.model_name.as_str(), resp.model_version.as_str(), resp.id.as_str()),
        ("sim-llm", "1", "req-1")
    );
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(resp.outputs[0].name, "text_output");
    assert_eq!(resp.outputs[0].datatype, "BYTES");
    let text = &resp.outputs[0].contents.as_ref().unwrap().bytes_contents[0];
    assert_eq!(std::str::from_utf8(text).unwrap().split_whitespace().count(), 12);
    assert_eq!(int_param(&resp, "output_tokens"), 12);
    assert_eq!(int_param(&resp, "prompt_tokens"), 9, "35 bytes at 4 bytes a token");
    assert!(int_param(&resp, "ttft_us") > 0 && int_param(&resp, "total_us") > int_param(&resp, "ttft_us"));
}

#[tokio::test]
async fn raw_input_gets_raw_output() {
    let w = Worker::start().await;
    let mut req = infer("sim-llm", "", 3);
    req.inputs[0].contents = None;
    let mut raw = 11u32.to_le_bytes().to_vec();
    raw.extend_from_slice(b"hello world");
    req.raw_input_contents = vec![raw];
    let resp = w.client().await.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.raw_output_contents.len(), 1);
    let out = &resp.raw_output_contents[0];
    let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    assert_eq!(out.len(), 4 + len);
    assert_eq!(std::str::from_utf8(&out[4..]).unwrap().split_whitespace().count(), 3);
}

#[tokio::test]
async fn model_stream_infer_streams_every_token() {
    let w = Worker::start().await;
    let mut client = w.client().await;
    let requests =
        futures::stream::iter([infer("sim-llm", "first prompt", 5), infer("sim-llm", "second prompt", 3)]);
    let response = client.model_stream_infer(requests).await.unwrap();
    let mut stream = response.into_inner();
    let mut finals = 0;
    let mut tokens = 0;
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        assert!(message.error_message.is_empty(), "{}", message.error_message);
        let resp = message.infer_response.unwrap();
        tokens += 1;
        if let Some(ParameterChoice::BoolParam(true)) =
            resp.parameters.get("triton_final_response").and_then(|p| p.parameter_choice.clone())
        {
            finals += 1;
        }
        let text = &resp.outputs[0].contents.as_ref().unwrap().bytes_contents[0];
        assert_eq!(std::str::from_utf8(text).unwrap().split_whitespace().count(), 1);
    }
    assert_eq!((tokens, finals), (8, 2));
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(load_report(&trailers).capacity, 256);
}

#[tokio::test]
async fn a_streams_headers_report_the_load_with_its_first_request_admitted() {
    let w = Worker::start().await;
    let mut client = w.client().await;
    // A long generation: still running when the headers are read.
    let requests = futures::stream::iter([infer("sim-llm", "a prompt", 200)]);
    let response = client.model_stream_infer(requests).await.unwrap();
    let report = load_report(response.metadata());
    assert!(
        report.queue_depth + report.running >= 1,
        "the headers' report counts the stream's request, admitted before they left: {report:?}"
    );
    let mut stream = response.into_inner();
    while let Some(message) = stream.next().await {
        message.unwrap();
    }
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(load_report(&trailers).capacity, 256, "and the trailers carry one at its end");
}

#[tokio::test]
async fn a_stream_whose_client_waits_for_the_headers_before_sending_still_gets_them() {
    let w = Worker::start().await;
    let mut client = w.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let call = client.model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx));
    let response = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the headers come without a first request")
        .unwrap();
    tx.send(infer("sim-llm", "late prompt", 2)).await.unwrap();
    drop(tx);
    let mut stream = response.into_inner();
    let mut tokens = 0;
    while let Some(message) = stream.next().await {
        assert!(message.unwrap().error_message.is_empty());
        tokens += 1;
    }
    assert_eq!(tokens, 2, "the request sent after the headers is served");
}

#[tokio::test]
async fn stream_reports_a_bad_request_and_carries_on() {
    let w = Worker::start().await;
    let mut client = w.client().await;
    let requests = futures::stream::iter([infer("no-such-model", "x", 2), infer("sim-llm", "ok", 2)]);
    let mut stream = client.model_stream_infer(requests).await.unwrap().into_inner();
    let mut errors = vec![];
    let mut tokens = 0;
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        if message.error_message.is_empty() {
            tokens += 1;
        } else {
            errors.push(message.error_message);
        }
    }
    assert_eq!(tokens, 2);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("NOT_FOUND: model 'no-such-model'"), "{}", errors[0]);
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_a_load_report() {
    let w = Worker::start().await;
    let mut client = w.client().await;

    let err = client.model_infer(infer("gpt-17", "hi", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("gpt-17"), "{}", err.message());
    load_report(err.metadata());

    let mut missing = infer("sim-llm", "hi", 1);
    missing.inputs[0].name = "prompt".into();
    let err = client.model_infer(missing).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("text_input"), "{}", err.message());

    let mut mistyped = infer("sim-llm", "hi", 1);
    mistyped.inputs[0].datatype = "INT32".into();
    let err = client.model_infer(mistyped).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("text_input") && err.message().contains("INT32"), "{}", err.message());

    let err = client.model_infer(infer("sim-llm", "hi", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_tokens"), "{}", err.message());

    let mut too_long = infer("sim-llm", "hi", 1);
    too_long.parameters.insert(
        "prompt_tokens".into(),
        InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(10_000_000)) },
    );
    let err = client.model_infer(too_long).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    let err = client
        .model_metadata(ModelMetadataRequest { name: "nope".into(), version: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The worker is still fine after all that.
    client.model_infer(infer("sim-llm", "hi", 1)).await.unwrap();
}

#[tokio::test]
async fn full_queue_is_resource_exhausted() {
    let w =
        Worker::start_with(WorkerArgs { speed: 1.0, max_batch: 1, max_queue: 1, ..WorkerArgs::default() })
            .await;
    let mut client = w.client().await;
    let mut calls = vec![];
    // The first call runs, the second waits in the queue of one, the third finds it full. Each
    // is sent once the engine holds the one before it.
    for (i, holds) in [(1, 0), (1, 1), (1, 1)].into_iter().enumerate() {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move { c.model_infer(infer("sim-llm", "hold the batch", 50)).await }));
        if i < 2 {
            until_engine_holds(&mut client, holds, Duration::from_secs(5)).await;
        }
    }
    let mut codes = vec![];
    for call in calls {
        codes.push(match call.await.unwrap() {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        });
    }
    assert_eq!(codes, vec![Code::Ok, Code::Ok, Code::ResourceExhausted]);
}

#[tokio::test]
async fn metadata_and_readiness() {
    let w = Worker::start().await;
    let mut client = w.client().await;
    assert!(client.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(client.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = client
        .model_ready(ModelReadyRequest { name: "sim-llm".into(), version: String::new() })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let server = client.server_metadata(ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(server.name, "switchyard-worker");
    let model = client
        .model_metadata(ModelMetadataRequest { name: "sim-llm".into(), version: "1".into() })
        .await
        .unwrap();
    let model = model.into_inner();
    assert_eq!(model.inputs[0].name, "text_input");
    assert_eq!(model.outputs[0].name, "text_output");
    let index = client.repository_index(RepositoryIndexRequest::default()).await.unwrap().into_inner();
    assert_eq!(index.models.len(), 1);
    assert_eq!((index.models[0].name.as_str(), index.models[0].state.as_str()), ("sim-llm", "READY"));
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let w = Worker::start().await;
    let mut client = ServerReflectionClient::new(w.channel().await);
    let ask = |m: MessageRequest| ServerReflectionRequest { host: String::new(), message_request: Some(m) };
    let requests = futures::stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("inference.GRPCInferenceService".into())),
    ]);
    let mut responses = client.server_reflection_info(requests).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["inference.GRPCInferenceService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn health_turns_not_serving_and_in_flight_requests_finish_on_shutdown() {
    // Real speed: a 150-token generation takes about a second, long enough to shut down under it.
    let mut w = Worker::start_with(WorkerArgs { speed: 1.0, ..WorkerArgs::default() }).await;
    let channel = w.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest { service: service.into() };
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health.check(check(service)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut watch = health.watch(check("inference.GRPCInferenceService")).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

    let mut client = GrpcInferenceServiceClient::new(channel);
    let in_flight =
        tokio::spawn(async move { client.model_infer(infer("sim-llm", "long answer please", 150)).await });
    let mut probe = w.client().await;
    until_engine_holds(&mut probe, (1, 0), Duration::from_secs(5)).await;
    w.shutdown();

    let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("watch answers");
    assert_eq!(next.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    let response = in_flight.await.unwrap().expect("the in-flight request finishes");
    assert_eq!(int_param(response.get_ref(), "output_tokens"), 150);
    tokio::time::timeout(Duration::from_secs(10), &mut w.task).await.expect("worker stops").unwrap().unwrap();
    assert!(
        Channel::from_shared(format!("http://{}", w.addr)).unwrap().connect().await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn bad_engine_settings_are_refused_at_start() {
    let w = Worker::start_with(WorkerArgs { speed: 0.0, ..WorkerArgs::default() }).await;
    let err = w.task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("speed"), "{err}");
}

/// The worker's queue and batch as its ORCA trailer reports them, read from a `ServerLive` call.
async fn engine_load(client: &mut GrpcInferenceServiceClient<Channel>) -> ReportedLoad {
    let response = client.server_live(ServerLiveRequest {}).await.unwrap();
    load_report(response.metadata())
}

/// Waits until the worker's engine has nothing queued or running; panics after `limit`.
async fn until_engine_empty(client: &mut GrpcInferenceServiceClient<Channel>, limit: Duration) {
    until_engine_holds(client, (0, 0), limit).await;
}

/// Waits until the worker's engine has `running` and `queued` requests; panics after `limit`.
async fn until_engine_holds(
    client: &mut GrpcInferenceServiceClient<Channel>,
    (running, queued): (u32, u32),
    limit: Duration,
) {
    let give_up = tokio::time::Instant::now() + limit;
    loop {
        let load = engine_load(client).await;
        if load.queue_depth == queued && load.running == running {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "after {limit:?} the engine still has {} queued and {} running",
            load.queue_depth,
            load.running
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval
    }
}

/// One request at a time at H100 speed: a long answer (2,000 tokens, ~13 s of decoding) and three
/// requests of 60,000 prompt tokens (seconds of prefill each) behind it keep the engine busy for
/// about a minute if nobody takes them out.
async fn busy_worker() -> Worker {
    Worker::start_with(WorkerArgs { max_batch: 1, model: "sim-llm".into(), ..WorkerArgs::default() }).await
}

/// Opens a stream of four long requests and returns it once the first one decodes and three
/// queue.
async fn four_long_requests(
    client: &mut GrpcInferenceServiceClient<Channel>,
    timeout: Option<Duration>,
) -> tonic::Streaming<ModelStreamInferResponse> {
    let long_prompt = || {
        let mut req = infer("sim-llm", "a long story, please", 2000);
        req.parameters.insert("prompt_tokens".into(), worker::request::int_parameter(60_000));
        req
    };
    let requests = futures::stream::iter(
        std::iter::once(infer("sim-llm", "a long answer, please", 2000))
            .chain((0..3).map(move |_| long_prompt())),
    );
    let mut request = tonic::Request::new(requests);
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    let mut stream = client.model_stream_infer(request).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.error_message.is_empty(), "{}", first.error_message);
    until_engine_holds(client, (1, 3), Duration::from_secs(2)).await;
    stream
}

async fn next_call_queue_us(client: &mut GrpcInferenceServiceClient<Channel>) -> i64 {
    let resp = client.model_infer(infer("sim-llm", "and now?", 2)).await.unwrap().into_inner();
    int_param(&resp, "queue_us")
}

#[tokio::test]
async fn a_cancelled_stream_leaves_no_queue_behind() {
    let w = busy_worker().await;
    let mut client = w.client().await;
    let stream = four_long_requests(&mut client, None).await;
    drop(stream); // the client cancels: RST_STREAM
    // Each of the three queued would cost seconds of prefill if it stayed until its first token
    // (the worker used to notice a gone client only when it sent the next token).
    until_engine_empty(&mut client, Duration::from_secs(2)).await;
    let queue_us = next_call_queue_us(&mut client).await;
    // At most the decode step in progress when the requests left (~7 ms at H100 speed).
    assert!(queue_us < 20_000, "the next call queued {queue_us} µs");
}

#[tokio::test]
async fn an_expired_stream_leaves_no_queue_behind() {
    let w = busy_worker().await;
    let mut client = w.client().await;
    let mut stream = four_long_requests(&mut client, Some(Duration::from_millis(500))).await;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without its deadline"),
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    until_engine_empty(&mut client, Duration::from_secs(2)).await;
    let queue_us = next_call_queue_us(&mut client).await;
    // At most the decode step in progress when the requests left (~7 ms at H100 speed).
    assert!(queue_us < 20_000, "the next call queued {queue_us} µs");
}

#[tokio::test]
async fn a_closed_connection_and_an_expired_unary_call_leave_no_queue_behind() {
    let w = busy_worker().await;
    let mut client = w.client().await;
    // On a connection of its own, closed by dropping every handle to it.
    let mut other = w.client().await;
    let stream = four_long_requests(&mut other, None).await;
    drop((stream, other));
    until_engine_empty(&mut client, Duration::from_secs(2)).await;

    let mut running = client
        .model_stream_infer(futures::stream::iter([infer("sim-llm", "long", 2000)]))
        .await
        .unwrap()
        .into_inner();
    running.next().await.unwrap().unwrap();
    let mut late = tonic::Request::new(infer("sim-llm", "queued behind it", 2));
    late.set_timeout(Duration::from_millis(200));
    let err = client.model_infer(late).await.unwrap_err();
    // The client's own timer (CANCELLED, "Timeout expired") or the worker's (DEADLINE_EXCEEDED),
    // whichever fires first.
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    // The expired call left the queue; the long one still runs.
    until_engine_holds(&mut client, (1, 0), Duration::from_secs(5)).await;
    drop(running);
    until_engine_empty(&mut client, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_load_report_counts_a_running_request_s_kv_reservation() {
    // 10,000 tokens of KV; one request reserves its prompt and its longest answer, 1,000 + 2,000.
    let w =
        Worker::start_with(WorkerArgs { kv_capacity: 10_000, max_batch: 4, ..WorkerArgs::default() }).await;
    let mut client = w.client().await;
    let idle = engine_load(&mut client).await;
    assert_eq!(idle.kv_cache_utilization, 0.0, "{idle:?}");
    let mut req = infer("sim-llm", "a long answer, please", 2000);
    req.parameters.insert("prompt_tokens".into(), worker::request::int_parameter(1000));
    let mut stream = client.model_stream_infer(futures::stream::iter([req])).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    let busy = engine_load(&mut client).await;
    assert_eq!((busy.running, busy.kv_cache_utilization), (1, 0.3), "{busy:?}");
    drop(stream);
    until_engine_empty(&mut client, Duration::from_secs(5)).await;
    assert_eq!(engine_load(&mut client).await.kv_cache_utilization, 0.0);
}

/// A draining worker, as its inference service sees it: the flag the shutdown turns off.
#[tokio::test]
async fn a_draining_worker_is_not_ready_and_refuses_inference_with_unavailable() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use switchyard::proto::inference::grpc_inference_service_server::GrpcInferenceService;

    let engine = switchyard::sim::EngineHandle::spawn(WorkerArgs::default().engine_config()).unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    let service = worker::InferenceService::new("sim-llm", engine.clone(), ready.clone());
    let ready_now = |service: &worker::InferenceService| {
        let service = service.clone();
        async move {
            service.server_ready(tonic::Request::new(ServerReadyRequest {})).await.unwrap().into_inner().ready
        }
    };
    assert!(ready_now(&service).await);
    service.model_infer(tonic::Request::new(infer("sim-llm", "hi", 1))).await.unwrap();

    ready.store(false, Ordering::Release); // what the worker's shutdown does first
    assert!(!ready_now(&service).await);
    let model = service
        .model_ready(tonic::Request::new(ModelReadyRequest {
            name: "sim-llm".into(),
            version: String::new(),
        }))
        .await
        .unwrap();
    assert!(!model.into_inner().ready);
    let err = service.model_infer(tonic::Request::new(infer("sim-llm", "hi", 1))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shutting down"), "{err:?}");
    assert_eq!(engine.load().completed, 1, "the refused call never reached the engine");
    engine.shutdown();
}

#[tokio::test]
async fn the_drain_timeout_stops_the_worker_with_a_stream_still_running() {
    // 2,000 tokens at real speed take about 13 s; the drain allows 300 ms.
    let mut w =
        Worker::start_with(WorkerArgs { drain_timeout: Duration::from_millis(300), ..WorkerArgs::default() })
            .await;
    let mut client = w.client().await;
    let mut stream = client
        .model_stream_infer(futures::stream::iter([infer("sim-llm", "a long answer, please", 2000)]))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().unwrap().error_message.is_empty());
    w.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut w.task)
        .await
        .expect("the worker stops at its drain timeout, not with the stream")
        .unwrap()
        .unwrap();
    let mut tokens = 1;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the stream ends") {
            Some(Ok(message)) if message.error_message.is_empty() => tokens += 1,
            Some(Ok(message)) => break Some(message.error_message),
            Some(Err(status)) => break Some(status.to_string()),
            None => break None,
        }
    };
    assert!(tokens < 2000, "the stream ran to its end after the worker stopped");
    assert!(end.is_some(), "a cut-off stream ends with an error, not as complete ({tokens} tokens)");
}

#[tokio::test]
async fn a_parallel_kind_worker_serves_k_at_once_and_reports_its_slots() {
    let args = WorkerArgs {
        kind: worker::ReplicaKindArg::Parallel,
        parallel: 3,
        service_ms: 5.0,
        model: "sim-llm".into(),
        ..WorkerArgs::default()
    };
    assert_eq!(args.engine_config().parallel_service_time(), Some(Duration::from_millis(5)));
    let w = Worker::start_with(args).await;
    let mut client = w.client().await;
    let response = client.model_infer(infer("sim-llm", "embed me", 4)).await.unwrap();
    assert_eq!(load_report(response.metadata()).capacity, 3, "its slots in the report");
    let resp = response.into_inner();
    assert_eq!(int_param(&resp, "output_tokens"), 4);
    // Every token comes at the end of the service: the first is the last.
    assert_eq!(int_param(&resp, "ttft_us"), int_param(&resp, "total_us"));
    assert!(int_param(&resp, "total_us") >= 5_000);
}

#[tokio::test]
async fn a_parallel_kind_worker_refuses_a_zero_service_time() {
    let args =
        WorkerArgs { kind: worker::ReplicaKindArg::Parallel, service_ms: 0.0, ..WorkerArgs::default() };
    let err =
        worker::serve(args, TcpListener::bind("127.0.0.1:0").await.unwrap(), async {}).await.unwrap_err();
    assert!(err.to_string().contains("service_time"), "{err}");
}

#[tokio::test]
async fn readiness_answers_false_through_the_drain_grace_while_inference_is_still_served() {
    // A long grace, so that the checks below run inside it.
    let mut w = Worker::start_with(WorkerArgs {
        speed: 20.0,
        drain_grace: Duration::from_secs(30),
        ..WorkerArgs::default()
    })
    .await;
    let channel = w.channel().await;
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let model_ready = || ModelReadyRequest { name: "sim-llm".into(), version: String::new() };
    assert!(client.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    assert!(client.model_ready(model_ready()).await.unwrap().into_inner().ready);
    let mut health = HealthClient::new(channel);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

    w.shutdown();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("watch answers");
    assert_eq!(next.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    // Draining has begun: every readiness signal says so, and calls sent meanwhile still run.
    assert!(!client.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    assert!(!client.model_ready(model_ready()).await.unwrap().into_inner().ready);
    let answer = client.model_infer(infer("sim-llm", "still served in the grace", 4)).await;
    assert!(answer.is_ok(), "a call in the drain grace failed: {answer:?}");
    w.task.abort();
}

#[tokio::test]
async fn load_reports_stream_out_of_band_at_the_interval_asked_for_and_end_on_shutdown() {
    use switchyard::proto::orca_service::OrcaLoadReportRequest;
    use switchyard::proto::orca_service::open_rca_service_client::OpenRcaServiceClient;

    let mut w = Worker::start_with(WorkerArgs { speed: 1.0, ..WorkerArgs::default() }).await;
    let mut reports = OpenRcaServiceClient::new(w.channel().await);
    let ask = |ms: u64| OrcaLoadReportRequest {
        report_interval: Some(prost_types::Duration::try_from(Duration::from_millis(ms)).unwrap()),
        request_cost_names: Vec::new(),
    };
    let mut stream = reports.stream_core_metrics(ask(20)).await.unwrap().into_inner();
    let idle = ReportedLoad::from(stream.next().await.unwrap().unwrap());
    assert_eq!((idle.running, idle.queue_depth), (0, 0), "nothing sent yet");
    assert!(idle.capacity > 0, "the batch size is reported: {idle:?}");

    // A long generation runs: the next reports show it, with no response to carry them.
    let mut client = w.client().await;
    let call = tokio::spawn(async move { client.model_infer(infer("sim-llm", "a long answer", 150)).await });
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let report = ReportedLoad::from(stream.next().await.unwrap().unwrap());
        if report.running == 1 {
            seen.push(start.elapsed());
        }
        assert!(start.elapsed() < Duration::from_secs(5), "five reports of the running call within 5 s");
    }
    // At 20 ms a report, five take at least 80 ms between the first and the last.
    assert!(seen[4] - seen[0] >= Duration::from_millis(75), "{seen:?}");
    assert!(seen[4] - seen[0] < Duration::from_millis(1500), "{seen:?}");

    // Asked for 1 ms, the worker streams no faster than its 10 ms minimum.
    let mut fast = reports.stream_core_metrics(ask(1)).await.unwrap().into_inner();
    let first = std::time::Instant::now();
    for _ in 0..6 {
        fast.next().await.unwrap().unwrap();
    }
    assert!(first.elapsed() >= Duration::from_millis(45), "{:?} for six reports", first.elapsed());

    w.shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends when the worker drains");
    call.await.unwrap().expect("the call finishes");
}
