#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The gateway's `[limits]`, each met by a client that passes it: an oversize message is refused
//! `RESOURCE_EXHAUSTED` before its payload comes, oversize headers get `431`, a stream past the
//! connection's count is reset `REFUSED_STREAM`, a malformed request and a connection error get
//! `PROTOCOL_ERROR`, a connection past the listener's count is
//! closed at once, a silent one after the header read timeout, an idle one gets GOAWAY; and a
//! rapid-reset client against the gateway binary is cut off, costs the gateway a bounded share of
//! a core, and does not slow a well-behaved client's calls. Each refusal is counted on `/metrics`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::raw_h2;

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A one-thread gateway in this process over an in-process worker, with `limits` (the lines of
/// a `[limits]` table).
async fn gateway(limits: &str) -> (Gateway, common::worker::Worker) {
    let worker = common::worker::in_process(WorkerArgs {
        speed: 50.0,
        model: "sim-llm".into(),
        ..WorkerArgs::default()
    })
    .await;
    let config = format!(
        "threads = 1\ndrain_timeout = \"1s\"\n[limits]\n{limits}\n[[pool]]\nname = \"llama\"\nendpoints = [{{ address = \"http://{}\" }}]\n",
        worker.addr
    );
    let config = GatewayConfig::from_toml(&config).unwrap();
    let gateway = Gateway::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap(), None).unwrap();
    (gateway, worker)
}

