#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The gateway's `/metrics` over real loopback gRPC: a request's bytes are counted as they pass,
//! and an endpoint removed from its pool (through a discovery channel) leaves `/metrics` once it
//! has left the board, while the live endpoints' counts go on where they were.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message;
use switchyard::core::Endpoint;
use switchyard::gateway::{Gateway, GatewayConfig, GatewayTelemetry};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_telemetry::MetricsRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// An in-process worker; it stops when dropped.
struct Worker {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Worker {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let args = WorkerArgs { speed: 50.0, ..WorkerArgs::default() };
        tokio::spawn(worker::serve(args, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, _stop: tx }
    }
}

/// `GET /metrics` over HTTP/1.1.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the series `series` (name and labels, exactly as rendered) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until `done` holds (checked every 5 ms), at most 10 s.
async fn until(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn picks(endpoint: &str) -> String {
    format!(r#"switchyard_endpoint_picks_total{{pool="default",endpoint="{endpoint}"}}"#)
}

fn durations(endpoint: &str) -> String {
    format!(
        r#"switchyard_endpoint_duration_seconds_count{{pool="default",endpoint="{endpoint}",outcome="ok"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoints_series_leave_metrics_once_it_has_left_the_board_and_live_counts_stay() {
    let workers = [Worker::start().await, Worker::start().await];
    let (publisher, source) = switchyard_discovery::channel(16);
    let config = GatewayConfig::from_toml(
        "threads = 1\n[[pool]]\nname = \"default\"\npolicy = \"round-robin\"\n[[pool.discovery]]\nkind = \"static\"\nendpoints = []\n",
    )
    .unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::start_with_sources_and_telemetry(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(admin),
        vec![("default".into(), source)],
        GatewayTelemetry::new(MetricsRegistry::new(), true, false),
    )
    .unwrap();
    let admin = gateway.admin_addr().unwrap();
    let endpoint = |i: usize| Endpoint::new(format!("w{i}"), format!("http://{}", workers[i].addr));
    publisher.insert(endpoint(0)).await.unwrap();
    publisher.insert(endpoint(1)).await.unwrap();
    let board = gateway.pool("default").unwrap().board().clone();
    until(|| board.len() == 2, "both endpoints join").await;

    let mut client =
        GrpcInferenceServiceClient::connect(format!("http://{}", gateway.local_addr())).await.unwrap();
    let request = worker::request::text_request("sim-llm", "Tell me a story.", 2);
    let calls = 10;
    for _ in 0..calls {
        client.model_infer(request.clone()).await.unwrap();
    }

    let text = scrape(admin).await;
    // Round robin over two: five each, each measured by the observer.
    for id in ["w0", "w1"] {
        assert_eq!(value(&text, &picks(id)), Some(5.0), "{text}");
        assert_eq!(value(&text, &durations(id)), Some(5.0), "{text}");
    }
    // Every request's bytes, as the client framed them (5-byte prefix, then the message).
    let framed = (5 + request.encoded_len()) as f64;
    let series =
        r#"{rpc_system="grpc",rpc_service="inference.GRPCInferenceService",rpc_method="ModelInfer"}"#;
    assert_eq!(
        value(&text, &format!("rpc_server_request_size_bytes_count{series}")),
        Some(calls as f64),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("rpc_server_request_size_bytes_sum{series}")),
        Some(framed * calls as f64),
        "{text}"
    );

    // w1 leaves; once it is off the board, the next scrape has none of its series.
    publisher.remove("w1").await.unwrap();
    until(|| board.get(&"w1".into()).is_none(), "w1 leaves the board").await;
    let text = scrape(admin).await;
    assert!(!text.contains(r#"endpoint="w1""#), "w1's series stay after it left:\n{text}");
    assert_eq!(value(&text, &picks("w0")), Some(5.0), "{text}");
    assert_eq!(value(&text, &durations("w0")), Some(5.0), "{text}");
    assert_eq!(value(&text, r#"switchyard_pool_endpoints{pool="default"}"#), Some(1.0), "{text}");

    // w0's counts go on from where they were.
    for _ in 0..4 {
        client.model_infer(request.clone()).await.unwrap();
    }
    let text = scrape(admin).await;
    assert_eq!(value(&text, &picks("w0")), Some(9.0), "{text}");
    assert_eq!(value(&text, &durations("w0")), Some(9.0), "{text}");
    assert!(!text.contains(r#"endpoint="w1""#), "{text}");

    // w1 back: its series start anew, and its requests are measured again.
    publisher.insert(endpoint(1)).await.unwrap();
    until(|| board.len() == 2, "w1 joins again").await;
    for _ in 0..4 {
        client.model_infer(request.clone()).await.unwrap();
    }
    let text = scrape(admin).await;
    let (w0, w1) = (value(&text, &picks("w0")).unwrap(), value(&text, &picks("w1")).unwrap());
    assert_eq!(w0 + w1, 13.0, "{text}");
    assert!(w1 >= 1.0, "{text}");
    assert_eq!(value(&text, &durations("w1")), Some(w1), "{text}");
    assert_eq!(value(&text, &durations("w0")), Some(w0), "{text}");
    gateway.shutdown().await.unwrap();
}
