//! The local process scaler over real `switchyard worker` processes: a replica joins discovery
//! only once its health says SERVING, and leaves by draining (out of discovery, its request in
//! flight finishes, then it stops).

mod common;

use std::time::Duration;

use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker;
use switchyard_autoscale::Scaler;
use switchyard_autoscale::scaler::process::{ProcessConfig, ProcessScaler};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

async fn until(mut done: impl FnMut() -> bool, what: &str) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < give_up, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling an observable state
    }
}

async fn health(address: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_string()).ok()?.connect().await.ok()?;
    let answer =
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
    Some(answer.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_scaler_adds_only_serving_replicas_and_drains_before_stopping() {
    let (gateway, publisher) = common::gateway::one_pool().await;
    let board = gateway.pool("default").unwrap().board().clone();

    let mut config = ProcessConfig::new(common::BIN);
    config.cold_start = Duration::from_secs(1);
    config.worker_args = vec!["--speed".into(), "0.2".into()];
    let mut scaler = ProcessScaler::new(config, publisher, board.clone());
    scaler.set_desired(1).await.unwrap();

    // Starting: counted as current, not ready, and not in discovery until SERVING.
    until(
        || {
            let size = scaler.size();
            assert_eq!((size.desired, size.current), (1, 1));
            if size.ready == 0 {
                assert!(board.is_empty(), "a replica joined discovery before it was ready");
            }
            size.ready == 1
        },
        "the replica becomes ready",
    )
    .await;
    until(|| board.len() == 1, "the replica joins the pool").await;
    let address = board.snapshot()[0].endpoint.address.clone();
    assert_eq!(health(&address).await, Some(ServingStatus::Serving as i32), "joined while SERVING");

    // A long request in flight through the gateway (100 tokens at a fifth of the speed).
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    let request = tokio::spawn(async move {
        client.model_infer(worker::request::text_request("sim-llm", "drain me", 100)).await
    });
    until(|| board.snapshot().first().is_some_and(|e| e.load.in_flight == 1), "the request is in flight")
        .await;

    // Scale to zero: out of discovery at once (draining on the board), the process still up
    // while its request runs, the request answered, then the worker stops.
    scaler.set_desired(0).await.unwrap();
    assert_eq!(scaler.size().current, 0);
    until(|| board.snapshot().first().is_none_or(|e| e.draining), "the replica leaves discovery").await;
    if !request.is_finished() {
        assert_eq!(health(&address).await, Some(ServingStatus::Serving as i32), "stopped before draining");
    }
    let answer = request.await.unwrap();
    assert!(answer.is_ok(), "the request in flight failed: {answer:?}");
    scaler.shutdown().await;
    assert_eq!(health(&address).await, None, "the worker is still running after its drain");
    assert!(board.is_empty());
}
