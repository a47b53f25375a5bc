#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The worker's KV-cache event stream (`switchyard.kv.v1.KvEvents/Subscribe`) over real loopback
//! gRPC: snapshot then events, resume after a dropped connection, a subscriber behind the ring,
//! a restarted worker, and the gateway's precise pool subscribing to its endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::proto::inference::{InferParameter, infer_parameter::ParameterChoice};
use switchyard::worker::kv_events::{KvEventsServer, KvEventsService};
use switchyard::worker::request::{self, int_parameter};
use switchyard::worker::{self, WorkerArgs};
use switchyard_balance::PolicySpec;
use switchyard_core::{EndpointId, KvEventKind};
use switchyard_hash::precise::proto::{
    SubscribeRequest, SubscribeResponse, kv_events_client::KvEventsClient, subscribe_response::Body,
};
use switchyard_hash::precise::{KvFeed, KvSubscriber, SubscriberConfig};
use switchyard_sim::{EngineConfig, EngineHandle, GenerationRequest, KvRead};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Streaming;
use tonic::transport::Channel;

/// An in-process worker with a fast simulated GPU.
struct Worker {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Worker {
    async fn start_on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let args = WorkerArgs { speed: 20.0, model: "llama".into(), ..WorkerArgs::default() };
        let task = tokio::spawn(async move {
            worker::serve(args, listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self { addr, stop: Some(tx), task }
    }

    async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// Drains and stops it; returns once its listener is closed.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// One request whose prompt is `blocks` whole 512-token blocks with those ids: when it returns,
/// the worker has cached them.
async fn infer(addr: SocketAddr, blocks: &[u64]) {
    let mut req = request::text_request("llama", "x", 1);
    req.parameters.insert(request::PROMPT_TOKENS.into(), int_parameter(512 * blocks.len() as i64));
    let ids = blocks.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    req.parameters.insert(
        request::PREFIX_HASHES.into(),
        InferParameter { parameter_choice: Some(ParameterChoice::StringParam(ids)) },
    );
    GrpcInferenceServiceClient::new(channel(addr).await).model_infer(req).await.unwrap();
}

async fn subscribe(addr: SocketAddr, instance: u64, after_sequence: u64) -> Streaming<SubscribeResponse> {
    KvEventsClient::new(channel(addr).await)
        .subscribe(SubscribeRequest { instance, after_sequence })
        .await
        .unwrap()
        .into_inner()
}

/// The next message that is not a heartbeat.
async fn next(stream: &mut Streaming<SubscribeResponse>) -> SubscribeResponse {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the stream is open");
        match &message.body {
            Some(Body::Events(batch)) if batch.events.is_empty() => continue,
            _ => return message,
        }
    }
}

/// `(sequence, stored?, block)` of the next `n` events (over as many batches as they come in).
async fn events(stream: &mut Streaming<SubscribeResponse>, n: usize) -> Vec<(u64, bool, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(Body::Events(batch)) = next(stream).await.body else { panic!("events expected") };
        for e in batch.events {
            let e = e.to_core().unwrap();
            out.push((e.sequence, e.kind == KvEventKind::Stored, e.block));
        }
    }
    out
}

/// Waits (polling what it observes, at most 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < give_up, "still not {what} after 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval
    }
}

#[tokio::test]
async fn a_subscriber_gets_a_snapshot_then_the_events_and_resumes_without_missing_or_repeating() {
    let worker = Worker::start().await;
    infer(worker.addr, &[1, 2, 3, 4]).await;

    let mut stream = subscribe(worker.addr, 0, 0).await;
    let first = next(&mut stream).await;
    let instance = first.instance;
    assert_ne!(instance, 0);
    assert_eq!(first.block_tokens, 512);
    let Some(Body::Snapshot(snapshot)) = first.body else { panic!("a snapshot first") };
    assert_eq!((snapshot.sequence, snapshot.blocks.as_slice()), (4, &[1, 2, 3, 4][..]));

    infer(worker.addr, &[1, 2, 3, 4, 5, 6]).await;
    assert_eq!(events(&mut stream, 2).await, [(5, true, 5), (6, true, 6)]);

    // The connection drops; blocks are cached meanwhile; the subscriber resumes after event 6.
    drop(stream);
    infer(worker.addr, &[9, 10]).await;
    let mut stream = subscribe(worker.addr, instance, 6).await;
    assert_eq!(
        events(&mut stream, 2).await,
        [(7, true, 9), (8, true, 10)],
        "no snapshot, nothing missed or repeated"
    );
    infer(worker.addr, &[11]).await;
    assert_eq!(events(&mut stream, 1).await, [(9, true, 11)]);

    // Another instance's position is no position here: a snapshot of everything held.
    let mut stream = subscribe(worker.addr, instance ^ 1, 6).await;
    let Some(Body::Snapshot(snapshot)) = next(&mut stream).await.body else { panic!("a snapshot") };
    assert_eq!((snapshot.sequence, snapshot.blocks.len()), (9, 9));
    worker.stop().await;
}

