#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The gateway over real loopback gRPC: in-process workers behind an in-process gateway (and the
//! binary, for the exit paths), reached with the generated clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::balance::PolicyKind;
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::proto::inference::infer_parameter::ParameterChoice;
use switchyard::proto::inference::*;
use switchyard::worker::{self, WorkerArgs};
use switchyard_core::{ReportedLoad, orca};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

mod common;

use common::BIN;
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// An in-process worker; it stops when dropped.
struct Worker {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Worker {
    /// A worker for `model` with a fast simulated GPU, so generation takes milliseconds.
    async fn start(model: &str) -> Self {
        Self::start_with(WorkerArgs { speed: 20.0, model: model.into(), ..WorkerArgs::default() }).await
    }

    async fn start_with(args: WorkerArgs) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), args)
    }

    fn start_on(listener: TcpListener, args: WorkerArgs) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(worker::serve(args, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, _stop: tx }
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

async fn one_pool(workers: &[&Worker]) -> Gateway {
    let backends: Vec<String> = workers.iter().map(|w| w.uri()).collect();
    start_gateway(GatewayConfig::single_pool(&backends, PolicyKind::DEFAULT).unwrap()).await
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn client(addr: SocketAddr) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(channel(addr).await)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

fn infer(model: &str, text: &str, max_tokens: u32) -> ModelInferRequest {
    let mut req = worker::request::text_request(model, text, max_tokens);
    req.id = format!("{model}-{max_tokens}");
    req
}

fn load_report(metadata: &MetadataMap) -> ReportedLoad {
    let value = metadata.get_bin(orca::TRAILER_NAME).expect("endpoint-load-metrics-bin present");
    orca::decode(&value.to_bytes().expect("valid base64")).expect("an OrcaLoadReport")
}

fn output_words(resp: &ModelInferResponse) -> usize {
    let text = &resp.outputs[0].contents.as_ref().unwrap().bytes_contents[0];
    std::str::from_utf8(text).unwrap().split_whitespace().count()
}

fn is_final(resp: &ModelInferResponse) -> bool {
    matches!(
        resp.parameters.get("triton_final_response").and_then(|p| p.parameter_choice.clone()),
        Some(ParameterChoice::BoolParam(true))
    )
}

/// Requests the pool's endpoints have ended, whatever their outcome.
fn completed(gateway: &Gateway, pool: &str) -> u64 {
    let snapshot = gateway.pool(pool).unwrap().board().snapshot();
    snapshot.iter().map(|e| e.load.completed + e.load.failed + e.load.overloaded + e.load.cancelled).sum()
}

/// Waits (briefly) until the pool has counted `n` ended requests.
async fn assert_completed(gateway: &Gateway, pool: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while completed(gateway, pool) != n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(completed(gateway, pool), n, "completed requests in pool {pool}");
}

/// One HTTP/1.1 request to the admin API; the status and the JSON answer.
async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[tokio::test]
async fn unary_and_bidi_streams_pass_untouched_with_their_load_reports_and_errors() {
    let w = Worker::start("sim-llm").await;
    let gateway = one_pool(&[&w]).await;
    let mut client = client(gateway.local_addr()).await;

    let response = client.model_infer(infer("sim-llm", "Tell me a story.", 12)).await.unwrap();
    assert_eq!(load_report(response.metadata()).capacity, 256, "the ORCA trailer reaches the client");
    let resp = response.into_inner();
    assert_eq!((resp.model_name.as_str(), resp.id.as_str()), ("sim-llm", "sim-llm-12"));
    assert_eq!(output_words(&resp), 12);

    // Several requests on one bidirectional stream, a token per message.
    let requests = futures::stream::iter([
        infer("sim-llm", "first", 200),
        infer("sim-llm", "second", 150),
        infer("sim-llm", "third", 100),
    ]);
    let mut stream = client.model_stream_infer(requests).await.unwrap().into_inner();
    let (mut tokens, mut finals) = (0, 0);
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        assert!(message.error_message.is_empty(), "{}", message.error_message);
        let resp = message.infer_response.unwrap();
        assert_eq!(output_words(&resp), 1);
        tokens += 1;
        finals += usize::from(is_final(&resp));
    }
    assert_eq!((tokens, finals), (450, 3));
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(load_report(&trailers).capacity, 256);

    // The worker's error statuses pass with their code, message and load report.
    let err = client.model_infer(infer("gpt-17", "hi", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("gpt-17"), "{}", err.message());
    load_report(err.metadata());

    assert_completed(&gateway, "default", 3).await;
    let entry = &gateway.pools()[0].board().snapshot()[0];
    assert_eq!(entry.endpoint.id.as_str(), w.addr.to_string(), "the id is the backend's authority");
    assert_eq!(entry.load.in_flight, 0);
    assert!(entry.load.report.is_some(), "the balancer read the trailer on the way");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn any_service_large_messages_and_long_streams_pass() {
    let w = Worker::start("sim-llm").await;
    let gateway = one_pool(&[&w]).await;
    let channel = channel(gateway.local_addr()).await;

    // A service the gateway knows nothing of.
    let mut health = HealthClient::new(channel.clone());
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    // A method the worker does not implement: its UNIMPLEMENTED, not the gateway's.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<_, ServerLiveResponse, _>(
            tonic::Request::new(ServerLiveRequest {}),
            http::uri::PathAndQuery::from_static("/inference.GRPCInferenceService/NoSuchMethod"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(!err.message().contains("no route"), "{}", err.message());

    // A 6 MiB prompt (its token count given, so it fits the KV cache).
    let mut client = client(gateway.local_addr()).await;
    let mut big = infer("sim-llm", &"lorem ipsum ".repeat(512 * 1024), 4);
    big.parameters.insert("prompt_tokens".into(), worker::request::int_parameter(500));
    let resp = client.model_infer(big).await.unwrap().into_inner();
    assert_eq!(output_words(&resp), 4);

    // 2,000 tokens on one stream.
    let mut stream = client
        .model_stream_infer(futures::stream::iter([infer("sim-llm", "go on", 2000)]))
        .await
        .unwrap()
        .into_inner();
    let mut tokens = 0;
    while let Some(message) = stream.next().await {
        assert!(message.unwrap().error_message.is_empty());
        tokens += 1;
    }
    assert_eq!(tokens, 2000);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn pools_route_by_service_path_and_by_model() {
    let (llama_a, llama_b) = (Worker::start("llama").await, Worker::start("llama").await);
    let mistral = Worker::start("mistral").await;
    let config = format!(
        r#"
[[pool]]
name = "llama"
policy = "round-robin"
endpoints = [{{ address = "{}" }}, {{ address = "{}", id = "llama-b" }}]

[[pool]]
name = "mistral"
endpoints = [{{ address = "{}" }}]

[[route]]
path_prefix = "/inference.GRPCInferenceService/"
model = "mistral"
pool = "mistral"

[[route]]
model = "llama"
pool = "llama"

[[route]]
path_prefix = "/grpc.health.v1.Health/"
pool = "mistral"
"#,
        llama_a.uri(),
        llama_b.uri(),
        mistral.uri()
    );
    let gateway = start_gateway(GatewayConfig::from_toml(&config).unwrap()).await;
    let mut client = client(gateway.local_addr()).await;

    // By the model_name in the body (peeked), unary and streaming.
    for _ in 0..4 {
        client.model_infer(infer("llama", "hello", 3)).await.unwrap();
    }
    client.model_infer(infer("mistral", "hello", 3)).await.unwrap();
    let mut stream = client
        .model_stream_infer(futures::stream::iter([infer("mistral", "hi", 5)]))
        .await
        .unwrap()
        .into_inner();
    while let Some(message) = stream.next().await {
        assert!(message.unwrap().error_message.is_empty());
    }
    assert_completed(&gateway, "llama", 4).await;
    assert_completed(&gateway, "mistral", 2).await;
    let llama = gateway.pool("llama").unwrap().board().snapshot();
    assert!(llama.iter().all(|e| e.load.completed == 2), "round robin over both: {llama:?}");

    // By the header, which wins over the body and needs no KServe method.
    let mut request = tonic::Request::new(infer("mistral", "hello", 3));
    request.metadata_mut().insert("x-model-name", "llama".parse().unwrap());
    let err = client.model_infer(request).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "a llama worker got the mistral request: {err:?}");
    let mut request = tonic::Request::new(ServerLiveRequest {});
    request.metadata_mut().insert("x-model-name", "llama".parse().unwrap());
    assert!(client.server_live(request).await.unwrap().into_inner().live);
    assert_completed(&gateway, "llama", 6).await;

    // By the service path.
    let mut health = HealthClient::new(channel(gateway.local_addr()).await);
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_completed(&gateway, "mistral", 3).await;

    // No route: the gateway's UNIMPLEMENTED, naming the path and the model.
    let err = client.model_infer(infer("gpt-17", "hello", 3)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("gpt-17") && err.message().contains("ModelInfer"), "{}", err.message());
    let err = client.server_live(ServerLiveRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_completed(&gateway, "llama", 6).await;
    assert_completed(&gateway, "mistral", 3).await;
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn policy_switches_under_load_fail_no_request() {
    let (a, b) = (Worker::start("sim-llm").await, Worker::start("sim-llm").await);
    let gateway = one_pool(&[&a, &b]).await;
    let admin_addr = gateway.admin_addr().unwrap();

    let (status, view) = admin(admin_addr, "GET", "/endpoints", "").await;
    assert_eq!(status, 200);
    let pools = view["pools"].as_array().unwrap();
    assert_eq!(
        (pools[0]["name"].as_str(), pools[0]["policy"].as_str()),
        (Some("default"), Some("load-report"))
    );
    let ids: Vec<&str> = pools[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"]["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![a.addr.to_string(), b.addr.to_string()];
    expected.sort();
    assert_eq!(ids, expected);

    let client = client(gateway.local_addr()).await;
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { c.model_infer(infer("sim-llm", &format!("request {i}"), 20)).await })
        })
        .collect();
    let mut last = "";
    for round in 0..3 {
        for kind in PolicyKind::ALL {
            let body = format!(r#"{{"policy":"{}","pool":"default"}}"#, kind.name());
            let (status, answer) = admin(admin_addr, "PUT", "/policy", &body).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["policy"], kind.name());
            if round + kind as usize > 0 {
                assert_eq!(answer["previous"], last);
            }
            last = kind.name();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for call in calls {
        call.await.unwrap().expect("no request fails while the policy changes");
    }
    assert_completed(&gateway, "default", 300).await;
    assert_eq!(gateway.pools()[0].policy().name(), last);

    let (status, answer) = admin(admin_addr, "PUT", "/policy", r#"{"policy":"round-robin"}"#).await;
    assert_eq!((status, answer["pool"].as_str()), (200, Some("default")), "one pool: no need to name it");
    let (status, answer) = admin(admin_addr, "PUT", "/policy", r#"{"policy":"fastest"}"#).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("least-connections"), "{answer}");
    let (status, answer) = admin(admin_addr, "PUT", "/policy", r#"{"policy":"random","pool":"gpu"}"#).await;
    assert_eq!(status, 404, "{answer}");
    let (status, _) = admin(admin_addr, "GET", "/nothing", "").await;
    assert_eq!(status, 404);

    let (_, view) = admin(admin_addr, "GET", "/endpoints", "").await;
    let endpoints = view["pools"][0]["endpoints"].as_array().unwrap();
    let done: u64 = endpoints.iter().map(|e| e["load"]["completed"].as_u64().unwrap()).sum();
    assert_eq!(done, 300);
    assert!(endpoints.iter().all(|e| e["load"]["report"]["capacity"] == 256), "{endpoints:?}");
    gateway.shutdown().await.unwrap();
}

const GOOD_CONFIG: &str = r#"# a comment
default_pool = "a"

[[pool]]
name = "a"
policy = "round-robin"
endpoints = [{ address = "http://127.0.0.1:9001" }]

[[pool]]
name = "b"
endpoints = [
  { address = "http://127.0.0.1:9002" },
  { address = "http://127.0.0.1:9003" },
]

[[route]]
model = "m"
pool = "b"
"#;

/// Bad configs: (the edit, the line, the field, a word of the message).
fn bad_configs() -> Vec<(String, usize, Option<&'static str>, &'static str)> {
    vec![
        (GOOD_CONFIG.replace("round-robin", "fastest"), 6, Some("pool[0].policy"), "least-connections"),
        (
            GOOD_CONFIG.replace("pool = \"b\"", "pool = \"c\""),
            18,
            Some("route[0].pool"),
            "no pool named \"c\"",
        ),
        (
            GOOD_CONFIG.replace("http://127.0.0.1:9003", "http://127.0.0.1:9003/v2"),
            13,
            Some("pool[1].endpoints[1].address"),
            "path",
        ),
        (
            GOOD_CONFIG.replace("http://127.0.0.1:9002", "http://127.0.0.1:9003"),
            13,
            Some("pool[1].endpoints[1].id"),
            "duplicate",
        ),
        (GOOD_CONFIG.replace("name = \"b\"", "name = \"b"), 10, None, ""),
        (GOOD_CONFIG.replace("model = \"m\"", "modle = \"m\""), 17, None, "modle"),
        (
            GOOD_CONFIG.replace(
                "\n\n[[pool]]\nname = \"b\"",
                "\n[pool.keys]\nblock_tokens = 0\n\n[[pool]]\nname = \"b\"",
            ),
            9,
            Some("pool[0].keys.block_tokens"),
            "not a block size",
        ),
    ]
}

#[test]
fn bad_configs_name_their_field_and_line() {
    GatewayConfig::from_toml(GOOD_CONFIG).unwrap();
    for (text, line, field, word) in bad_configs() {
        let err = GatewayConfig::from_toml(&text).unwrap_err();
        assert_eq!((err.line, err.field.as_deref()), (Some(line), field), "{err}");
        let shown = err.to_string();
        assert!(shown.contains(&format!("line {line}")) && shown.contains(word), "{shown}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway.toml");
    let config = GatewayConfig::load(&path).unwrap();
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pools, ["llama-3.1-8b", "mistral-7b"]);
    assert_eq!(config.pools[0].endpoints[1].id.as_str(), "a100-0");
    assert_eq!(config.default_pool(), Some("llama-3.1-8b"));
    let retry = config.pools[0].retry.as_ref().expect("the example's first pool retries");
    assert!(retry.is_idempotent("/inference.GRPCInferenceService/ModelInfer"));
    assert_eq!(config.pools[1].retry, None);
}

#[tokio::test]
async fn the_binary_refuses_a_bad_config_with_its_field_and_line() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-configs");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (text, line, field, _)) in bad_configs().into_iter().enumerate() {
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let output = tokio::process::Command::new(BIN)
            .args(["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("bad-{i}.toml line {line}")), "{stderr}");
        if let Some(field) = field {
            assert!(stderr.contains(field), "{stderr}");
        }
    }
    let output = tokio::process::Command::new(BIN)
        .args(["gateway", "--backend", "ftp://127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--backend"));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let w = Worker::start_with(WorkerArgs { speed: 1.0, ..WorkerArgs::default() }).await;
    let (mut child, addr) = common::spawn_until(
        &["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--backend", &w.uri()],
        "gateway serving on ",
    )
    .await;
    let addr: SocketAddr = addr.parse().unwrap();

    let mut client = client(addr).await;
    // About a second of generation at real speed.
    let in_flight =
        tokio::spawn(async move { client.model_infer(infer("sim-llm", "a long one", 150)).await });
    // The call is in flight once the worker behind the gateway runs it.
    common::until_engine_runs(&mut GrpcInferenceServiceClient::new(channel(w.addr).await), 1).await;
    common::sigterm(&child);

    let response = in_flight.await.unwrap().expect("the in-flight request completes during the drain");
    assert_eq!(output_words(response.get_ref()), 150);
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("gateway exits").unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_backend_that_is_down_is_unavailable_at_once() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let backends = vec![format!("http://{closed}")];
    let gateway = start_gateway(GatewayConfig::single_pool(&backends, PolicyKind::DEFAULT).unwrap()).await;
    let mut client = client(gateway.local_addr()).await;
    for _ in 0..3 {
        let started = Instant::now();
        let err = client.model_infer(infer("sim-llm", "anyone?", 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("default"), "{}", err.message());
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_share_one_balancer() {
    let (w1, w2) = (Worker::start("sim-llm").await, Worker::start("sim-llm").await);
    let mut config = GatewayConfig::single_pool(&[w1.uri(), w2.uri()], PolicyKind::RoundRobin).unwrap();
    config.threads = std::num::NonZeroUsize::new(3);
    let gateway = start_gateway(config).await;
    assert_eq!(gateway.threads(), 3);
    // Six connections, handed to the three threads in turn.
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(client(gateway.local_addr()).await);
    }
    let board = gateway.pool("default").unwrap().board().clone();
    let served_by = |before: &[u64]| -> Option<usize> {
        let now: Vec<u64> = board.snapshot().iter().map(|e| e.load.completed).collect();
        now.iter().zip(before).position(|(n, b)| n > b)
    };
    let mut picks = Vec::new();
    for i in 0..24 {
        let before: Vec<u64> = board.snapshot().iter().map(|e| e.load.completed).collect();
        clients[i % 6].model_infer(infer("sim-llm", "hello", 1)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let pick = loop {
            if let Some(pick) = served_by(&before) {
                break pick;
            }
            assert!(Instant::now() < deadline, "request {i} was not counted");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        picks.push(pick);
    }
    // One round robin for the whole gateway: strict alternation, whichever thread served the
    // request (a balancer per thread would send three requests in a row to the same endpoint).
    for pair in picks.windows(2) {
        assert_ne!(pair[0], pair[1], "{picks:?}");
    }
    assert_completed(&gateway, "default", 24).await;
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_restarts_is_used_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let args = WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() };
    let first = tokio::spawn(worker::serve(args.clone(), listener, async move {
        let _ = stopped.await;
    }));
    let mut config = GatewayConfig::single_pool(&[format!("http://{addr}")], PolicyKind::DEFAULT).unwrap();
    config.threads = std::num::NonZeroUsize::new(1);
    let gateway = start_gateway(config).await;
    let mut client = client(gateway.local_addr()).await;
    client.model_infer(infer("sim-llm", "before", 1)).await.unwrap();

    // The replica goes away: its connection closes and calls fail fast with UNAVAILABLE.
    drop(stop);
    first.await.unwrap().unwrap();
    let err = client.model_infer(infer("sim-llm", "while down", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // It comes back on the same address: the gateway connects again, no restart needed.
    let _back = Worker::start_on(TcpListener::bind(addr).await.unwrap(), args);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.model_infer(infer("sim-llm", "after", 1)).await {
            Ok(_) => break,
            Err(err) => {
                assert_eq!(err.code(), Code::Unavailable, "{err:?}");
                // Outlier ejection may hold the only endpoint out for a moment (panic mode
                // still tries it).
                assert!(Instant::now() < deadline, "the replica was not used again: {err:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_mid_stream_is_counted_as_cancelled() {
    let w = Worker::start("sim-llm").await;
    let gateway = one_pool(&[&w]).await;
    let mut client = client(gateway.local_addr()).await;
    let mut stream = client
        .model_stream_infer(futures::stream::iter([infer("sim-llm", "a long answer", 2000)]))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().unwrap().error_message.is_empty());
    let board = gateway.pool("default").unwrap().board().clone();
    assert_eq!(board.snapshot()[0].load.in_flight, 1);
    // The client goes away after the first token (its stream is reset).
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let load = board.snapshot()[0].load.clone();
        if load.in_flight == 0 {
            assert_eq!((load.completed, load.failed, load.cancelled), (0, 0, 1), "{load:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still in flight: {load:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_plain_binary_says_it_does_not_count_its_allocations() {
    let w = Worker::start("sim-llm").await;
    let gateway = one_pool(&[&w]).await;
    // Only `switchyard-count-allocations` registers a reader; the library alone has none.
    let (code, body) = admin(gateway.admin_addr().unwrap(), "GET", "/debug/allocations", "").await;
    assert_eq!(code, 404, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("--bin switchyard-count-allocations"), "{body}");
    gateway.shutdown().await.unwrap();
}

/// Waits until the admin API shows the gateway in `state`.
async fn admin_state_becomes(admin_addr: SocketAddr, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, view) = admin(admin_addr, "GET", "/endpoints", "").await;
        assert_eq!(code, 200, "{view}");
        if view["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "admin still shows {view}");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval
    }
}

#[tokio::test]
async fn a_call_during_the_drain_is_refused_retryably_and_admin_answers() {
    let w = Worker::start_with(WorkerArgs { speed: 1.0, ..WorkerArgs::default() }).await;
    let mut config = GatewayConfig::single_pool(&[w.uri()], PolicyKind::DEFAULT).unwrap();
    // Two serving threads: the acceptor hands the second connection to the thread without one,
    // which has no call in flight during the drain.
    config.threads = std::num::NonZeroUsize::new(2);
    let gateway = start_gateway(config).await;
    let (addr, admin_addr) = (gateway.local_addr(), gateway.admin_addr().unwrap());
    admin_state_becomes(admin_addr, "serving").await;

    let mut busy = client(addr).await;
    let mut same_connection = busy.clone();
    let mut other_connection = client(addr).await;
    other_connection.server_live(ServerLiveRequest {}).await.unwrap();
    // About a second of generation at real speed: the drain lasts as long.
    let in_flight = tokio::spawn(async move { busy.model_infer(infer("sim-llm", "a long one", 150)).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.pools()[0].board().snapshot()[0].load.in_flight == 0 {
        assert!(Instant::now() < deadline, "the long call never reached the worker");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval
    }

    let drain = tokio::spawn(gateway.shutdown());
    admin_state_becomes(admin_addr, "draining").await;
    for (name, client) in
        [("same connection", &mut same_connection), ("other connection", &mut other_connection)]
    {
        let err = client.model_infer(infer("sim-llm", "racing the drain", 2)).await.unwrap_err();
        // UNAVAILABLE: never reached a replica, safe to retry elsewhere (not CANCELLED).
        assert_eq!(err.code(), Code::Unavailable, "{name}: {err:?}");
        assert!(err.message().contains("shutting down"), "{name}: {err:?}");
    }
    let response = in_flight.await.unwrap().expect("the call in flight completes during the drain");
    assert_eq!(output_words(response.get_ref()), 150);
    tokio::time::timeout(Duration::from_secs(10), drain).await.expect("the drain ends").unwrap().unwrap();
}
