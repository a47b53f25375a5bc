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