/// The count of refusals for `reason` on the gateway's metrics.
fn refused(gateway: &Gateway, reason: &str) -> u64 {
    let text = gateway.metrics().render();
    let series = format!("switchyard_gateway_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// The count of refusals for `reason` once it reaches `expected` (within a second: the count
/// of a frame h2 wrote moves just after the write, when the client may have read it already).
async fn refused_reach(gateway: &Gateway, reason: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let count = refused(gateway, reason);
        if count >= expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A `ModelInfer` call's message on the wire: the 5-byte prefix and the message.
fn wire(text: &str) -> Bytes {
    let message = prost::Message::encode_to_vec(&worker::request::text_request("sim-llm", text, 1));
    let mut wire = vec![0];
    wire.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    wire.extend_from_slice(&message);
    wire.into()
}

async fn h2_client(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let socket = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(socket).await.unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, connection)
}

fn request() -> http::Request<()> {
    http::Request::post(format!("http://gateway{MODEL_INFER}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The gRPC status of a trailers-only response, or of its trailers.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> (String, String) {
    let (parts, mut body) = response.into_parts();
    let headers = if parts.headers.contains_key("grpc-status") {
        parts.headers
    } else {
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
        }
        body.trailers().await.unwrap().unwrap_or_default()
    };
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_refused_resource_exhausted_before_its_payload() {
    let (gateway, _worker) = gateway("max_message_bytes = 1024").await;
    let addr = gateway.local_addr();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    client.model_infer(worker::request::text_request("sim-llm", "hello", 1)).await.unwrap();
    let error =
        client.model_infer(worker::request::text_request("sim-llm", &"x".repeat(2000), 1)).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
    assert!(error.message().contains("max_message_bytes"), "{error:?}");

    // Only the prefix of a 1 MiB message, its payload never sent: refused all the same, at once.
    let (send, _connection) = h2_client(addr).await;
    let mut send = send.ready().await.unwrap();
    let (response, mut body) = send.send_request(request(), false).unwrap();
    let mut prefix = vec![0];
    prefix.extend_from_slice(&(1u32 << 20).to_be_bytes());
    body.send_data(prefix.into(), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(2), response).await.expect("an answer").unwrap();
    let (code, message) = grpc_status(response).await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");

    // The connection and the gateway serve on.
    client.model_infer(worker::request::text_request("sim-llm", "hello", 1)).await.unwrap();
    assert_eq!(refused(&gateway, "message_too_large"), 2);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_get_431() {
    let (gateway, _worker) = gateway("max_header_list_bytes = 4096").await;
    let (send, _connection) = h2_client(gateway.local_addr()).await;
    let call = |pad: usize| {
        let send = send.clone();
        async move {
            let mut send = send.ready().await.unwrap();
            let mut request = request();
            request.headers_mut().insert("x-pad", "p".repeat(pad).parse().unwrap());
            let (response, mut body) = send.send_request(request, false).unwrap();
            body.send_data(wire("hello"), true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), response).await.expect("an answer")
        }
    };
    // 6 KiB of headers: within h2's default (16 KiB), over this gateway's limit.
    let response = call(6000).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let response = call(1000).await.unwrap();
    assert_eq!(grpc_status(response).await.0, "0");
    let response = call(6000).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // h2's answers, counted; the call served is not.
    assert_eq!(refused_reach(&gateway, "header_list_too_large", 2).await, 2);
    // Nor is the reset h2 sends after each 431 (the client had not ended its stream).
    assert_eq!(refused(&gateway, "protocol_error"), 0);
    assert_eq!(refused(&gateway, "stream_limit"), 0);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_connections_limit_is_refused() {
    let (gateway, _worker) = gateway("max_streams_per_connection = 4").await;
    let (mut read, mut write) = raw_h2::connect(gateway.local_addr()).await.unwrap();
    // Five streams whose first message never comes: they stay open.
    let mut frames = Vec::new();
    for id in [1, 3, 5, 7, 9] {
        raw_h2::open_stream(&mut frames, id, &raw_h2::request_headers(MODEL_INFER));
    }
    write.write_all(&frames).await.unwrap();
    let reset = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let frame = raw_h2::read_frame(&mut read).await.expect("the connection stays open");
            if frame.kind == raw_h2::RST_STREAM {
                return (frame.stream, frame.error_code());
            }
        }
    })
    .await
    .expect("a stream reset");
    assert_eq!(reset, (9, Some(raw_h2::REFUSED_STREAM)));
    assert_eq!(refused_reach(&gateway, "stream_limit", 1).await, 1);
    assert_eq!(refused(&gateway, "header_list_too_large"), 0);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_and_a_broken_connection_are_reset_and_counted() {
    let (gateway, _worker) = gateway("").await;
    let (mut read, mut write) = raw_h2::connect(gateway.local_addr()).await.unwrap();
    // A request without its `:path` (malformed: the stream is reset), then DATA on stream 0 (a
    // connection error: GOAWAY).
    let mut block = raw_h2::request_headers(MODEL_INFER);
    let path = block.windows(5).position(|w| w == b":path").unwrap() - 2;
    block.drain(path..path + 2 + ":path".len() + 1 + MODEL_INFER.len());
    let mut frames = Vec::new();
    raw_h2::open_stream(&mut frames, 1, &block);
    write.write_all(&frames).await.unwrap();
    let mut ends = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(frame) = raw_h2::read_frame(&mut read).await {
            if matches!(frame.kind, raw_h2::RST_STREAM | raw_h2::GOAWAY) {
                ends.push((frame.kind, frame.stream, frame.error_code()));
                if frame.kind == raw_h2::GOAWAY {
                    break;
                }
                let mut data = Vec::new();
                raw_h2::frame(&mut data, raw_h2::DATA, 0, 0, b"data");
                write.write_all(&data).await.unwrap();
            }
        }
    })
    .await
    .expect("the stream reset, then the connection");
    assert_eq!(
        ends,
        [
            (raw_h2::RST_STREAM, 1, Some(raw_h2::PROTOCOL_ERROR)),
            (raw_h2::GOAWAY, 0, Some(raw_h2::PROTOCOL_ERROR))
        ]
    );
    assert_eq!(refused_reach(&gateway, "protocol_error", 2).await, 2);
    assert_eq!(refused(&gateway, "header_list_too_large"), 0);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_listeners_limit_is_closed_at_once_until_one_ends() {
    let (gateway, _worker) = gateway("max_connections = 2").await;
    let addr = gateway.local_addr();
    let first = raw_h2::connect(addr).await.expect("the first connection is served");
    let _second = raw_h2::connect(addr).await.expect("the second connection is served");
    let started = Instant::now();
    assert!(raw_h2::connect(addr).await.is_none(), "a third connection is closed");
    assert!(started.elapsed() < Duration::from_secs(1), "closed at once: {:?}", started.elapsed());
    assert_eq!(refused(&gateway, "connection_limit"), 1);
    // One ends: its place is free again.
    drop(first);
    let started = Instant::now();
    loop {
        if raw_h2::connect(addr).await.is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "a place is not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_its_first_headers_in_time_is_closed() {
    let (gateway, _worker) = gateway("header_read_timeout = \"300ms\"").await;
    let addr = gateway.local_addr();
    // Silent: not even the preface.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the silent connection is closed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "closed after {waited:?}");

    // The preface and settings, then nothing: GOAWAY, then the end.
    let started = Instant::now();
    let (mut read, _write) = raw_h2::connect(addr).await.unwrap();
    let mut goaway = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(3), raw_h2::read_frame(&mut read))
        .await
        .expect("the connection ends")
    {
        if frame.kind == raw_h2::GOAWAY {
            goaway = frame.error_code();
        }
    }
    let waited = started.elapsed();
    assert_eq!(goaway, Some(0), "GOAWAY NO_ERROR");
    assert!(waited >= Duration::from_millis(250), "closed after {waited:?}");
    assert_eq!(refused(&gateway, "header_read_timeout"), 2);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_goaway_and_a_busy_one_does_not() {
    let (gateway, _worker) = gateway("idle_timeout = \"300ms\"").await;
    let (send, connection) = h2_client(gateway.local_addr()).await;
    // A stream open three times the idle timeout: the connection stays.
    let mut ready = send.clone().ready().await.unwrap();
    let (response, mut body) = ready.send_request(request(), false).unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!connection.is_finished(), "a connection with a stream open was closed");
    body.send_data(wire("hello"), true).unwrap();
    let (code, message) = grpc_status(response.await.unwrap()).await;
    assert_eq!(code, "0", "{message}");
    // Then idle: GOAWAY after one to two idle timeouts.
    let idle = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), connection).await.expect("closed when idle").unwrap();
    let waited = idle.elapsed();
    assert!(waited >= Duration::from_millis(250), "closed after {waited:?}");
    assert!(waited < Duration::from_millis(900), "closed after {waited:?}");
    assert_eq!(refused(&gateway, "idle_timeout"), 1);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_or_settings_flood_closes_the_connection() {
    let (gateway, _worker) = gateway("").await;
    for kind in [raw_h2::PING, raw_h2::SETTINGS] {
        let (mut read, mut write) = raw_h2::connect(gateway.local_addr()).await.unwrap();
        // The answers are read as they come, so that the gateway is never held back by its writes.
        let reader = tokio::spawn(async move { while raw_h2::read_frame(&mut read).await.is_some() {} });
        let mut batch = Vec::new();
        for _ in 0..100 {
            let payload: &[u8] = if kind == raw_h2::PING { &[0; 8] } else { &[] };
            raw_h2::frame(&mut batch, kind, 0, 0, payload);
        }
        let started = Instant::now();
        let mut sent = 0;
        while !reader.is_finished() && started.elapsed() < Duration::from_secs(5) {
            if write.write_all(&batch).await.is_err() {
                break;
            }
            sent += 100;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the gateway closes the connection")
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "kind {kind}: {sent} frames over {:?}",
            started.elapsed()
        );
        // (Its first SETTINGS counts too.)
        assert!(sent >= 1000, "kind {kind}: closed after {sent} frames");
    }
    assert_eq!(refused(&gateway, "control_flood"), 2);
    gateway.shutdown().await.unwrap();
}

/// The CPU time the process `pid` has used (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields 14 and 15 (utime, stime), counted after the command name's closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / per_second)
}

