//! A removed endpoint with requests in flight: they all finish, and it gets no new one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_balance::{Backend, Balance, CompleteOnResponse, PolicyHandle, PolicyKind};
use switchyard_core::{Endpoint, EndpointId};
use switchyard_discovery::channel;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

#[tokio::test]
async fn removal_with_requests_in_flight_fails_none() {
    // Each endpoint answers with its id once the gate lets it.
    let gate = Arc::new(Semaphore::new(0));
    let (publisher, source) = channel(8);
    let backends = source.map({
        let gate = gate.clone();
        move |change| {
            let gate = gate.clone();
            change.map(move |change| match change {
                tower::discover::Change::Insert(id, endpoint) => {
                    let name = id.to_string();
                    let service = tower::util::BoxCloneSyncService::new(tower::service_fn(
                        move |_: http::Request<()>| {
                            let (name, gate) = (name.clone(), gate.clone());
                            async move {
                                gate.acquire().await.unwrap().forget();
                                Ok::<_, Infallible>(name)
                            }
                        },
                    ));
                    tower::discover::Change::Insert(id, Backend::new(endpoint, service))
                }
                tower::discover::Change::Remove(id) => tower::discover::Change::Remove(id),
            })
        }
    });
    let mut balancer = Balance::new(backends)
        .with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0))
        .with_completion(CompleteOnResponse);
    let board = balancer.board();
    publisher.insert(Endpoint::new("a", "http://10.0.0.1:1")).await.unwrap();
    publisher.insert(Endpoint::new("b", "http://10.0.0.2:1")).await.unwrap();
    let (a, b) = (EndpointId::from("a"), EndpointId::from("b"));
    while board.len() < 2 {
        tokio::task::yield_now().await;
    }

    // Twenty requests in flight, half on each.
    let mut in_flight = Vec::new();
    for _ in 0..20 {
        let call = balancer.ready().await.unwrap().call(http::Request::new(()));
        in_flight.push(tokio::spawn(call));
    }
    assert_eq!(board.get(&a).unwrap().load.in_flight, 10);

    // a is removed: it drains (stays on the board with its ten requests) and gets no new one.
    publisher.remove("a").await.unwrap();
    while !board.get(&a).unwrap().draining {
        tokio::task::yield_now().await;
    }
    let mut after = Vec::new();
    for _ in 0..10 {
        let call = balancer.ready().await.unwrap().call(http::Request::new(()));
        after.push(tokio::spawn(call));
    }
    assert_eq!(board.get(&a).unwrap().load.in_flight, 10, "no new request on the removed endpoint");
    assert_eq!(board.get(&b).unwrap().load.in_flight, 20);

    // Everything finishes, none fails; a leaves the board with its last request.
    gate.add_permits(30);
    let answers: Vec<String> =
        futures::future::join_all(in_flight).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(answers.iter().filter(|x| *x == "a").count(), 10);
    for call in after {
        assert_eq!(call.await.unwrap().unwrap(), "b");
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while board.get(&a).is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the drained endpoint leaves the board");
}

/// A gRPC server with the health service whose `Check` calls wait for a permit of `gate` (each
/// tells `arrived` first), on a loopback port, on a runtime of its own.
fn gated_health_server(
    gate: Arc<Semaphore>,
    arrived: tokio::sync::mpsc::Sender<()>,
) -> (std::net::SocketAddr, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .layer(tower::layer::layer_fn(move |inner| GatedChecks {
                    inner,
                    gate: gate.clone(),
                    arrived: arrived.clone(),
                }))
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        })
    });
    (addr, reporter)
}

#[derive(Clone)]
struct GatedChecks<S> {
    inner: S,
    gate: Arc<Semaphore>,
    arrived: tokio::sync::mpsc::Sender<()>,
}

impl<S, B> Service<http::Request<B>> for GatedChecks<S>
where
    S: Service<http::Request<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let gated = req.uri().path().ends_with("/Check");
        let (gate, arrived) = (self.gate.clone(), self.arrived.clone());
        let answer = self.inner.call(req);
        Box::pin(async move {
            if gated {
                arrived.send(()).await.unwrap();
                gate.acquire().await.unwrap().forget();
            }
            answer.await
        })
    }
}

/// Over real loopback gRPC: a server-streaming call (a health `Watch`, which never ends by
/// itself) on an endpoint the source removes is cut once the connector's drain timeout has
/// passed, and its connection closes; a short call in flight at the removal still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_removed_endpoint_is_cut_after_the_drain_timeout_and_its_connection_closes() {
    use switchyard_discovery::Connector;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    const DRAIN: Duration = Duration::from_millis(300);
    let gate = Arc::new(Semaphore::new(0));
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(4);
    let (addr, reporter) = gated_health_server(gate.clone(), arrived_tx);
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let (publisher, source) = channel(8);
    let connector = Connector { drain_timeout: DRAIN, ..Connector::default() };
    let mut changes = Box::pin(connector.connect(source));
    publisher.insert(Endpoint::new("a", format!("http://{addr}"))).await.unwrap();
    let Some(Ok(tower::discover::Change::Insert(_, connected))) = changes.next().await else {
        panic!("the endpoint is inserted")
    };
    let drain = connected.drain.clone();
    let mut client = HealthClient::new(connected.channel.clone());
    let mut watch = client.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1, "SERVING");
    let short = tokio::spawn({
        let mut client = client.clone();
        async move { client.check(HealthCheckRequest { service: String::new() }).await }
    });
    arrived.recv().await.unwrap();
    assert_eq!(drain.open_connections(), 1, "one connection, shared by both calls");

    publisher.remove("a").await.unwrap();
    assert!(matches!(changes.next().await, Some(Ok(tower::discover::Change::Remove(_)))));
    let removed = std::time::Instant::now();
    assert!(drain.is_retired());
    // The short call in flight at the removal is answered.
    gate.add_permits(1);
    assert_eq!(short.await.unwrap().unwrap().into_inner().status, 1);

    // The stream is cut once the drain timeout has passed, with an error that says why.
    let status = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the stream ends")
        .expect_err("the stream is cut, not ended by the server");
    let cut_after = removed.elapsed();
    println!("stream cut {cut_after:?} after the removal (drain timeout {DRAIN:?}): {status:?}");
    assert!(cut_after >= DRAIN, "not cut before the drain timeout: {cut_after:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("drain timeout"), "{status:?}");

    // Its connection (and the task that ran it) is gone.
    tokio::time::timeout(Duration::from_secs(10), async {
        while drain.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the removed endpoint's connection closes");
}
