#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The load-report policy reads the replicas' ORCA trailers: it steers away from a replica whose
//! KV cache is full, and falls back to in-flight counts when the reports go stale.

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

/// A replica that answers after `delay` with a report of `kv` KV-cache utilisation in its
/// trailers, while `reporting` is on.
fn replica(name: &str, kv: f64, delay: Duration, reporting: Arc<AtomicBool>) -> Backend<Svc> {
    let service = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        let report = reporting.load(Ordering::Relaxed).then(|| ReportedLoad {
            kv_cache_utilization: kv,
            running: 4,
            capacity: 16,
            ..Default::default()
        });
        async move {
            sleep(delay).await;
            Ok::<_, BoxError>(grpc_response(b"completion", trailers(0, report.as_ref())))
        }
    }));
    Backend::new(common::endpoint(name), service)
}

/// Replicas `a`, `b`, `c` with a nearly empty KV cache and `full` with a full one.
fn cluster(delay: Duration, reporting: &Arc<AtomicBool>) -> Lb {
    let backends = [("a", 0.1), ("b", 0.1), ("c", 0.1), ("full", 1.0)]
        .map(|(name, kv)| replica(name, kv, delay, reporting.clone()));
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
async fn load_report_avoids_a_replica_with_a_full_kv_cache_under_load() {
    let reporting = Arc::new(AtomicBool::new(true));
    let mut lb = cluster(Duration::from_millis(20), &reporting);
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
    // A fair share is a quarter; the full replica gets well under half of that.
    assert!(counts["full"] * 8 < requests, "{counts:?}");
    let report = lb.board().get(&"full".into()).unwrap().load.report.expect("the full replica reported");
    assert_eq!(report.kv_cache_utilization, 1.0);
}

#[tokio::test(start_paused = true)]
async fn load_report_falls_back_to_in_flight_when_reports_are_stale() {
    let reporting = Arc::new(AtomicBool::new(true));
    let mut lb = cluster(Duration::from_millis(5), &reporting);
    warm_up(&mut lb).await;
    // Fresh reports (well within the default 1 s): the full replica is avoided.
    let fresh = sequential(&mut lb, 60).await;
    assert!(fresh["full"] * 20 <= 60, "{fresh:?}");

    // The replicas stop reporting, and what they said last goes stale.
    reporting.store(false, Ordering::Relaxed);
    advance(Duration::from_secs(2)).await;
    let stale = sequential(&mut lb, 200).await;
    assert!(stale["full"] * 10 > 200, "a stale full-cache report no longer counts: {stale:?}");
}

#[tokio::test(start_paused = true)]
async fn max_age_decides_when_a_report_is_stale() {
    let reporting = Arc::new(AtomicBool::new(true));
    let backends = [("a", 0.1), ("full", 1.0)]
        .map(|(name, kv)| replica(name, kv, Duration::from_millis(5), reporting.clone()));
    let policy = LoadReport::with_seed(3).with_max_age(Duration::from_secs(30));
    let mut lb = Balance::from_backends(backends).with_policy(PolicyHandle::new(Arc::new(policy)));
    warm_up(&mut lb).await;
    reporting.store(false, Ordering::Relaxed);
    // Ten seconds without reports is within this policy's 30 s max age: still avoided. (The
    // healthy replica's report would stay fresh by itself, so refresh neither.)
    advance(Duration::from_secs(10)).await;
    let within = sequential(&mut lb, 40).await;
    assert_eq!(within.get("full").copied().unwrap_or(0), 0, "{within:?}");
    advance(Duration::from_secs(30)).await;
    let beyond = sequential(&mut lb, 40).await;
    assert!(beyond["full"] > 4, "{beyond:?}");
}