/// The `KvEvents` service over an engine with a ring of `buffer` events, on a loopback server
/// the test can stop and restart (as the same instance).
async fn serve_engine(engine: &EngineHandle, listener: TcpListener) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop_streams, stopped) = tokio::sync::watch::channel(false);
    let service = KvEventsService::new(engine.clone(), 42, stopped);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(KvEventsServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = rx.await;
                    // Open streams end, or the graceful shutdown would wait for them.
                    stop_streams.send_replace(true);
                },
            )
            .await
            .unwrap();
    });
    (tx, task)
}

async fn run(engine: &EngineHandle, blocks: &[u64]) {
    let request = GenerationRequest::new(512 * blocks.len() as u32, 1)
        .with_prefix(switchyard_core::PrefixBlocks::new(blocks.to_vec()));
    engine.submit(request).unwrap().collect_outcome().await.unwrap();
}

fn held(engine: &EngineHandle) -> Vec<u64> {
    let KvRead::Snapshot { blocks, .. } = engine.kv_read(None, 0) else { unreachable!() };
    blocks
}

#[tokio::test]
async fn a_subscriber_that_fell_behind_the_ring_resyncs_from_a_snapshot() {
    // 8 events of ring; 16 blocks of cache: evictions too.
    let config = EngineConfig {
        kv_event_buffer: 8,
        kv_capacity_tokens: 16 * 512,
        speed: 20.0,
        ..EngineConfig::default()
    };
    let engine = EngineHandle::spawn(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, task) = serve_engine(&engine, listener).await;

    let feed = Arc::new(KvFeed::new(1000, Duration::from_secs(60)));
    let fast = SubscriberConfig { min_backoff: Duration::from_millis(10), ..SubscriberConfig::default() };
    let subscriber = KvSubscriber::new(feed.clone(), fast);
    let id = EndpointId::from("r0");
    subscriber.insert(id.clone(), &addr.to_string());
    run(&engine, &[1, 2, 3]).await;
    until("synced to the first request", || feed.longest_match(&id, &[1, 2, 3]) == 3 && feed.is_live(&id))
        .await;

    // The server goes away; while it is gone the cache moves well past the ring (and evicts).
    stop.send(()).unwrap();
    task.await.unwrap();
    until("down", || !feed.is_live(&id)).await;
    for k in 0..6u64 {
        run(&engine, &[100 + 10 * k, 101 + 10 * k, 102 + 10 * k, 103 + 10 * k]).await;
    }
    let (_, resume) = feed.resume_point(&id).unwrap();
    assert!(
        engine.kv_read(Some(resume), 100) == engine.kv_read(None, 0),
        "the events after it left the ring"
    );

    let listener = TcpListener::bind(addr).await.unwrap();
    let (stop, task) = serve_engine(&engine, listener).await;
    until("live again", || feed.is_live(&id)).await;
    let now = held(&engine);
    assert_eq!(feed.blocks_of(&id), now.len());
    assert_eq!(feed.longest_match(&id, &now[now.len() - 4..]), 4, "holds the newest blocks");
    assert_eq!(feed.longest_match(&id, &[1]), 0, "forgets what the replica evicted");
    // And events flow after the snapshot.
    run(&engine, &[7, 8]).await;
    until("the new blocks", || feed.longest_match(&id, &[7, 8]) == 2).await;
    assert_eq!(feed.blocks_of(&id), held(&engine).len());
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_restarted_worker_makes_the_subscriber_forget_its_stale_blocks() {
    let worker = Worker::start().await;
    let addr = worker.addr;
    let feed = Arc::new(KvFeed::new(1000, Duration::from_secs(60)));
    let fast = SubscriberConfig { min_backoff: Duration::from_millis(10), ..SubscriberConfig::default() };
    let subscriber = KvSubscriber::new(feed.clone(), fast);
    let id = EndpointId::from("w0");
    subscriber.insert(id.clone(), &format!("http://{addr}"));
    infer(addr, &[1, 2, 3]).await;
    until("the first worker's blocks", || feed.longest_match(&id, &[1, 2, 3]) == 3 && feed.is_live(&id))
        .await;
    let (first_instance, _) = feed.resume_point(&id).unwrap();

    // The worker stops: its stream is down (the precise policy routes it on the approximate
    // index meanwhile); a new worker process takes the address.
    worker.stop().await;
    until("down", || !feed.is_live(&id)).await;
    let worker = Worker::start_on(TcpListener::bind(addr).await.unwrap()).await;
    infer(addr, &[7, 8]).await;
    until("the new worker's blocks", || feed.longest_match(&id, &[7, 8]) == 2 && feed.is_live(&id)).await;
    assert_ne!(feed.resume_point(&id).unwrap().0, first_instance);
    assert_eq!(feed.longest_match(&id, &[1, 2, 3]), 0, "the old instance's blocks are forgotten");
    assert_eq!(feed.blocks_of(&id), 2);

    // Removed from the pool: nothing is kept for it.
    subscriber.remove(&id);
    assert!(!feed.follows(&id));
    assert_eq!(feed.stats().entries, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_precise_pool_subscribes_to_its_endpoints() {
    let workers = [Worker::start().await, Worker::start().await];
    let gateway = gateway_over(&workers, r#"{ name = "prefix-aware-precise", stale_after_ms = 3000 }"#).await;
    let feed = gateway.pool("llama").unwrap().kv_feed().expect("a precise pool has a feed");
    assert_eq!(gateway.pool("llama").unwrap().policy().name(), "prefix-aware-precise");
    until("both streams live", || feed.is_live(&"w0".into()) && feed.is_live(&"w1".into())).await;
    infer(workers[1].addr, &[5, 6]).await;
    until("w1's blocks", || feed.longest_match(&"w1".into(), &[5, 6]) == 2).await;
    assert_eq!(feed.longest_match(&"w0".into(), &[5, 6]), 0);
    gateway.shutdown().await.unwrap();
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn a_pool_switched_to_the_precise_policy_subscribes_and_switched_away_lets_go() {
    let workers = [Worker::start().await, Worker::start().await];
    let gateway = gateway_over(&workers, r#""prefix-aware""#).await;
    let pool = gateway.pool("llama").unwrap();
    assert!(pool.kv_feed().is_none(), "no streams under the approximate policy");

    // Switched at run time (as the admin API does): every endpoint the pool has is followed.
    let precise: PolicySpec = serde_json::from_str(r#"{"name": "prefix-aware-precise"}"#).unwrap();
    assert_eq!(pool.set_policy(&precise).unwrap(), "prefix-aware");
    let feed = pool.kv_feed().expect("the switched pool has a feed");
    until("both streams live", || feed.is_live(&"w0".into()) && feed.is_live(&"w1".into())).await;
    infer(workers[0].addr, &[9, 10, 11]).await;
    until("w0's blocks", || feed.longest_match(&"w0".into(), &[9, 10, 11]) == 3).await;

    // Switched away: the subscriber (and with it the streams) is dropped.
    assert_eq!(pool.set_policy(&PolicySpec::named("least-response-time")).unwrap(), "prefix-aware-precise");
    assert!(pool.kv_feed().is_none());
    gateway.shutdown().await.unwrap();
    for w in workers {
        w.stop().await;
    }
}

/// A gateway with one pool `llama` of `workers` (ids `w0`, `w1`, ...) under `policy` (TOML).
async fn gateway_over(workers: &[Worker], policy: &str) -> Gateway {
    let endpoints: Vec<String> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{{ address = \"http://{}\", id = \"w{i}\" }}", w.addr))
        .collect();
    let config =
        format!("[[pool]]\nname = \"llama\"\npolicy = {policy}\nendpoints = [{}]\n", endpoints.join(", "));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Gateway::start(GatewayConfig::from_toml(&config).unwrap(), listener, None).unwrap()
}
