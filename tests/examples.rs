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
