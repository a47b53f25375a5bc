#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The load-report policy reads the replicas' ORCA trailers: it steers away from a replica that
//! reports requests the balancer did not send (another client's queue, a full batch), and falls
//! back to its own counts when the reports go stale.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Body, Req, completed, dispatch, drain, grpc_response, in_flight, req, trailers};
use switchyard_balance::policy::LoadReport;
use switchyard_balance::{Backend, Balance, PolicyHandle};
use switchyard_core::ReportedLoad;
use tokio::time::{advance, sleep};
use tower::BoxError;
use tower::util::BoxCloneService;

type Svc = BoxCloneService<Req, http::Response<Body>, BoxError>;
type Lb = Balance<Svc, Req>;

/// A replica that answers after `delay` with `report` in its trailers, while `reporting` is on.
fn replica(name: &str, report: ReportedLoad, delay: Duration, reporting: Arc<AtomicBool>) -> Backend<Svc> {
    let service = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        let report = reporting.load(Ordering::Relaxed).then(|| report.clone());
        async move {
            sleep(delay).await;
            Ok::<_, BoxError>(grpc_response(b"completion", trailers(0, report.as_ref())))
        }
    }));
    Backend::new(common::endpoint(name), service)
}

/// What a replica that serves only this balancer reports: nothing of its own beyond that.
fn quiet() -> ReportedLoad {
    ReportedLoad { capacity: 16, ..Default::default() }
}

/// What a replica shared with another client reports: 100 of its requests waiting.
fn shared_queue() -> ReportedLoad {
    ReportedLoad { queue_depth: 100, running: 4, capacity: 16, ..Default::default() }
}

/// What a replica whose batch another client filled reports: 16 of 16 slots and 4 waiting.
fn full_batch() -> ReportedLoad {
    ReportedLoad { queue_depth: 4, running: 16, capacity: 16, ..Default::default() }
}

/// Replicas `a`, `b`, `c` that serve only this balancer and `busy`, which reports `busy`.
fn cluster(delay: Duration, busy: ReportedLoad, reporting: &Arc<AtomicBool>) -> Lb {
    let backends = [("a", quiet()), ("b", quiet()), ("c", quiet()), ("busy", busy)]
        .map(|(name, report)| replica(name, report, delay, reporting.clone()));
    Balance::from_backends(backends).with_policy(PolicyHandle::new(Arc::new(LoadReport::with_seed(3))))
}

/// Sends `n` requests one after the other, reading each response to its end.
async fn sequential(lb: &mut Lb, n: usize) -> BTreeMap<String, u64> {
    let before = completed(&lb.board());
    for _ in 0..n {
        let response = dispatch(lb, req()).await.await.unwrap();
        drain(response.into_body()).await;
    }
    completed(&lb.board())
        .into_iter()
        .map(|(id, n)| (id.clone(), n - before.get(&id).copied().unwrap_or(0)))
        .collect()
}

/// Sends requests until every replica has reported once.
async fn warm_up(lb: &mut Lb) {
    for _ in 0..200 {
        sequential(lb, 1).await;
        if lb.board().snapshot().iter().all(|e| e.load.report.is_some()) {
            return;
        }
    }
    panic!("some replica was never picked: {:?}", completed(&lb.board()));
}

#[tokio::test(start_paused = true)]
async fn load_report_avoids_a_replica_that_reports_another_clients_queue_under_load() {
    let reporting = Arc::new(AtomicBool::new(true));
    let mut lb = cluster(Duration::from_millis(20), shared_queue(), &reporting);
    let requests = 2000;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        sleep(Duration::from_millis(2)).await;
        let response = dispatch(&mut lb, req()).await;
        tasks.push(tokio::spawn(async move {
            let trailers = drain(response.await?.into_body()).await;
            trailers.ok_or_else(|| BoxError::from("no trailers"))
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let counts = completed(&lb.board());
    assert_eq!(counts.values().sum::<u64>(), requests);
    assert!(in_flight(&lb.board()).values().all(|&n| n == 0));
    // A fair share is a quarter; the shared replica gets well under half of that.
    assert!(counts["busy"] * 8 < requests, "{counts:?}");
    let report = lb.board().get(&"busy".into()).unwrap().load.report.expect("the busy replica reported");
    assert_eq!(report.queue_depth, 100);
}

#[tokio::test(start_paused = true)]
async fn load_report_falls_back_to_its_own_counts_when_reports_are_stale() {
    let reporting = Arc::new(AtomicBool::new(true));
    let mut lb = cluster(Duration::from_millis(5), shared_queue(), &reporting);
    warm_up(&mut lb).await;
    // Fresh reports (well within the default 1 s): the shared replica is avoided.
    let fresh = sequential(&mut lb, 60).await;
    assert!(fresh.get("busy").copied().unwrap_or(0) * 20 <= 60, "{fresh:?}");

    // The replicas stop reporting, and what they said last goes stale.
    reporting.store(false, Ordering::Relaxed);
    advance(Duration::from_secs(2)).await;
    let stale = sequential(&mut lb, 200).await;
    assert!(stale["busy"] * 10 > 200, "a stale report no longer counts: {stale:?}");
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_avoided_until_max_age() {
    let reporting = Arc::new(AtomicBool::new(true));
    let backends = [("a", quiet()), ("busy", full_batch())]
        .map(|(name, report)| replica(name, report, Duration::from_millis(5), reporting.clone()));
    let policy = LoadReport::with_seed(3).with_max_age(Duration::from_secs(30));
    let mut lb = Balance::from_backends(backends).with_policy(PolicyHandle::new(Arc::new(policy)));
    warm_up(&mut lb).await;
    reporting.store(false, Ordering::Relaxed);
    // Ten seconds without reports is within this policy's 30 s max age: a batch the balancer
    // did not fill is still taken to be full, so the replica is avoided.
    advance(Duration::from_secs(10)).await;
    let within = sequential(&mut lb, 40).await;
    assert_eq!(within.get("busy").copied().unwrap_or(0), 0, "{within:?}");
    advance(Duration::from_secs(30)).await;
    let beyond = sequential(&mut lb, 40).await;
    assert!(beyond["busy"] > 4, "{beyond:?}");
}
