#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile first messages against the gateway binary: tiny frames, and one connection opening
//! 200 streams whose model hides behind a 4 MiB field. They are refused or routed without a
//! model, cleanly; the gateway's memory stays bounded; a well-behaved client on the same serving
//! thread is served on time meanwhile.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use tokio::net::{TcpListener, TcpStream};

mod common;

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The gateway process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

type HostileBody = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A `ModelInfer` body whose model name comes after a `filler`-byte field, sent in 64 KiB frames
/// that all share one buffer.
fn hidden_model(filler: usize) -> HostileBody {
    let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
    let tail = [0x0a, 7, b's', b'i', b'm', b'-', b'l', b'l', b'm'];
    let mut field = vec![0x12];
    prost::encoding::encode_varint(filler as u64, &mut field);
    let len = field.len() + filler + tail.len();
    let mut head = vec![0];
    head.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    head.extend_from_slice(&field);
    let mut frames = vec![Ok(Frame::data(Bytes::from(head)))];
    frames.extend((0..filler / chunk.len()).map(|_| Ok(Frame::data(chunk.clone()))));
    frames.push(Ok(Frame::data(Bytes::from_static(&[0x0a, 7, b's', b'i', b'm', b'-', b'l', b'l', b'm']))));
    StreamBody::new(futures::stream::iter(frames))
}

/// A `ModelInfer` message sent one byte per frame.
fn one_byte_frames(n: usize) -> HostileBody {
    let mut message = vec![0x0a, 7, b's', b'i', b'm', b'-', b'l', b'l', b'm', 0x1a];
    prost::encoding::encode_varint((n - 12) as u64, &mut message);
    message.resize(n, b'x');
    let mut wire = vec![0];
    wire.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    wire.extend_from_slice(&message);
    let frames: Vec<_> = wire.into_iter().map(|b| Ok(Frame::data(Bytes::from(vec![b])))).collect();
    StreamBody::new(futures::stream::iter(frames))
}

fn request(body: HostileBody) -> http::Request<HostileBody> {
    http::Request::post(MODEL_INFER)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// A raw HTTP/2 connection to the gateway.
async fn connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<HostileBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, HostileBody>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// The gRPC status of a response: from its headers (trailers-only) or its trailers.
async fn status_of(response: http::Response<hyper::body::Incoming>) -> (String, String) {
    let (parts, body) = response.into_parts();
    let trailers = match parts.headers.get("grpc-status") {
        Some(_) => parts.headers,
        None => body.collect().await.map(|b| b.trailers().cloned().unwrap_or_default()).unwrap_or_default(),
    };
    let get = |k: &str| trailers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_first_messages_fail_cleanly_memory_stays_bounded_and_others_are_served() {
    let worker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = worker.local_addr().unwrap();
    let args = WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, worker, std::future::pending()));
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();

    let dir = std::env::temp_dir().join(format!("switchyard-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
threads = 1

[keys]
peek_timeout = "2s"
max_peek_frames = 300

[[pool]]
name = "llama"
endpoints = [{{ address = "http://{worker_addr}" }}]

[[pool]]
name = "other"
endpoints = [{{ address = "http://{closed}" }}]

[[route]]
model = "sim-llm"
pool = "llama"
"#
        ),
    )
    .unwrap();
    let (gateway, addr) = common::spawn_until(
        &[
            "gateway",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        "gateway serving on ",
    )
    .await;
    let addr: SocketAddr = addr.parse().unwrap();
    let pid = gateway.id().unwrap();

    // A well-behaved client, on the gateway's one serving thread.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut good = GrpcInferenceServiceClient::new(channel);
    let call = || worker::request::text_request("sim-llm", "hello", 1);
    good.model_infer(call()).await.unwrap();
    let baseline = rss(pid);

    // Tiny frames: refused past the key layer's frame limit (300 here, well above the 65 frames of 16 KiB a 1 MiB peek takes; a flood of thousands is
    // cut by HTTP/2 itself, GOAWAY ENHANCE_YOUR_CALM, before the key layer sees them).
    let mut sender = connect(addr).await;
    let response = sender.send_request(request(one_byte_frames(600))).await.unwrap();
    let (code, message) = status_of(response).await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");
    assert!(message.contains("frames"), "{message}");
    good.model_infer(call()).await.unwrap();

    // One hostile connection.
    let mut sender = connect(addr).await;

    // 200 streams, each hiding its model behind 4 MiB.
    let hostile: Vec<_> = (0..200)
        .map(|_| {
            let response = sender.send_request(request(hidden_model(4 << 20)));
            tokio::spawn(async move {
                match response.await {
                    Ok(response) => status_of(response).await.0,
                    Err(e) => format!("reset: {e}"),
                }
            })
        })
        .collect();

    let mut peak = baseline;
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    while hostile.iter().any(|h| !h.is_finished()) {
        assert!(started.elapsed() < Duration::from_secs(60), "hostile streams still open after a minute");
        let sent = Instant::now();
        good.model_infer(call()).await.unwrap();
        slowest = slowest.max(sent.elapsed());
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for h in hostile {
        *outcomes.entry(h.await.unwrap()).or_default() += 1;
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "hostile: outcomes {outcomes:?}, gateway RSS {} MiB -> peak {} MiB (+{} MiB), slowest good call {slowest:?}",
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    // Every hostile stream ended with a gRPC status: no route, its model being past what its
    // peek could read (1 MiB, or its share of the connection's budget); none hung, none got
    // through to a replica.
    assert_eq!(outcomes, [("12".to_string(), 200)].into(), "UNIMPLEMENTED for each");
    assert!(growth < 64 << 20, "the gateway grew by {} MiB", growth >> 20);
    assert!(slowest < Duration::from_secs(1), "a well-behaved call took {slowest:?}");
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
