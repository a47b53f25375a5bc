#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What the gateway's and the load generator's docs promise, each checked where it can fail: an
//! endpoint dying mid-stream, `grpc-timeout` passed through, the drain timeout, the model header
//! setting, flags over the config file, ejection on `/endpoints`, and the load generator's
//! bookkeeping (dropped, `--max-in-flight`, timeouts) from which every report's figures come.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::balance::PolicyKind;
use switchyard::gateway::{Gateway, GatewayArgs, GatewayConfig};
use switchyard::loadgen::{self, LoadgenArgs};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::proto::inference::*;
use switchyard::sim::TraceRecord;
use switchyard::worker::{self, WorkerArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

mod common;

/// An in-process worker; it stops when dropped.
struct Worker {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Worker {
    async fn start(args: WorkerArgs) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(worker::serve(args, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, _stop: tx }
    }

    /// A worker for `model` with a fast simulated GPU.
    async fn fast(model: &str) -> Self {
        Self::start(WorkerArgs { speed: 20.0, model: model.into(), ..WorkerArgs::default() }).await
    }

    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn start_gateway(config: GatewayConfig) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Gateway::start(config, listener, Some(admin)).unwrap()
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn client(addr: SocketAddr) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(channel(addr).await)
}

fn infer(model: &str, text: &str, max_tokens: u32) -> ModelInferRequest {
    worker::request::text_request(model, text, max_tokens)
}

/// Waits until `done` holds, polling; panics with `what` after 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < give_up, "after 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval
    }
}

/// One HTTP/1.1 GET to the admin API, as JSON.
async fn admin_get(addr: SocketAddr, path: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_dies_mid_stream_fails_the_call_counts_it_and_releases_it() {
    // A worker process, killed outright (SIGKILL) while it streams to the gateway.
    let (mut child, addr) =
        common::spawn_until(&["worker", "--listen", "127.0.0.1:0"], "worker serving on ").await;
    let mut config = GatewayConfig::single_pool(&[format!("http://{addr}")], PolicyKind::DEFAULT).unwrap();
    config.threads = std::num::NonZeroUsize::new(1);
    let gateway = start_gateway(config).await;
    let board = gateway.pool("default").unwrap().board().clone();
    let mut client = client(gateway.local_addr()).await;
    let mut stream = client
        .model_stream_infer(futures::stream::iter([infer("sim-llm", "a long answer", 2000)]))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().unwrap().error_message.is_empty());
    assert_eq!(board.snapshot()[0].load.in_flight, 1);

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the stream ends") {
            Some(Ok(message)) => assert!(message.error_message.is_empty(), "{}", message.error_message),
            Some(Err(status)) => break status,
            None => panic!("the stream ended as if complete"),
        }
    };
    // UNAVAILABLE: the endpoint went away; the client may retry the call elsewhere.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    until("the call leaves the board", || board.snapshot()[0].load.in_flight == 0).await;
    let load = board.snapshot()[0].load.clone();
    assert_eq!((load.completed, load.failed, load.cancelled), (0, 1, 0), "{load:?}");
    gateway.shutdown().await.unwrap();
}

