#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hash and prefix-aware routing through the gateway over real loopback gRPC: in-process
//! workers behind an in-process gateway, reached with the generated client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// An in-process worker with a fast simulated GPU; it stops when dropped.
struct Worker {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Worker {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let args = WorkerArgs { speed: 20.0, model: "llama".into(), ..WorkerArgs::default() };
        tokio::spawn(worker::serve(args, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, _stop: tx }
    }
}

async fn gateway_for(workers: &[Worker], policy: &str) -> Gateway {
    let endpoints: Vec<String> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{{ address = \"http://{}\", id = \"w{i}\" }}", w.addr))
        .collect();
    let config = format!(
        "[keys]\nblock_tokens = 16\n\n[[pool]]\nname = \"llama\"\npolicy = {policy}\nendpoints = [{}]\n",
        endpoints.join(", ")
    );
    let config = GatewayConfig::from_toml(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Gateway::start(config, listener, None).unwrap()
}

/// Requests each endpoint has ended, by id.
fn ended(gateway: &Gateway) -> BTreeMap<String, u64> {
    let snapshot = gateway.pool("llama").unwrap().board().snapshot();
    snapshot
        .iter()
        .map(|e| (e.endpoint.id.as_str().to_string(), e.load.completed + e.load.failed + e.load.cancelled))
        .collect()
}

/// Waits (briefly) until the board has counted `n` ended requests in all.
async fn settle(gateway: &Gateway, n: u64) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let counts = ended(gateway);
        if counts.values().sum::<u64>() == n || Instant::now() > deadline {
            assert_eq!(counts.values().sum::<u64>(), n, "{counts:?}");
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `requests` one after another (each session's in turn) and returns, per session, the
/// endpoints that served its requests.
async fn serve_sessions(
    gateway: &Gateway,
    sessions: &[(String, String)],
    per_session: usize,
) -> Vec<BTreeMap<String, u64>> {
    let channel =
        Channel::from_shared(format!("http://{}", gateway.local_addr())).unwrap().connect().await.unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    let mut total = 0;
    let mut before = settle(gateway, 0).await;
    let mut served = Vec::new();
    for (session, prompt) in sessions {
        for _ in 0..per_session {
            let mut request = tonic::Request::new(worker::request::text_request("llama", prompt, 2));
            if !session.is_empty() {
                request.metadata_mut().insert("x-session-id", session.parse().unwrap());
            }
            client.model_infer(request).await.unwrap();
        }
        total += per_session as u64;
        let after = settle(gateway, total).await;
        let delta: BTreeMap<String, u64> = after
            .iter()
            .filter_map(|(id, n)| {
                let d = n - before.get(id).copied().unwrap_or(0);
                (d > 0).then(|| (id.clone(), d))
            })
            .collect();
        served.push(delta);
        before = after;
    }
    served
}

#[tokio::test]
async fn the_requests_of_one_session_land_on_one_replica() {
    let workers =
        [Worker::start().await, Worker::start().await, Worker::start().await, Worker::start().await];
    for policy in ["\"consistent-hash\"", "{ name = \"bounded-load-hash\", load_factor = 1.5 }"] {
        let gateway = gateway_for(&workers, policy).await;
        let sessions: Vec<(String, String)> =
            (0..12).map(|s| (format!("conversation-{s}"), format!("turn of conversation {s}"))).collect();
        let served = serve_sessions(&gateway, &sessions, 4).await;
        let mut homes = std::collections::BTreeSet::new();
        for (session, endpoints) in sessions.iter().zip(&served) {
            assert_eq!(endpoints.len(), 1, "{policy}: {} went to {endpoints:?}", session.0);
            homes.extend(endpoints.keys().cloned());
        }
        assert!(homes.len() >= 2, "{policy}: twelve sessions over more than one replica: {homes:?}");
        gateway.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn prompts_sharing_a_prefix_meet_on_one_replica_under_prefix_aware() {
    let workers = [Worker::start().await, Worker::start().await, Worker::start().await];
    let gateway = gateway_for(&workers, "\"prefix-aware\"").await;
    // Without a session header: the key layer hashes 16-token blocks of the prompt text.
    let system = "You are a careful assistant who answers in full sentences. ".repeat(8);
    let sessions: Vec<(String, String)> = (0..3)
        .map(|q| (String::new(), format!("{system}Question number {q}: why is the sky blue?")))
        .collect();
    let served = serve_sessions(&gateway, &sessions, 3).await;
    let homes: std::collections::BTreeSet<&String> = served.iter().flat_map(|m| m.keys()).collect();
    assert_eq!(homes.len(), 1, "one shared prefix, one replica, while none is loaded: {served:?}");
    gateway.shutdown().await.unwrap();
}

/// A pool with its own session header (`[pool.keys] session_header`) keys on that header, not
/// on the gateway's: one user's requests, each with a different `x-session-id`, land on one
/// replica, and different users spread.
#[tokio::test]
async fn a_pool_with_its_own_session_header_keeps_one_session_on_one_replica() {
    let workers =
        [Worker::start().await, Worker::start().await, Worker::start().await, Worker::start().await];
    let endpoints: Vec<String> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{{ address = \"http://{}\", id = \"w{i}\" }}", w.addr))
        .collect();
    let config = format!(
        "[[pool]]\nname = \"llama\"\npolicy = \"consistent-hash\"\nendpoints = [{}]\n\n[pool.keys]\nsession_header = \"x-user\"\n",
        endpoints.join(", ")
    );
    let config = GatewayConfig::from_toml(&config).unwrap();
    let gateway = Gateway::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap(), None).unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", gateway.local_addr())).unwrap().connect().await.unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    let mut before = settle(&gateway, 0).await;
    let mut homes = std::collections::BTreeSet::new();
    let mut sent = 0;
    for user in 0..8 {
        for turn in 0..4 {
            let mut request =
                tonic::Request::new(worker::request::text_request("llama", &format!("turn {turn}"), 2));
            request.metadata_mut().insert("x-user", format!("user-{user}").parse().unwrap());
            // The gateway's own session header differs on every request: ignored in this pool.
            request.metadata_mut().insert("x-session-id", format!("s-{user}-{turn}").parse().unwrap());
            client.model_infer(request).await.unwrap();
        }
        sent += 4;
        let after = settle(&gateway, sent).await;
        let served: Vec<&String> = after
            .iter()
            .filter(|(id, n)| **n > before.get(*id).copied().unwrap_or(0))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(served.len(), 1, "user-{user} went to {served:?}");
        homes.insert(served[0].clone());
        before = after;
    }
    assert!(homes.len() >= 2, "eight users over more than one replica: {homes:?}");
    gateway.shutdown().await.unwrap();
}
