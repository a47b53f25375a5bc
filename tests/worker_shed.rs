#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The worker's server-side shed layer (`switchyard worker --shed TARGET`) over real gRPC: it
//! reads the engine's own queue, refuses sheddable requests before critical ones with
//! `RESOURCE_EXHAUSTED` and a pushback, and keeps a request whose deadline has passed away from
//! the engine.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use switchyard::sim::{EngineConfig, EngineHandle, ReplicaKind};
use switchyard::worker::{self, InferenceService, LoadReportLayer};
use switchyard_core::{Outcome, Priority, StatusLayer};
use switchyard_shed::{Reason, ServerShedLayer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

/// A worker stack (as `switchyard worker --shed 20ms` builds it) over a classic server of one
/// slot at 200 ms a request: a backlog builds at once.
async fn start() -> (Channel, EngineHandle, ServerShedLayer, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = EngineHandle::spawn(EngineConfig {
        max_batch: 1,
        kind: ReplicaKind::Parallel { service_time: Duration::from_millis(200) },
        ..EngineConfig::default()
    })
    .unwrap();
    let shed = worker::engine_shed(&engine, Duration::from_millis(20), 64);
    let reporter = engine.clone();
    let inference = InferenceService::new("sim-llm", engine.clone(), Arc::new(AtomicBool::new(true)));
    let server = tonic::transport::Server::builder()
        .layer(LoadReportLayer::new(move || reporter.reported_load()))
        .layer(StatusLayer)
        .layer(shed.clone())
        .add_service(GrpcInferenceServiceServer::new(inference))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    (channel, engine, shed, addr)
}

fn request(
    priority: &'static str,
    timeout: Option<&'static str>,
) -> tonic::Request<switchyard::proto::inference::ModelInferRequest> {
    let mut request = tonic::Request::new(worker::request::text_request("sim-llm", "hello there", 4));
    request.metadata_mut().insert("x-priority", priority.parse().unwrap());
    if let Some(t) = timeout {
        request.metadata_mut().insert("grpc-timeout", t.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn an_overloaded_worker_refuses_sheddable_before_critical() {
    let (channel, engine, shed, _) = start().await;
    // A standing backlog of standard requests, none with a deadline.
    let mut backlog = Vec::new();
    for _ in 0..6 {
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        backlog.push(tokio::spawn(async move { client.model_infer(request("standard", None)).await }));
    }
    // Probe with sheddable requests until the layer sheds one (an admitted probe is cancelled
    // when its wait is cut short, which takes it out of the engine's queue).
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let mut refusal = None;
    for _ in 0..200 {
        let probe = client.model_infer(request("sheddable", None));
        if let Ok(Err(status)) = tokio::time::timeout(Duration::from_millis(20), probe).await {
            refusal = Some(status);
            break;
        }
    }
    let status = refusal.expect("the overloaded worker shed a sheddable request");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let pushback = status.metadata().get("grpc-retry-pushback-ms").expect("a pushback");
    let pushback_ms: u64 = pushback.to_str().unwrap().parse().unwrap();
    assert!(pushback_ms >= 20, "at least the target: {pushback_ms}");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("8"));
    trailers.insert("grpc-retry-pushback-ms", pushback.to_str().unwrap().parse().unwrap());
    assert!(matches!(Outcome::from_trailers(&trailers), Some(Outcome::Overloaded { pushback: Some(_) })));
    assert!(engine.load().queue_depth > 0);

    // Meanwhile a critical request is admitted and served.
    let critical = client.model_infer(request("critical", None)).await;
    assert!(critical.is_ok(), "{critical:?}");
    for call in backlog {
        assert!(call.await.unwrap().is_ok());
    }
    let stats = shed.stats();
    assert!(stats.refused(Reason::Delay, Priority::Sheddable) >= 1, "{stats:?}");
    assert_eq!(stats.refused_in(Priority::Critical), 0, "{stats:?}");
    assert_eq!(stats.admitted_in(Priority::Critical), 1, "{stats:?}");
}

/// Sends one `ModelInfer` call over a bare HTTP/2 connection with `grpc-timeout: 0m` (tonic's
/// client would enforce that timeout itself and never send the call) and returns its
/// `grpc-status`.
async fn call_with_passed_deadline(addr: std::net::SocketAddr) -> String {
    use http_body_util::BodyExt;
    use prost::Message;

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let message = worker::request::text_request("sim-llm", "hello there", 4).encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let request = http::Request::post(format!("http://{addr}/inference.GRPCInferenceService/ModelInfer"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-priority", "critical")
        .header("grpc-timeout", "0m")
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.unwrap().trailers().cloned().unwrap_or_default();
    let status = parts.headers.get("grpc-status").or_else(|| trailers.get("grpc-status"));
    status.expect("a grpc-status").to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_request_whose_deadline_has_passed_never_reaches_the_engine() {
    let (channel, engine, shed, addr) = start().await;
    assert_eq!(call_with_passed_deadline(addr).await, "4", "DEADLINE_EXCEEDED");
    assert_eq!(shed.stats().refused(Reason::Expired, Priority::Critical), 1);
    // Nothing was ever submitted: no queue, no run, nothing completed, cancelled or expired.
    let load = engine.load();
    assert_eq!(
        (load.queue_depth, load.running, load.completed, load.cancelled, load.expired),
        (0, 0, 0, 0, 0),
        "{load:?}"
    );
    // The same request with time to spare is served.
    let mut client = GrpcInferenceServiceClient::new(channel);
    assert!(client.model_infer(request("critical", Some("5S"))).await.is_ok());
    assert_eq!(engine.load().completed, 1);
}