/// A gRPC endpoint that answers every call at once with NOT_FOUND whose message is the
/// `grpc-timeout` it received, except calls carrying `x-hang`, which it never answers.
async fn timeout_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                if request.headers().contains_key("x-hang") {
                    std::future::pending::<()>().await;
                }
                let timeout = request
                    .headers()
                    .get("grpc-timeout")
                    .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "5")
                    .header("grpc-message", format!("grpc-timeout={timeout}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn grpc_timeout_reaches_the_endpoint_and_a_call_past_it_counts_as_cancelled() {
    let endpoint = timeout_echo().await;
    let gateway = start_gateway(
        GatewayConfig::single_pool(&[format!("http://{endpoint}")], PolicyKind::DEFAULT).unwrap(),
    )
    .await;
    let board = gateway.pool("default").unwrap().board().clone();
    let mut health = HealthClient::new(channel(gateway.local_addr()).await);

    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(Duration::from_secs(7));
    let err = health.check(request).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // tonic writes 7 s as the shortest exact form it has: 7,000,000 microseconds.
    assert_eq!(err.message(), "grpc-timeout=7000000u", "the endpoint's view of the deadline");
    let err = health.check(HealthCheckRequest { service: String::new() }).await.unwrap_err();
    assert_eq!(err.message(), "grpc-timeout=none", "the gateway sets no deadline of its own");

    // A call the endpoint never answers ends at the client's deadline, and the gateway counts it
    // as cancelled (the caller gave up), not as the endpoint's failure.
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(Duration::from_millis(200));
    request.metadata_mut().insert("x-hang", "1".parse().unwrap());
    let err = health.check(request).await.unwrap_err();
    assert!(matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded), "{err:?}");
    until("the timed-out call leaves the board", || board.snapshot()[0].load.in_flight == 0).await;
    let load = board.snapshot()[0].load.clone();
    // The two NOT_FOUND answers count as failed calls (not the endpoint's failures), the
    // timed-out call as cancelled.
    assert_eq!((load.completed, load.failed, load.cancelled), (0, 2, 1), "{load:?}");
    assert!(!board.snapshot()[0].ejected, "no ejection for the caller's deadline");
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cuts_off_a_stream_that_outlasts_it() {
    // Real speed: 2,000 tokens take about 13 s; the drain allows 300 ms.
    let w = Worker::start(WorkerArgs::default()).await;
    let mut config = GatewayConfig::single_pool(&[w.uri()], PolicyKind::DEFAULT).unwrap();
    config.drain_timeout = Duration::from_millis(300);
    config.threads = std::num::NonZeroUsize::new(1);
    let gateway = start_gateway(config).await;
    let mut client = client(gateway.local_addr()).await;
    let mut stream = client
        .model_stream_infer(futures::stream::iter([infer("sim-llm", "a long answer", 2000)]))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().unwrap().error_message.is_empty());

    tokio::time::timeout(Duration::from_secs(10), gateway.shutdown())
        .await
        .expect("the drain ends at its timeout, not with the stream")
        .unwrap();
    let mut tokens = 1;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the stream ends") {
            Some(Ok(_)) => tokens += 1,
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    assert!(tokens < 2000, "the stream ran to its end through the drain");
    assert!(end.is_some(), "a cut-off stream ends with an error, not as complete ({tokens} tokens)");
}

#[tokio::test]
async fn a_configured_model_header_routes_and_the_default_one_no_longer_does() {
    let (llama, mistral) = (Worker::fast("llama").await, Worker::fast("mistral").await);
    let config = format!(
        r#"
model_header = "x-route-model"

[[pool]]
name = "llama"
endpoints = [{{ address = "{}" }}]

[[pool]]
name = "mistral"
endpoints = [{{ address = "{}" }}]

[[route]]
model = "llama"
pool = "llama"

[[route]]
model = "mistral"
pool = "mistral"
"#,
        llama.uri(),
        mistral.uri()
    );
    let gateway = start_gateway(GatewayConfig::from_toml(&config).unwrap()).await;
    let mut client = client(gateway.local_addr()).await;
    let served = |pool: &str| -> u64 {
        gateway.pool(pool).unwrap().board().snapshot().iter().map(|e| e.load.completed + e.load.failed).sum()
    };

    // The configured header wins over the body's model_name: the llama worker gets a request
    // for mistral and answers NOT_FOUND.
    let mut request = tonic::Request::new(infer("mistral", "hello", 2));
    request.metadata_mut().insert("x-route-model", "llama".parse().unwrap());
    let err = client.model_infer(request).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    until("llama counts the call", || served("llama") == 1).await;

    // The default header is now an ordinary header: the body decides.
    let mut request = tonic::Request::new(infer("mistral", "hello", 2));
    request.metadata_mut().insert("x-model-name", "llama".parse().unwrap());
    client.model_infer(request).await.unwrap();
    until("mistral counts the call", || served("mistral") == 1).await;
    assert_eq!(served("llama"), 1);
    gateway.shutdown().await.unwrap();
}

#[derive(Parser)]
struct GatewayCli {
    #[command(flatten)]
    args: GatewayArgs,
}

#[test]
fn gateway_flags_override_the_config_file_and_the_file_fills_the_rest() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("promises-flags");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        r#"
listen = "127.0.0.1:7001"
admin = "127.0.0.1:7002"
drain_timeout = "5s"
threads = 3

