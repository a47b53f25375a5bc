#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The gateway binary with a pool that retries: one of its two endpoints refuses connections,
//! and every idempotent call still succeeds, retried on the other; the pool's metrics count the
//! retries.

mod common;

use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{WorkerArgs, request::text_request};
use tokio::net::TcpListener;

#[tokio::test]
async fn every_idempotent_call_succeeds_when_one_of_two_endpoints_refuses_connections() {
    let worker = common::worker::in_process(WorkerArgs { speed: 1000.0, ..WorkerArgs::default() }).await;
    // A port nothing listens on: connections to it are refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
threads = 1

[[pool]]
name = "llama"
policy = "round-robin"
endpoints = [{{ address = "http://{closed}", id = "down" }}, {{ address = "http://{}", id = "up" }}]
retry = {{ attempts = 3, idempotent = ["/inference.GRPCInferenceService/*"] }}
"#,
            worker.addr
        ),
    )
    .unwrap();
    let (_gateway, addrs) = common::spawn_until_all(
        &[
            "gateway",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &["gateway serving on ", "admin serving on "],
    )
    .await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", addrs[0])).await.unwrap();
    for i in 0..20 {
        let response = client.model_infer(text_request("sim-llm", "hello", 2)).await;
        assert!(response.is_ok(), "call {i}: {response:?}");
    }
    let admin: std::net::SocketAddr = addrs[1].parse().unwrap();
    let (status, metrics) = common::prometheus::get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_pool_retries_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        retries.is_some_and(|r| r >= 1.0),
        "the calls that met the closed port were retried: {retries:?}"
    );
}
