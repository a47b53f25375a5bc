//! Health watching against real gRPC health servers on loopback ports, feeding the balancer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_balance::policy::RoundRobin;
use switchyard_balance::{Backend, Balance, CompleteOnResponse, PolicyHandle};
use switchyard_core::{Endpoint, EndpointId};
use switchyard_discovery::{HealthConfig, channel};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::{Service, ServiceExt};

/// A gRPC server with only the health service, on a loopback port, on a runtime of its own (in a
/// thread of its own): dropping it stops that runtime, closing its connections as a process that
/// dies would.
struct HealthServer {
    addr: SocketAddr,
    reporter: HealthReporter,
    _stop: std::sync::mpsc::Sender<()>,
}

impl HealthServer {
    async fn start(status: ServingStatus) -> Self {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", status).await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
            });
            // Runs the server until the handle is dropped, then drops the runtime and with it
            // every connection.
            runtime.block_on(async move {
                let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
            });
        });
        Self { addr, reporter, _stop: stop }
    }

    fn endpoint(&self, id: &str) -> Endpoint {
        Endpoint::new(id, format!("http://{}", self.addr))
    }
}

type Balancer = Balance<
    tower::util::BoxCloneSyncService<http::Request<()>, String, Infallible>,
    http::Request<()>,
    CompleteOnResponse,
>;

/// A balancer whose endpoints come from `source`; each endpoint answers with its id.
fn balancer(source: switchyard_discovery::Source) -> Balancer {
    let backends = source.map(|change| {
        change.map(|change| match change {
            tower::discover::Change::Insert(id, endpoint) => {
                let name = id.to_string();
                let service =
                    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: http::Request<()>| {
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(name) }
                    }));
                tower::discover::Change::Insert(id, Backend::new(endpoint, service))
            }
            tower::discover::Change::Remove(id) => tower::discover::Change::Remove(id),
        })
    });
    // Round robin: the endpoints answer in microseconds, and a load-aware policy would send
    // every call to whichever measured a little faster; these tests are about which endpoints
    // take traffic, not which is faster.
    Balance::new(backends)
        .with_policy(PolicyHandle::new(std::sync::Arc::new(RoundRobin::new())))
        .with_completion(CompleteOnResponse)
}

async fn call(balancer: &mut Balancer) -> String {
    balancer.ready().await.unwrap().call(http::Request::new(())).await.unwrap()
}

/// Waits (at most 10 s) until `done` holds; how long it took.
async fn until(mut done: impl FnMut() -> bool, what: &str) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn an_endpoint_turning_not_serving_stops_getting_traffic_and_returns_when_serving() {
    let a = HealthServer::start(ServingStatus::Serving).await;
    let b = HealthServer::start(ServingStatus::NotServing).await;
    let (publisher, source) = channel(8);
    let (source, held) = source.with_health(HealthConfig::default());
    let mut balancer = balancer(source);
    let board = balancer.board();
    publisher.insert(a.endpoint("a")).await.unwrap();
    publisher.insert(b.endpoint("b")).await.unwrap();
    let (a_id, b_id) = (EndpointId::from("a"), EndpointId::from("b"));

    // b starts NOT_SERVING: held back, not on the balancer's board.
    until(|| board.get(&a_id).is_some(), "a SERVING joins").await;
    until(|| held.snapshot().iter().any(|e| e.id == b_id), "b is held back").await;
    assert!(board.get(&b_id).is_none());
    for _ in 0..20 {
        assert_eq!(call(&mut balancer).await, "a");
    }

    // b turns SERVING: released, it takes traffic.
    b.reporter.set_service_status("", ServingStatus::Serving).await;
    let released = until(|| board.get(&b_id).is_some(), "b SERVING joins").await;
    assert!(held.snapshot().is_empty());
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(call(&mut balancer).await);
    }
    assert!(answers.iter().any(|x| x == "b") && answers.iter().any(|x| x == "a"), "{answers:?}");

    // b turns NOT_SERVING: on that one update it leaves the balancer, and gets no new request.
    b.reporter.set_service_status("", ServingStatus::NotServing).await;
    let held_back = until(|| board.get(&b_id).is_none(), "b NOT_SERVING leaves").await;
    for _ in 0..20 {
        assert_eq!(call(&mut balancer).await, "a");
    }
    assert_eq!(held.snapshot().len(), 1);

    // And back.
    b.reporter.set_service_status("", ServingStatus::Serving).await;
    until(|| board.get(&b_id).is_some(), "b SERVING again").await;
    println!("released {released:?} after SERVING; held back {held_back:?} after NOT_SERVING");

    // Removed at the source: gone, and no longer watched or held.
    publisher.remove("b").await.unwrap();
    until(|| board.get(&b_id).is_none(), "b removed").await;
    assert!(held.snapshot().is_empty());
}

#[tokio::test]
async fn an_endpoint_whose_server_dies_is_held_back() {
    let a = HealthServer::start(ServingStatus::Serving).await;
    let b = HealthServer::start(ServingStatus::Serving).await;
    let b_endpoint = b.endpoint("b");
    let (publisher, source) = channel(8);
    let config = HealthConfig { check_interval: Duration::from_millis(100), ..HealthConfig::default() };
    let (source, held) = source.with_health(config);
    let balancer = balancer(source);
    let board = balancer.board();
    publisher.replace(vec![a.endpoint("a"), b_endpoint.clone()]).await.unwrap();
    let b_id = EndpointId::from("b");
    until(|| board.len() == 2, "both join").await;
    drop(b);
    until(|| board.get(&b_id).is_none(), "b, gone, leaves").await;
    assert_eq!(held.snapshot(), vec![b_endpoint]);
}