[[pool]]
name = "default"
endpoints = [{ address = "http://127.0.0.1:9001" }]
"#,
    )
    .unwrap();
    let parse = |flags: &[&str]| {
        let cli = GatewayCli::try_parse_from(
            ["gateway", "--config", path.to_str().unwrap()].iter().chain(flags.iter()),
        )
        .unwrap();
        cli.args.gateway_config().unwrap()
    };
    let file = parse(&[]);
    assert_eq!(file.listen, Some("127.0.0.1:7001".parse().unwrap()));
    assert_eq!(file.admin, Some("127.0.0.1:7002".parse().unwrap()));
    assert_eq!(file.drain_timeout, Duration::from_secs(5));
    assert_eq!(file.threads, std::num::NonZeroUsize::new(3));

    let flags = parse(&[
        "--listen",
        "127.0.0.1:8101",
        "--admin",
        "127.0.0.1:8102",
        "--drain-timeout",
        "250ms",
        "--threads",
        "1",
    ]);
    assert_eq!(flags.listen, Some("127.0.0.1:8101".parse().unwrap()));
    assert_eq!(flags.admin, Some("127.0.0.1:8102".parse().unwrap()));
    assert_eq!(flags.drain_timeout, Duration::from_millis(250));
    assert_eq!(flags.threads, std::num::NonZeroUsize::new(1));
    assert_eq!(flags.pools, file.pools, "the pools still come from the file");

    // One flag: the rest from the file.
    let one = parse(&["--threads", "2"]);
    assert_eq!(
        (one.threads, one.listen, one.drain_timeout),
        (std::num::NonZeroUsize::new(2), file.listen, file.drain_timeout)
    );
}

#[tokio::test]
async fn an_ejected_endpoint_shows_as_ejected_on_the_admin_api() {
    let live = Worker::fast("sim-llm").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let config = format!(
        r#"
[[pool]]
name = "default"
policy = "round-robin"
endpoints = [{{ address = "{}", id = "live" }}, {{ address = "http://{closed}", id = "dead" }}]
"#,
        live.uri()
    );
    let gateway = start_gateway(GatewayConfig::from_toml(&config).unwrap()).await;
    let admin = gateway.admin_addr().unwrap();
    let mut client = client(gateway.local_addr()).await;
    let ejected = |view: &serde_json::Value, id: &str| -> bool {
        let endpoints = view["pools"][0]["endpoints"].as_array().unwrap();
        let entry =
            endpoints.iter().find(|e| e["endpoint"]["id"] == id).unwrap_or_else(|| panic!("{id} in {view}"));
        entry["ejected"].as_bool().unwrap_or_else(|| panic!("an ejected flag in {entry}"))
    };
    let view = admin_get(admin, "/endpoints").await;
    assert!(!ejected(&view, "live") && !ejected(&view, "dead"), "{view}");

    // Round robin sends every other call to the closed port; five failures in a row eject it.
    let mut failures = 0;
    for _ in 0..10 {
        if client.model_infer(infer("sim-llm", "hi", 1)).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 5);
    let view = admin_get(admin, "/endpoints").await;
    assert!(ejected(&view, "dead") && !ejected(&view, "live"), "{view}");
    // Ejected, it gets no more calls.
    for _ in 0..4 {
        client.model_infer(infer("sim-llm", "hi", 1)).await.unwrap();
    }
    gateway.shutdown().await.unwrap();
}

/// `n` requests due at once, each asking for 2,000 tokens (about 13 s at real speed).
fn burst(n: usize) -> Vec<TraceRecord> {
    (0..n)
        .map(|_| TraceRecord {
            at: Duration::ZERO,
            prompt_tokens: 100,
            output_tokens: 2000,
            prefix: Default::default(),
        })
        .collect()
}

#[tokio::test]
async fn loadgen_counts_what_it_dropped_and_what_timed_out() {
    let w = Worker::start(WorkerArgs::default()).await;
    for stream in [false, true] {
        let args = LoadgenArgs {
            target: w.uri(),
            max_in_flight: 3,
            timeout: Duration::from_millis(500),
            stream,
            ..LoadgenArgs::default()
        };
        // Ten due at once, three allowed in flight: three sent, seven dropped (none of the three
        // can end before its 500 ms deadline), the three end at their deadline.
        let report = loadgen::drive(channel(w.addr).await, burst(10), "burst".into(), &args).await;
        assert_eq!(report.requests, 10, "{report:?}");
        assert_eq!((report.ok, report.dropped), (0, 7), "{report:?}");
        assert_eq!(
            report.errors,
            [("DEADLINE_EXCEEDED".to_string(), 3)].into(),
            "stream {stream}: {report:?}"
        );
        assert!(report.failure().unwrap().contains("dropped 7"), "{:?}", report.failure());
    }
}
