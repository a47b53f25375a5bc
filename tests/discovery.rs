#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Discovery through the gateway: a pool fed by a watched file gains and loses endpoints under
//! load, over real loopback gRPC.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
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
        let args = WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() };
        tokio::spawn(worker::serve(args, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, _stop: tx }
    }
}

fn write_endpoints(path: &Path, workers: &[&Worker]) {
    let text: String =
        workers.iter().map(|w| format!("[[endpoints]]\naddress = \"http://{}\"\n", w.addr)).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Requests the endpoint has taken (ended or in flight), if it is on the pool's board.
fn taken(gateway: &Gateway, id: &str) -> Option<u64> {
    let board = gateway.pool("default").unwrap().board();
    board.get(&id.into()).map(|e| {
        e.load.completed + e.load.failed + e.load.overloaded + e.load.cancelled + e.load.in_flight as u64
    })
}

/// Waits until `done` holds (checked every 5 ms), at most 10 s; how long it took.
async fn until(mut done: impl FnMut() -> bool, what: &str) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn admin_endpoints(addr: SocketAddr) -> serde_json::Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /endpoints HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").expect("an HTTP response");
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_fed_by_a_file_gains_and_loses_an_endpoint_under_load_with_no_failed_request() {
    let (a, b, c) = (Worker::start().await, Worker::start().await, Worker::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.toml");
    write_endpoints(&file, &[&a, &b]);
    let config = GatewayConfig::from_toml(&format!(
        "threads = 2\n[[pool]]\nname = \"default\"\n[[pool.discovery]]\nkind = \"file\"\npath = {:?}\n",
        file.display().to_string()
    ))
    .unwrap();
    let gateway = Gateway::start(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
    )
    .unwrap();

    // Load: eight clients calling back to back until told to stop; every failure counted.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let mut client = GrpcInferenceServiceClient::new(channel.clone());
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let req =
                        worker::request::text_request("sim-llm", &format!("client {i} request {n}"), 30);
                    match client.model_infer(req).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(status) => {
                            eprintln!("failed: {status:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    n += 1;
                }
            })
        })
        .collect();

    let (a_id, b_id, c_id) = (a.addr.to_string(), b.addr.to_string(), c.addr.to_string());
    until(
        || taken(&gateway, &a_id).unwrap_or(0) > 0 && taken(&gateway, &b_id).unwrap_or(0) > 0,
        "a and b serve",
    )
    .await;
    assert_eq!(taken(&gateway, &c_id), None);

    // c joins: it takes traffic once the file's change is applied.
    write_endpoints(&file, &[&a, &b, &c]);
    let added = until(|| taken(&gateway, &c_id).unwrap_or(0) > 0, "the added endpoint takes traffic").await;

    let view = admin_endpoints(gateway.admin_addr().unwrap()).await;
    let endpoints = view["pools"][0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3, "{view}");
    let source = format!("file:{}", file.display());
    assert!(endpoints.iter().all(|e| e["source"] == source.as_str()), "{view}");
    assert!(endpoints.iter().all(|e| e["state"] == "healthy" || e["state"] == "draining"), "{view}");

    // b leaves, with requests in flight on it: they finish, and it gets no new one.
    write_endpoints(&file, &[&a, &c]);
    let removed = until(
        || {
            let board = gateway.pool("default").unwrap().board();
            board.get(&b_id.as_str().into()).is_none_or(|e| e.draining)
        },
        "the removed endpoint stops taking requests",
    )
    .await;
    until(|| taken(&gateway, &b_id).is_none(), "the removed endpoint's requests end").await;
    // Now nothing may reach b: stop it, and keep the load going a while.
    drop(b);
    let before = ok.load(Ordering::Relaxed);
    until(|| ok.load(Ordering::Relaxed) > before + 200, "requests after the removal").await;

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    println!(
        "endpoint added: traffic after {added:?}; endpoint removed: no new request after {removed:?}; {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request fails while endpoints come and go");
    assert!(taken(&gateway, &c_id).unwrap() > 0 && taken(&gateway, &a_id).unwrap() > 0);
    gateway.shutdown().await.unwrap();
}

