#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A gateway pool's overload protection on its `/metrics`: after a burst that its `shed` queue
//! partly refuses, the shed series count exactly the refusals the clients received, the limit in
//! force is there, and the exposition passes `promtool` (Debian's `prometheus` package;
//! `scripts/install-test-deps.sh` installs it).

mod common;

use std::net::SocketAddr;

use common::prometheus::{get, promtool_check};

use switchyard::gateway::{Gateway, GatewayConfig, GatewayTelemetry};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_telemetry::MetricsRegistry;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// The sum of the series whose name and first labels start with `prefix`.
fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

/// Starts a simulated worker at `speed` on a loopback port; its address.
async fn worker(speed: f64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(worker::serve(
        WorkerArgs { speed, ..WorkerArgs::default() },
        listener,
        std::future::pending(),
    ));
    addr
}

/// Starts a gateway from `config` with metrics (no tracing) and an admin port; a channel to it.
async fn gateway(config: &str) -> (Gateway, Channel) {
    let config = GatewayConfig::from_toml(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let telemetry = GatewayTelemetry::new(MetricsRegistry::new(), false, false);
    let gateway = Gateway::start_with_telemetry(config, listener, Some(admin), telemetry).unwrap();
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    (gateway, channel)
}

#[tokio::test]
async fn refusals_of_the_shed_queue_and_the_limit_in_force_are_series_that_pass_promtool() {
    let worker_addr = worker(0.2).await;

    let (gateway, channel) = gateway(&format!(
        r#"
        [[pool]]
        name = "llama"
        endpoint_limit = {{ name = "fixed", limit = 2 }}
        layers = [
          {{ name = "shed", max_queue = 1, target = "50ms", interval = "500ms" }},
          {{ name = "limit", algorithm = {{ name = "fixed", limit = 1 }} }},
        ]
        endpoints = [{{ address = "http://{worker_addr}" }}]
        "#
    ))
    .await;

    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut client = GrpcInferenceServiceClient::new(channel.clone());
            let request = worker::request::text_request("sim-llm", "hello there", 24);
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 1 && ok >= 1, "a limit of one and a queue of one refuse some of six at once");

    let (status, text) = get(gateway.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sum(&text, r#"switchyard_shed_refused_total{pool="llama","#), f64::from(refused), "{text}");
    assert_eq!(sum(&text, r#"switchyard_shed_admitted_total{pool="llama","#), f64::from(ok), "{text}");
    assert_eq!(
        sum(&text, r#"switchyard_shed_queue_waiting_requests{pool="llama",layer="0"}"#),
        0.0,
        "{text}"
    );
    assert_eq!(sum(&text, r#"switchyard_pool_concurrency_limit{pool="llama",layer="1"}"#), 1.0, "{text}");
    assert_eq!(
        sum(&text, r#"switchyard_pool_limit_admitted_total{pool="llama",layer="1"}"#),
        f64::from(ok),
        "{text}"
    );
    assert_eq!(sum(&text, r#"switchyard_endpoint_concurrency_limit{pool="llama","#), 2.0, "{text}");

    // Every overload series the Grafana dashboard reads is one this gateway serves.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/switchyard.json"))
            .unwrap();
    let mut read = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if [
            "switchyard_shed_",
            "switchyard_pool_limit_",
            "switchyard_pool_concurrency_limit",
            "switchyard_endpoint_concurrency_limit",
        ]
        .iter()
        .any(|p| word.starts_with(p))
        {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{word}{{"))),
                "the dashboard reads {word}, not served\n{text}"
            );
            read += 1;
        }
    }
    assert!(read >= 6, "{read} overload series on the dashboard");

    promtool_check("gateway", &text).await;
}

#[tokio::test]
async fn two_limits_in_one_pool_are_two_series_told_apart_by_their_layer() {
    let worker_addr = worker(20.0).await;

    let (gateway, channel) = gateway(&format!(
        r#"
        [[pool]]
        name = "llama"
        layers = [
          {{ name = "shed", max_queue = 8 }},
          {{ name = "limit", algorithm = {{ name = "fixed", limit = 7 }} }},
          {{ name = "shed", max_queue = 4 }},
          {{ name = "limit", algorithm = {{ name = "fixed", limit = 3 }} }},
        ]
        endpoints = [{{ address = "http://{worker_addr}" }}]
        "#
    ))
    .await;
    let mut client = GrpcInferenceServiceClient::new(channel);
    for _ in 0..3 {
        client.model_infer(worker::request::text_request("sim-llm", "hello there", 4)).await.unwrap();
    }

    let (status, text) = get(gateway.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let line = |series: &str| text.lines().find(|l| l.starts_with(&format!("{series} "))).map(str::to_owned);
    assert_eq!(
        line(r#"switchyard_pool_concurrency_limit{pool="llama",layer="1"}"#).as_deref(),
        Some(r#"switchyard_pool_concurrency_limit{pool="llama",layer="1"} 7"#),
        "{text}"
    );
    assert_eq!(
        line(r#"switchyard_pool_concurrency_limit{pool="llama",layer="3"}"#).as_deref(),
        Some(r#"switchyard_pool_concurrency_limit{pool="llama",layer="3"} 3"#),
        "{text}"
    );
    // Each limit and each queue let the three calls through: counted once in each, not merged.
    for layer in ["1", "3"] {
        let admitted = format!(r#"switchyard_pool_limit_admitted_total{{pool="llama",layer="{layer}"}}"#);
        assert_eq!(sum(&text, &admitted), 3.0, "{text}");
    }
    for layer in ["0", "2"] {
        let admitted = format!(r#"switchyard_shed_admitted_total{{pool="llama",layer="{layer}","#);
        assert_eq!(sum(&text, &admitted), 3.0, "{text}");
        let waiting = format!(r#"switchyard_shed_queue_waiting_requests{{pool="llama",layer="{layer}"}}"#);
        assert_eq!(text.lines().filter(|l| l.starts_with(&waiting)).count(), 1, "{text}");
    }

    promtool_check("gateway", &text).await;
}
