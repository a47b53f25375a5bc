//! The examples as users run them, compiled into this test from their own source.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../examples/balanced_client.rs"]
mod balanced_client;

use switchyard::worker::{self, WorkerArgs};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A fast worker on an ephemeral port; returns its bare `HOST:PORT` and its stop switch.
async fn worker() -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let args = WorkerArgs { speed: 20.0, ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, listener, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

#[tokio::test]
async fn balanced_client_takes_bare_host_port_addresses() {
    let (a, _stop_a) = worker().await;
    let (b, _stop_b) = worker().await;
    assert!(!a.contains("://"));
    let summary = balanced_client::run(vec![a, b], 40).await.unwrap();
    assert_eq!((summary.ok, summary.failed), (40, 0), "{summary:?}");
    assert!(summary.first_failure.is_none());
    let requests: u64 = summary.replicas.iter().map(|r| r.1).sum();
    assert_eq!(requests, 40, "{summary:?}");
    assert!(summary.replicas.iter().all(|r| r.2 == 0), "{summary:?}");
}

#[tokio::test]
async fn balanced_client_counts_failures_as_failures() {
    // Nothing listens on port 1.
    let summary = balanced_client::run(vec!["127.0.0.1:1".into()], 10).await.unwrap();
    assert_eq!((summary.ok, summary.failed), (0, 10), "{summary:?}");
    assert_eq!(summary.first_failure.unwrap().code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn balanced_client_refuses_a_malformed_address_by_name() {
    let err = balanced_client::run(vec!["127.0.0.1:9001 oops".into()], 1).await.unwrap_err();
    assert!(err.to_string().contains("bad replica address \"127.0.0.1:9001 oops\""), "{err}");
}

#[path = "../examples/custom_discovery.rs"]
mod custom_discovery;

/// Requests a replica served in a phase of the custom discovery example.
fn served(phase: &(&str, Vec<(String, u64)>), replica: &str) -> u64 {
    phase.1.iter().find(|(id, _)| id == replica).map_or(0, |(_, n)| *n)
}

fn check_custom_discovery(phases: &custom_discovery::Phases) {
    assert_eq!(phases.len(), 3, "{phases:?}");
    assert_eq!(served(&phases[0], "replica-0") + served(&phases[0], "replica-1"), 60, "{phases:?}");
    assert_eq!(served(&phases[0], "replica-2"), 0, "{phases:?}");
    assert!(served(&phases[1], "replica-2") > 0, "the added replica takes requests: {phases:?}");
    assert_eq!(served(&phases[2], "replica-0"), 0, "the removed replica takes none: {phases:?}");
    assert_eq!(served(&phases[2], "replica-1") + served(&phases[2], "replica-2"), 60, "{phases:?}");
}

#[tokio::test]
async fn custom_discovery_feeds_the_balancer_from_a_source_of_its_own() {
    check_custom_discovery(&custom_discovery::run(None).await.unwrap());
}

#[cfg(feature = "etcd")]
#[path = "../crates/switchyard-discovery/tests/support/etcd_server.rs"]
mod etcd_server;

#[cfg(feature = "etcd")]
#[tokio::test]
async fn custom_discovery_with_replicas_registered_in_etcd() {
    let etcd = etcd_server::EtcdServer::start().await;
    check_custom_discovery(&custom_discovery::run(Some(etcd.url())).await.unwrap());
}

#[path = "../examples/many_clients.rs"]
mod many_clients;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_spread_calls_over_every_replica_with_a_balancer_each_and_with_one_shared() {
    let options = many_clients::Options { seconds: 2.0, ..many_clients::Options::default() };
    let setups = many_clients::run(options).await.unwrap();
    let names: Vec<&str> = setups.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["8 balancers", "1 shared balancer"]);
    assert_eq!(setups[0].ok, setups[1].ok, "the same schedule in both setups: {setups:?}");
    for setup in &setups {
        assert!(setup.failed.is_empty(), "{setup:?}");
        // Poisson arrivals at 60/s for 2 s: about 120 calls, every one counted on a board.
        assert!((60..=200).contains(&setup.ok), "{setup:?}");
        assert_eq!(setup.served.values().sum::<u64>(), setup.ok, "{setup:?}");
        // Three equal replicas: each gets a real share (a third, give or take), none is left out.
        assert_eq!(setup.served.len(), 3, "{setup:?}");
        for (replica, &n) in &setup.served {
            assert!(n * 6 >= setup.ok, "{replica} got {n} of {} calls: {setup:?}", setup.ok);
        }
        assert!(setup.ttft_ms.p99 > 0.0 && setup.latency_ms.p99 >= setup.ttft_ms.p99, "{setup:?}");
    }
}