#[test]
fn a_discovery_source_missing_from_the_build_says_how_to_build_it() {
    let config = "[[pool]]\nname = \"p\"\n\n[[pool.discovery]]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/p/\"\n";
    let result = GatewayConfig::from_toml(config);
    if cfg!(feature = "etcd") {
        assert!(result.is_ok(), "{result:?}");
    } else {
        let e = result.unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("pool[0].discovery[0]")), "{e}");
        assert!(e.message.contains("--features etcd"), "{e}");
    }
    let config = "[[pool]]\nname = \"p\"\n[[pool.discovery]]\nkind = \"kubernetes\"\nservice = \"llm\"\n";
    let result = GatewayConfig::from_toml(config);
    if cfg!(feature = "kubernetes") {
        assert!(result.is_ok(), "{result:?}");
    } else {
        let e = result.unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("pool[0].discovery[0]")), "{e}");
        assert!(e.message.contains("--features kubernetes"), "{e}");
    }
    let e = GatewayConfig::from_toml(
        "[[pool]]\nname = \"p\"\n[[pool.discovery]]\nkind = \"file\"\npth = \"x\"\n",
    )
    .unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    let e = GatewayConfig::from_toml("[[pool]]\nname = \"p\"\n").unwrap_err();
    assert!(e.message.contains("no endpoints and no [[pool.discovery]]"), "{e}");
}

#[test]
fn an_etcd_source_over_tls_needs_https_servers_and_both_halves_of_a_client_certificate() {
    let config = |endpoint: &str, tls: &str| {
        format!(
            "[[pool]]\nname = \"p\"\n[[pool.discovery]]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/p/\"\ntls = {tls}\n"
        )
    };
    let e = GatewayConfig::from_toml(&config("http://10.0.0.5:2379", "{ ca = \"ca.pem\" }")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("pool[0].discovery[0]"), "{e}");
    assert!(e.message.contains("endpoints[0]") && e.message.contains("https://"), "{e}");
    let e =
        GatewayConfig::from_toml(&config("https://10.0.0.5:2379", "{ ca = \"ca.pem\", cert = \"c.pem\" }"))
            .unwrap_err();
    assert!(e.message.contains("`cert` and `key`"), "{e}");
    let e =
        GatewayConfig::from_toml(&config("https://10.0.0.5:2379", "{ ca = \"ca.pem\", crt = \"c.pem\" }"))
            .unwrap_err();
    assert!(e.to_string().contains("crt"), "{e}");
}

mod common;

#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn register_etcd_without_the_feature_says_how_to_build_it() {
    let output = tokio::process::Command::new(common::BIN)
        .args(["worker", "--listen", "127.0.0.1:0", "--register-etcd", "http://127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features etcd"), "{stderr}");
}

#[cfg(feature = "etcd")]
#[path = "../crates/switchyard-discovery/tests/support/etcd_server.rs"]
mod etcd_server;

/// A worker process registered with `--register-etcd` joins a gateway pool watching etcd, and
/// leaves it when it is killed (SIGKILL: no deregistration), once its lease runs out.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_registered_in_etcd_joins_the_pool_and_leaves_when_it_dies() {
    let etcd = etcd_server::EtcdServer::start().await;
    let (mut child, addr) = common::spawn_until(
        &[
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "20",
            "--register-etcd",
            &etcd.url(),
            "--etcd-prefix",
            "/llm/",
            "--etcd-ttl",
            "2s",
        ],
        "worker serving on ",
    )
    .await;
    let config = GatewayConfig::from_toml(&format!(
        "threads = 1\n[[pool]]\nname = \"default\"\n[[pool.discovery]]\nkind = \"etcd\"\nendpoints = [{:?}]\nprefix = \"/llm/\"\n",
        etcd.url()
    ))
    .unwrap();
    let gateway = Gateway::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap(), None).unwrap();
    until(|| taken(&gateway, &addr).is_some(), "the registered worker joins the pool").await;
    let mut client = GrpcInferenceServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", gateway.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    client.model_infer(worker::request::text_request("sim-llm", "hello", 5)).await.unwrap();
    let board = gateway.pool("default").unwrap().board().get(&addr.as_str().into()).unwrap();
    assert_eq!(board.endpoint.labels.get("source").map(String::as_str), Some("etcd:/llm/"));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let gone = until(|| taken(&gateway, &addr).is_none(), "the dead worker leaves the pool").await;
    println!("killed worker left the pool after {gone:?} (lease TTL 2 s)");
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_watching_health_holds_back_an_endpoint_that_is_not_serving() {
    let a = Worker::start().await;
    // Nothing listens there: its health cannot be SERVING.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = GatewayConfig::from_toml(&format!(
        "threads = 1\n[[pool]]\nname = \"default\"\nendpoints = [{{ address = \"http://{}\" }}, {{ address = \"http://{dead}\" }}]\n[pool.health]\ncheck_interval = \"100ms\"\n",
        a.addr
    ))
    .unwrap();
    let gateway = Gateway::start(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
    )
    .unwrap();
    let a_id = a.addr.to_string();
    until(|| taken(&gateway, &a_id).is_some(), "the SERVING endpoint joins").await;
    let mut client = GrpcInferenceServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", gateway.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for i in 0..20 {
        client.model_infer(worker::request::text_request("sim-llm", &format!("r{i}"), 5)).await.unwrap();
    }
    assert_eq!(taken(&gateway, &dead.to_string()), None, "the dead endpoint is not on the board");
    let view = admin_endpoints(gateway.admin_addr().unwrap()).await;
    let endpoints = view["pools"][0]["endpoints"].as_array().unwrap();
    let state = |id: &str| {
        endpoints
            .iter()
            .find(|e| e["endpoint"]["id"] == id)
            .map(|e| (e["state"].clone(), e["source"].clone()))
    };
    assert_eq!(state(&a_id), Some(("healthy".into(), "config".into())), "{view}");
    assert_eq!(state(&dead.to_string()), Some(("held back".into(), "config".into())), "{view}");
    gateway.shutdown().await.unwrap();
}

