#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Per-endpoint limits under concurrent load: never exceeded, the limit on the board, and
//! requests waiting (not failing) while every endpoint is full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use switchyard_balance::{Backend, Balance, CompleteOnResponse, EndpointLimit, LoadBoard, Shared};
use switchyard_core::{Endpoint, EndpointId};
use switchyard_limit::{Aimd, AimdParams, Fixed};
use tower::ServiceExt;

type EndpointService = tower::util::BoxCloneSyncService<http::Request<()>, u32, tower::BoxError>;
type Pool = Balance<EndpointService, http::Request<()>, CompleteOnResponse>;

/// Three endpoints that take 1 to 20 ms a request; each records the most requests it ever had at
/// once (and checks that its state on the board carries a limit).
fn pool(limit: EndpointLimit) -> (Shared<Pool>, LoadBoard, Vec<Arc<AtomicU32>>) {
    let board = LoadBoard::new();
    let peaks: Vec<Arc<AtomicU32>> = (0..3).map(|_| Arc::default()).collect();
    let backends = (0..3u32).map(|i| {
        let now = Arc::new(AtomicU32::new(0));
        let peak = peaks[i as usize].clone();
        let board = board.clone();
        let service = tower::service_fn(move |_req: http::Request<()>| {
            let (now, peak, board) = (now.clone(), peak.clone(), board.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                let state = board.state(&EndpointId::new(format!("e{i}"))).expect("on the board");
                let ms = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(u64::from(n) + u64::from(i))
                    .random_range(1..20);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                assert!(state.limit().is_some());
                Ok::<_, tower::BoxError>(i)
            }
        });
        Backend::new(
            Endpoint::new(format!("e{i}"), format!("http://10.0.0.{i}:9001")),
            tower::util::BoxCloneSyncService::new(service),
        )
    });
    let balancer = Balance::from_backends(backends)
        .with_board(board.clone())
        .with_completion(CompleteOnResponse)
        .with_endpoint_limit(limit);
    (Shared::new(balancer), board, peaks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_per_endpoint_limits_are_never_exceeded_and_excess_requests_wait() {
    let (balancer, board, peaks) = pool(EndpointLimit::new(|| Box::new(Fixed::new(2))));
    let calls: Vec<_> =
        (0..200).map(|_| tokio::spawn(balancer.clone().oneshot(http::Request::new(())))).collect();
    for call in calls {
        call.await.unwrap().expect("every request waits its turn and is served");
    }
    for (i, peak) in peaks.iter().enumerate() {
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "endpoint e{i} had {peak} at once");
    }
    let snapshot = board.snapshot();
    assert!(snapshot.iter().all(|e| e.load.limit == Some(2) && e.load.in_flight == 0), "{snapshot:?}");
    assert_eq!(snapshot.iter().map(|e| e.load.completed).sum::<u64>(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_per_endpoint_limits_stay_within_their_bounds_under_load() {
    // Netflix's AIMD: grows with every used success (the default's relative RTT threshold would
    // read the real clock's jitter between these instant calls as queueing).
    let limit = EndpointLimit::new(|| {
        Box::new(Aimd::new(AimdParams {
            initial_limit: 2,
            min_limit: 1,
            max_limit: 4,
            ..AimdParams::netflix()
        }))
    });
    let (balancer, board, peaks) = pool(limit);
    let calls: Vec<_> =
        (0..300).map(|_| tokio::spawn(balancer.clone().oneshot(http::Request::new(())))).collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    for (i, peak) in peaks.iter().enumerate() {
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 4, "endpoint e{i} had {peak} at once, above AIMD's maximum");
    }
    let snapshot = board.snapshot();
    assert!(snapshot.iter().all(|e| e.load.limit.is_some_and(|l| (1..=4).contains(&l))), "{snapshot:?}");
    assert!(snapshot.iter().any(|e| e.load.limit > Some(2)), "AIMD grew under load: {snapshot:?}");
}
