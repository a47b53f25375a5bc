#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shed queue over a balancer with a limit per endpoint: while every endpoint is at its limit,
//! requests wait in the shed queue (by priority), not inside the balancer.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_balance::{Backend, Balance, CompleteOnResponse, EndpointLimit, Shared};
use switchyard_core::{Endpoint, Priority};
use switchyard_limit::Fixed;
use switchyard_shed::{ShedConfig, ShedLayer};
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn requests_wait_in_the_shed_queue_while_every_endpoint_is_at_its_limit() {
    let served: Arc<Mutex<Vec<Priority>>> = Arc::default();
    let record = served.clone();
    let backends = (0..2).map(|i| {
        let record = record.clone();
        let service = tower::service_fn(move |req: http::Request<()>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(req.extensions().get::<Priority>().copied().unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Infallible>(())
            }
        });
        Backend::new(Endpoint::new(format!("e{i}"), format!("http://10.0.0.{i}:9001")), service)
    });
    let balancer = Balance::from_backends(backends)
        .with_completion(CompleteOnResponse)
        .with_endpoint_limit(EndpointLimit::new(|| Box::new(Fixed::new(1))));
    let board = balancer.board();
    let shed = ShedLayer::new(ShedConfig::default());
    let service = shed.layer(Shared::new(balancer));

    let request = |priority| {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(priority);
        req
    };
    let mut calls = Vec::new();
    for priority in [Priority::Standard, Priority::Standard] {
        calls.push(tokio::spawn(service.clone().oneshot(request(priority))));
    }
    tokio::task::yield_now().await;
    for priority in [Priority::Sheddable, Priority::Standard, Priority::Critical] {
        calls.push(tokio::spawn(service.clone().oneshot(request(priority))));
        tokio::task::yield_now().await;
    }
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    assert_eq!(shed.stats().waiting, 3, "both endpoints full: the rest wait in the shed queue");
    assert!(board.snapshot().iter().all(|e| e.load.in_flight == 1 && e.load.limit == Some(1)));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let order = served.lock().unwrap().clone();
    assert_eq!(
        order,
        [Priority::Standard, Priority::Standard, Priority::Critical, Priority::Standard, Priority::Sheddable],
        "dispatched by priority as endpoints free up"
    );
}