/// `GET /metrics` over HTTP/1.1.
async fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// How one rapid-reset connection ended.
#[derive(Debug, Default)]
struct Attack {
    connections: u32,
    /// Connections the gateway ended with GOAWAY `ENHANCE_YOUR_CALM`.
    calmed: u32,
    /// Connections the gateway ended otherwise (closed, or another GOAWAY).
    ended: u32,
    streams: u64,
}

/// Opens and resets streams over one connection after another for `length`, 50 streams a write;
/// each connection until the gateway ends it. `after_accept`: the 50 streams' resets follow in a
/// second write, once the gateway has had time to accept them (which h2's own bound on streams
/// reset before they are accepted does not see), rather than each right after its stream.
async fn rapid_reset(addr: SocketAddr, length: Duration, after_accept: bool) -> Attack {
    let mut attack = Attack::default();
    let block = raw_h2::request_headers(MODEL_INFER);
    let started = Instant::now();
    while started.elapsed() < length {
        let Some((mut read, mut write)) = raw_h2::connect(addr).await else { continue };
        attack.connections += 1;
        let reader = tokio::spawn(async move {
            let mut goaway = None;
            while let Some(frame) = raw_h2::read_frame(&mut read).await {
                if frame.kind == raw_h2::GOAWAY {
                    goaway = frame.error_code();
                }
            }
            goaway
        });
        let mut id = 1u32;
        while !reader.is_finished() && started.elapsed() < length {
            let (mut frames, mut resets) = (Vec::new(), Vec::new());
            for _ in 0..50 {
                raw_h2::open_stream(&mut frames, id, &block);
                let resets = if after_accept { &mut resets } else { &mut frames };
                raw_h2::reset_stream(resets, id, raw_h2::CANCEL);
                id += 2;
            }
            if write.write_all(&frames).await.is_err() {
                break;
            }
            if after_accept {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if write.write_all(&resets).await.is_err() {
                    break;
                }
            }
            attack.streams += 50;
            tokio::task::yield_now().await;
        }
        if !reader.is_finished() && started.elapsed() >= length {
            // The time is up, not the connection.
            reader.abort();
            continue;
        }
        // The connection failed a write, or was read to its end: what the gateway said.
        let said = tokio::time::timeout(Duration::from_secs(2), reader).await;
        match said.expect("the gateway closes the connection").unwrap() {
            Some(raw_h2::ENHANCE_YOUR_CALM) => attack.calmed += 1,
            _ => attack.ended += 1,
        }
    }
    attack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_client_is_cut_off_at_a_bounded_cost_and_others_stay_on_time() {
    rapid_reset_against_the_binary(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_accepted_streams_is_cut_off_at_a_bounded_cost_and_others_stay_on_time() {
    rapid_reset_against_the_binary(true).await;
}

/// The gateway binary, a well-behaved client and a rapid-reset one (see [`rapid_reset`]) for 2 s.
async fn rapid_reset_against_the_binary(after_accept: bool) {
    let worker = common::worker::in_process(WorkerArgs {
        speed: 50.0,
        model: "sim-llm".into(),
        ..WorkerArgs::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "threads = 1\n[[pool]]\nname = \"llama\"\nendpoints = [{{ address = \"http://{}\" }}]\n",
            worker.addr
        ),
    )
    .unwrap();
    let (gateway, addrs) = common::spawn_until_all(
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
    let addr: SocketAddr = addrs[0].parse().unwrap();
    let pid = gateway.id().unwrap();

    // A well-behaved client, on the gateway's one serving thread with the attacker.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut good = GrpcInferenceServiceClient::new(channel);
    let call = || worker::request::text_request("sim-llm", "hello", 1);
    good.model_infer(call()).await.unwrap();

    let length = Duration::from_secs(2);
    let cpu_before = cpu_time(pid);
    let attacker_cpu_before = cpu_time(std::process::id());
    let attacker = tokio::spawn(rapid_reset(addr, length, after_accept));
    let started = Instant::now();
    let (mut calls, mut slowest, mut failed) = (0, Duration::ZERO, Vec::new());
    while started.elapsed() < length {
        let sent = Instant::now();
        if let Err(status) = good.model_infer(call()).await {
            failed.push(status.code());
        }
        slowest = slowest.max(sent.elapsed());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attack = attacker.await.unwrap();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    // This process: the attacker, and the well-behaved client's few calls.
    let attacker_cpu = cpu_time(std::process::id()).saturating_sub(attacker_cpu_before);
    let window = started.elapsed();
    let metrics = scrape(&addrs[1]).await;
    let count = |reason: &str| -> u64 {
        let series = format!("switchyard_gateway_refused_total{{reason=\"{reason}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok()).unwrap_or(0)
    };
    let (by_h2, by_gateway) = (count("h2_calm"), count("rapid_reset"));
    let calm = by_h2 + by_gateway;
    eprintln!(
        "rapid reset: {attack:?}; gateway CPU {cpu:?} (attacker's process {attacker_cpu:?}) over {window:?}; {calls} good calls ({} failed), slowest {slowest:?}; connections ended by h2 {by_h2}, by the gateway's rapid-reset rule {by_gateway}",
        failed.len()
    );
    // The gateway ended the attacker's connections, with GOAWAY ENHANCE_YOUR_CALM, and counted
    // each.
    assert!(attack.calmed >= 1, "{attack:?}");
    assert_eq!(attack.ended, 0, "{attack:?}");
    // (The last connection may have been ended after the attacker stopped reading it.)
    assert!((u64::from(attack.calmed)..=u64::from(attack.connections)).contains(&calm), "{attack:?}: {calm}");
    if after_accept {
        // Streams reset once accepted are past what h2 counts: the gateway's own rule ends them.
        assert!(by_gateway >= 1, "{attack:?}: h2 ended {by_h2}, the gateway none");
    }
    // The gateway stayed under one core of its two (the attack holds one serving thread at
    // most), and the good client was served on time. Streams reset before they are accepted cost
    // the attacker more CPU than the gateway (how much the gateway spends grows with how fast the
    // attacker sends: on a quiet machine 1.0-1.2 s in 2 s, against the attacker's 1.9); streams
    // reset once accepted go through the request path first and cost the gateway more (0.8 s
    // against 0.5 in this debug build), until the rapid-reset rule ends the connection.
    assert!(cpu < window, "the gateway used {cpu:?} of CPU in {window:?}");
    if !after_accept {
        assert!(cpu < attacker_cpu, "the gateway used {cpu:?} of CPU, the attacker {attacker_cpu:?}");
    }
    assert!(slowest < Duration::from_millis(250), "a well-behaved call took {slowest:?}");
    assert!(calls >= 20, "{calls} calls");
    assert!(failed.is_empty(), "well-behaved calls failed: {failed:?}");
    drop(gateway);
}
