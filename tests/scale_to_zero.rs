//! A pool scaled to zero over real `switchyard worker` processes: the gateway holds a request
//! in its shed queue (`hold_when_empty`), the autoscaler sees it held and starts a replica, and
//! the request is answered by that replica within its deadline; a request whose deadline passes
//! first gets `DEADLINE_EXCEEDED` from the gateway and never reaches a replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use switchyard::gateway::GatewayConfig;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker;
use switchyard_autoscale::scaler::process::{ProcessConfig, ProcessScaler};
use switchyard_autoscale::{Autoscaler, BoardSignals, Bounds, LlmAware, LlmAwareConfig, Scaler, WithHeld};
use tokio::time::Instant;

const COLD_START: Duration = Duration::from_millis(3500);

fn infer(deadline_ms: u64) -> tonic::Request<switchyard::proto::inference::ModelInferRequest> {
    let mut request = tonic::Request::new(worker::request::text_request("sim-llm", "wake up", 4));
    request.metadata_mut().insert("grpc-timeout", format!("{deadline_ms}m").parse().unwrap());
    request
}

type Client = GrpcInferenceServiceClient<
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>,
>;

/// A client over plain HTTP/2 with no timer of its own (tonic's `Channel` enforces `grpc-timeout`
/// on the client side too): the status a call ends with is the gateway's.
fn client(addr: std::net::SocketAddr) -> Client {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    GrpcInferenceServiceClient::with_origin(http, format!("http://{addr}").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_at_zero_replicas_wakes_the_pool_and_is_served_within_its_deadline() {
    let (gateway, publisher) = common::gateway::with_channel(
        &format!(
            "threads = 1\n[[pool]]\nname = \"default\"\nhold_when_empty = true\n\
             layers = [{{ name = \"shed\", max_queue = 16 }}]\n{}",
            common::gateway::EMPTY_STATIC
        ),
        64,
    )
    .await;
    let pool = gateway.pool("default").unwrap();
    let board = pool.board().clone();

    // Zero replicas; the default recommender, allowed to go to zero, deciding every 100 ms.
    let mut process = ProcessConfig::new(common::BIN);
    // A cold start longer than the 3 s a pool without `hold_when_empty` waits for a first
    // endpoint before it fails its requests: the held request is answered only if held.
    process.cold_start = COLD_START;
    let scaler = ProcessScaler::new(process, publisher, board.clone());
    assert_eq!(scaler.size().desired, 0);
    let recommender = LlmAware::new(LlmAwareConfig {
        interval: Duration::from_millis(100),
        bounds: Bounds::new(0, 2),
        ..LlmAwareConfig::default()
    });
    let signals = WithHeld::new(BoardSignals::new(board.clone()), pool.held_requests_reader());
    let (decisions_tx, mut decisions) = tokio::sync::mpsc::unbounded_channel();
    let autoscaler = tokio::spawn(Autoscaler::new(signals, recommender, scaler).run(move |d| {
        let _ = decisions_tx.send(d.clone());
    }));

    let sent = Instant::now();
    let mut patient = client(gateway.local_addr());
    let patient = tokio::spawn(async move { patient.model_infer(infer(30_000)).await });
    let mut hasty = client(gateway.local_addr());
    let hasty = tokio::spawn(async move { hasty.model_infer(infer(200)).await });

    // The hasty one expires in the gateway's queue: no replica is up within 200 ms.
    let hasty = hasty.await.unwrap().unwrap_err();
    assert_eq!(hasty.code(), tonic::Code::DeadlineExceeded, "{hasty:?}");
    assert!(board.is_empty(), "a replica was ready before the cold start was over");

    let answer = patient.await.unwrap();
    assert!(answer.is_ok(), "the held request failed: {answer:?}");
    assert!(sent.elapsed() >= COLD_START, "answered before a replica could be ready");

    // The scaler woke the pool on the held request: 0 → 1, for that reason.
    let mut woke = None;
    while let Ok(d) = decisions.try_recv() {
        if d.changed() {
            woke.get_or_insert(d);
        }
    }
    let woke = woke.expect("a scale decision");
    assert_eq!((woke.before.desired, woke.recommendation.desired), (0, 1));
    assert_eq!(woke.recommendation.reason, "requests held: wake");

    // One replica, and it saw one request only: the expired one never reached it.
    let entries = board.snapshot();
    assert_eq!(entries.len(), 1);
    let load = &entries[0].load;
    assert_eq!(
        load.completed + load.failed + load.overloaded + load.cancelled + u64::from(load.in_flight),
        1
    );
    assert_eq!(pool.held_requests(), 0);

    autoscaler.abort();
    let _ = autoscaler.await; // dropping the scaler kills its workers
    gateway.shutdown().await.unwrap();
}

#[test]
fn holding_requests_needs_a_shed_queue() {
    let err = GatewayConfig::from_toml(
        "[[pool]]\nname = \"default\"\nhold_when_empty = true\nendpoints = [{ address = \"http://127.0.0.1:1\" }]\n",
    )
    .unwrap_err();
    assert_eq!((err.line, err.field.as_deref()), (Some(3), Some("pool[0].hold_when_empty")), "{err}");
    assert!(err.message.contains("`shed` layer"), "{err}");
}