/// Established TCP connections whose local port is one of `ports` (the server side of the
/// connections to those listeners), read from /proc/net/tcp.
fn established_to(ports: &[u16]) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            fields.get(3) == Some(&"01") && port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Clients calling through the gateway back to back until stopped; the ok and failed counts.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(gateway: &Gateway, n: usize) -> Self {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients = (0..n)
            .map(|i| {
                let mut client = GrpcInferenceServiceClient::new(channel.clone());
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let req =
                            worker::request::text_request("sim-llm", &format!("client {i} request {n}"), 4);
                        match client.model_infer(req).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(status) => {
                                eprintln!("failed: {status:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        n += 1;
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, clients }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// 10,000 endpoint changes per second for 5 s, through a channel source into a gateway pool under
/// load: no request fails, the balancer ends with exactly the source's set, and once the set is
/// back to where it started the connections and tasks are back too (counted, not assumed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_at_10000_changes_per_second_leaks_nothing_and_fails_no_request() {
    const RATE: u64 = 10_000;
    const SECONDS: u64 = 5;
    let workers =
        [Worker::start().await, Worker::start().await, Worker::start().await, Worker::start().await];
    let ports: Vec<u16> = workers.iter().map(|w| w.addr.port()).collect();
    let stable: Vec<switchyard::core::Endpoint> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| switchyard::core::Endpoint::new(format!("s{i}"), format!("http://{}", w.addr)))
        .collect();
    // The pool's endpoints all come from the channel (the static section is empty).
    let (gateway, publisher) = common::gateway::with_channel(
        &format!("threads = 2\n[[pool]]\nname = \"default\"\n{}", common::gateway::EMPTY_STATIC),
        1024,
    )
    .await;
    publisher.replace(stable.clone()).await.unwrap();
    let board = gateway.pool("default").unwrap().board().clone();
    let ids = |board: &switchyard::balance::LoadBoard| {
        board
            .snapshot()
            .into_iter()
            .map(|e| e.endpoint.id.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let stable_ids: std::collections::BTreeSet<String> = stable.iter().map(|e| e.id.to_string()).collect();
    until(|| ids(&board) == stable_ids, "the stable set joins").await;

    // Baseline: the stable set, after some traffic, with no client running.
    let load = Load::start(&gateway, 8).await;
    until(|| load.ok.load(Ordering::Relaxed) > 200, "traffic").await;
    assert_eq!(load.stop().await.1, 0);
    let (base_connections, base_tasks) = (established_to(&ports), alive_tasks());

    // Flapping under load: 60 more ids over the same four replicas, each change toggling one
    // (insert or remove) or re-weighting a present one in place.
    let load = Load::start(&gateway, 8).await;
    let mut present = std::collections::BTreeMap::<usize, u32>::new();
    let mut seed: u64 = 0x5eed;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < RATE * SECONDS {
        let due = (start.elapsed().as_micros() as u64 * RATE / 1_000_000).min(RATE * SECONDS);
        while sent < due {
            let i = (random() % 60) as usize;
            let id = format!("f{i}");
            let address = format!("http://{}", workers[i % 4].addr);
            match present.get(&i).copied() {
                Some(weight) if random() % 5 == 0 => {
                    present.insert(i, weight % 3 + 1);
                    let endpoint = switchyard::core::Endpoint::new(id, address).with_weight(weight % 3 + 1);
                    publisher.insert(endpoint).await.unwrap();
                }
                Some(_) => {
                    present.remove(&i);
                    publisher.remove(id).await.unwrap();
                }
                None => {
                    present.insert(i, 1);
                    publisher.insert(switchyard::core::Endpoint::new(id, address)).await.unwrap();
                }
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let flapped = start.elapsed();
    let before = load.ok.load(Ordering::Relaxed);
    until(|| load.ok.load(Ordering::Relaxed) > before + 100, "requests after the flapping").await;
    let (ok, failed) = load.stop().await;

    // The balancer's set is the source's (draining ones have left once their requests ended).
    let expected: std::collections::BTreeSet<String> =
        stable_ids.iter().cloned().chain(present.keys().map(|i| format!("f{i}"))).collect();
    until(|| ids(&board) == expected, "the balancer's final set equals the source's").await;
    let peak_connections = established_to(&ports);

    // Back to the starting set: every connection and task the flapping made is gone.
    publisher.replace(stable.clone()).await.unwrap();
    until(|| ids(&board) == stable_ids, "back to the stable set").await;
    until(
        || established_to(&ports) <= base_connections.max(4 * 3),
        "the removed endpoints' connections close",
    )
    .await;
    let connections = established_to(&ports);
    until(|| alive_tasks() <= base_tasks + 2 * connections.saturating_sub(base_connections), "the tasks end")
        .await;
    let tasks = alive_tasks();
    println!(
        "flapping: {sent} changes in {flapped:?} ({:.0}/s); {ok} requests ok, {failed} failed; final set {} endpoints; \
         connections to the replicas: {base_connections} before, {peak_connections} after flapping ({} ids), {connections} back at the start set; \
         tasks: {base_tasks} before, {tasks} after",
        sent as f64 / flapped.as_secs_f64(),
        expected.len(),
        expected.len(),
    );
    assert_eq!(failed, 0, "no request fails while endpoints flap");
    assert!(peak_connections <= expected.len() * 3, "at most one connection per endpoint and serving thread");
    gateway.shutdown().await.unwrap();
}

/// A pool's drain timeout through the gateway, over real loopback gRPC: a server-streaming call
/// (a health `Watch`, which never ends by itself) on an endpoint its source removes is cut with
/// `UNAVAILABLE` once the timeout has passed, and the gateway's connection to the endpoint
/// closes; a short call in flight at the removal still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_removed_endpoint_is_cut_after_the_pools_drain_timeout() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    const DRAIN: Duration = Duration::from_secs(1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    // Speed 1: a call of 20 tokens takes a few hundred milliseconds, well inside the drain.
    let args = WorkerArgs { speed: 1.0, model: "sim-llm".into(), ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, listener, async move {
        let _ = stopped.await;
    }));
    let (gateway, publisher) = common::gateway::with_channel(
        &format!(
            "threads = 1\n[[pool]]\nname = \"default\"\ndrain_timeout = \"{}ms\"\n{}",
            DRAIN.as_millis(),
            common::gateway::EMPTY_STATIC
        ),
        8,
    )
    .await;
    publisher.insert(switchyard::core::Endpoint::new("a", format!("http://{addr}"))).await.unwrap();
    until(|| taken(&gateway, "a").is_some(), "the endpoint joins").await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1, "SERVING");
    let short = tokio::spawn({
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        async move { client.model_infer(worker::request::text_request("sim-llm", "short", 20)).await }
    });
    let in_flight =
        || gateway.pool("default").unwrap().board().get(&"a".into()).map_or(0, |e| e.load.in_flight);
    until(|| in_flight() == 2, "the stream and the short call in flight").await;
    assert_eq!(established_to(&[addr.port()]), 1, "one connection to the endpoint");

    // Taken before the removal is sent: the pool may apply it (and start its drain timer)
    // before `remove` returns, so an instant taken after would be late.
    let removed = Instant::now();
    publisher.remove("a").await.unwrap();
    short.await.unwrap().expect("the short call in flight at the removal succeeds");
    let status = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the stream ends")
        .expect_err("the stream is cut");
    let cut_after = removed.elapsed();
    println!("stream cut {cut_after:?} after the removal (drain timeout {DRAIN:?}): {status:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("drain timeout"), "{status:?}");
    assert!(cut_after >= DRAIN, "not cut before the drain timeout: {cut_after:?}");

    until(|| established_to(&[addr.port()]) == 0, "the gateway's connection to the endpoint closes").await;
    until(|| taken(&gateway, "a").is_none(), "the endpoint leaves the board").await;
    drop(stop);
    gateway.shutdown().await.unwrap();
}

/// A worker run in-process whose shutdown the test triggers, on a given listener; `done` tells
/// when its `serve` has returned.
struct StoppableWorker {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl StoppableWorker {
    fn start(listener: TcpListener) -> Self {
        let (stop, stopped) = oneshot::channel();
        let args = WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() };
        let done = tokio::spawn(async move {
            worker::serve(args, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self { stop: Some(stop), done }
    }

    /// Starts the worker's shutdown (as SIGTERM does): NOT_SERVING, the grace, the drain.
    fn shutdown(&mut self) {
        self.stop.take();
    }
}

/// A worker shutting down under steady load through a pool that watches health: it reports
/// NOT_SERVING while it still serves (`--drain-grace`), the pool stops sending to it on that one
/// health update, and no request fails; started again on the same address, it is SERVING and
/// takes traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_shutting_down_turns_not_serving_first_and_no_request_through_the_pool_fails() {
    let listener_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a_addr, b_addr) = (listener_a.local_addr().unwrap(), listener_b.local_addr().unwrap());
    let _a = StoppableWorker::start(listener_a);
    let mut b = StoppableWorker::start(listener_b);
    let config = GatewayConfig::from_toml(&format!(
        "threads = 2\n[[pool]]\nname = \"default\"\nendpoints = [{{ address = \"http://{a_addr}\" }}, {{ address = \"http://{b_addr}\" }}]\n[pool.health]\ncheck_interval = \"100ms\"\n"
    ))
    .unwrap();
    let gateway = Gateway::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap(), None).unwrap();
    let (a_id, b_id) = (a_addr.to_string(), b_addr.to_string());
    until(|| taken(&gateway, &a_id).is_some() && taken(&gateway, &b_id).is_some(), "both SERVING").await;

    let load = Load::start(&gateway, 8).await;
    until(
        || taken(&gateway, &a_id).unwrap_or(0) > 50 && taken(&gateway, &b_id).unwrap_or(0) > 50,
        "both serve",
    )
    .await;

    // b shuts down: NOT_SERVING at once, refusals only after its grace.
    b.shutdown();
    let held_back = until(
        || {
            let board = gateway.pool("default").unwrap().board();
            board.get(&b_id.as_str().into()).is_none_or(|e| e.draining)
        },
        "the NOT_SERVING worker stops getting requests",
    )
    .await;
    let before = load.ok.load(Ordering::Relaxed);
    (&mut b.done).await.unwrap();
    until(|| load.ok.load(Ordering::Relaxed) > before + 100, "requests while b is gone").await;
    assert_eq!(taken(&gateway, &b_id), None, "the stopped worker is off the board");
    assert_eq!(load.failed.load(Ordering::Relaxed), 0, "no request fails while b drains");

    // b again, on the same address: SERVING, it takes traffic again.
    let _b = StoppableWorker::start(TcpListener::bind(b_addr).await.unwrap());
    let back = until(|| taken(&gateway, &b_id).unwrap_or(0) > 0, "the restarted worker takes traffic").await;

    let (ok, failed) = load.stop().await;
    println!(
        "NOT_SERVING worker left the pool {held_back:?} after its shutdown began; back {back:?} after its restart; {ok} ok, {failed} failed"
    );
    assert_eq!(failed, 0, "no request fails while a worker leaves and comes back");
    gateway.shutdown().await.unwrap();
}
