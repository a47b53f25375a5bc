//! The etcd source and registration against the real `etcd` server, started by the test on
//! loopback ports (scripts/install-test-deps.sh installs it).
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support {
    pub(crate) mod etcd_server;
}

use std::time::Duration;

use futures::StreamExt;
use support::etcd_server::EtcdServer;
use switchyard_core::Endpoint;
use switchyard_discovery::etcd::Registration;
use switchyard_discovery::{DiscoveryError, EndpointChange, Source};

fn describe(change: &EndpointChange) -> String {
    match change {
        EndpointChange::Insert(id, e) => format!("+{id}@{}", e.address),
        EndpointChange::Remove(id) => format!("-{id}"),
    }
}

async fn next(source: &mut Source) -> Result<String, DiscoveryError> {
    tokio::time::timeout(Duration::from_secs(30), source.next())
        .await
        .expect("the source announces something within 30 s")
        .expect("the source does not end")
        .map(|c| describe(&c))
}

async fn changes(source: &mut Source, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next(source).await.expect("a change, not an error"));
    }
    out
}

async fn quiet(source: &mut Source) {
    let more = tokio::time::timeout(Duration::from_millis(500), source.next()).await;
    assert!(more.is_err(), "unexpected item: {:?}", more.map(|i| i.map(|i| i.map(|c| describe(&c)))));
}

fn value(address: &str) -> String {
    format!(r#"{{"address": "{address}"}}"#)
}

#[tokio::test]
async fn etcd_source_announces_a_snapshot_then_differences() {
    let etcd = EtcdServer::start().await;
    let mut client = etcd.client().await;
    client.put("/pool/a", value("http://10.0.0.1:1"), None).await.unwrap();
    client.put("/pool/b", value("http://10.0.0.2:1"), None).await.unwrap();
    client.put("/other/x", value("http://10.0.0.9:1"), None).await.unwrap();
    let mut source = Source::etcd(vec![etcd.url()], "/pool/");
    assert_eq!(changes(&mut source, 2).await, ["+a@http://10.0.0.1:1", "+b@http://10.0.0.2:1"]);

    client.put("/pool/a", value("http://10.0.0.1:1"), None).await.unwrap(); // unchanged
    client.put("/pool/c", r#"{"id": "gpu-c", "address": "10.0.0.3:1", "weight": 2}"#, None).await.unwrap();
    assert_eq!(changes(&mut source, 1).await, ["+gpu-c@http://10.0.0.3:1"]);
    client.delete("/pool/b", None).await.unwrap();
    assert_eq!(changes(&mut source, 1).await, ["-b"]);
    client.put("/pool/d", "not json", None).await.unwrap();
    let error = next(&mut source).await.unwrap_err();
    assert!(error.to_string().contains("/pool/d") && error.to_string().contains("JSON"), "{error}");
    quiet(&mut source).await;
}

#[tokio::test]
async fn etcd_restart_mid_watch_misses_and_repeats_no_change() {
    let mut etcd = EtcdServer::start().await;
    let mut client = etcd.client().await;
    client.put("/pool/a", value("http://10.0.0.1:1"), None).await.unwrap();
    let mut source = Source::etcd(vec![etcd.url()], "/pool/");
    assert_eq!(changes(&mut source, 1).await, ["+a@http://10.0.0.1:1"]);

    for round in 0..2 {
        // etcd dies mid-watch: the source reports it once and keeps what it had.
        etcd.kill();
        let error = next(&mut source).await.unwrap_err();
        assert!(matches!(error, DiscoveryError::Backend { .. }), "{error}");
        // It comes back with its data; changes are written before the source has reconnected.
        etcd.resume().await;
        let mut client = etcd.client().await;
        let b = format!("/pool/b{round}");
        client.put(b.as_str(), value("http://10.0.0.2:1"), None).await.unwrap();
        client.put("/pool/a", value(&format!("http://10.0.0.1:{}", round + 2)), None).await.unwrap();
        client.put(b.as_str(), value("http://10.0.0.3:1"), None).await.unwrap();
        // Each update exactly once, in order, and nothing already announced again.
        assert_eq!(
            changes(&mut source, 3).await,
            [
                format!("+b{round}@http://10.0.0.2:1"),
                format!("+a@http://10.0.0.1:{}", round + 2),
                format!("+b{round}@http://10.0.0.3:1"),
            ]
        );
        quiet(&mut source).await;
    }
}

#[tokio::test]
async fn etcd_source_reads_a_new_snapshot_when_its_revision_was_compacted() {
    let mut etcd = EtcdServer::start().await;
    let mut client = etcd.client().await;
    client.put("/pool/a", value("http://10.0.0.1:1"), None).await.unwrap();
    client.put("/pool/b", value("http://10.0.0.2:1"), None).await.unwrap();
    let mut source = Source::etcd(vec![etcd.url()], "/pool/");
    assert_eq!(changes(&mut source, 2).await, ["+a@http://10.0.0.1:1", "+b@http://10.0.0.2:1"]);
    etcd.kill();
    assert!(next(&mut source).await.is_err());
    etcd.resume().await;
    let mut client = etcd.client().await;
    client.delete("/pool/a", None).await.unwrap();
    client.put("/pool/c", value("http://10.0.0.3:1"), None).await.unwrap();
    client.delete("/pool/c", None).await.unwrap();
    let last = client.put("/pool/d", value("http://10.0.0.4:1"), None).await.unwrap();
    let revision = last.header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    // The resumed watch finds its revision compacted: a new snapshot, and only its difference.
    let mut got = changes(&mut source, 2).await;
    got.sort();
    assert_eq!(got, ["+d@http://10.0.0.4:1", "-a"]);
    quiet(&mut source).await;
}

#[tokio::test]
async fn a_registration_expires_when_its_replica_dies_and_deregisters_at_once() {
    let mut etcd = EtcdServer::start().await;
    let mut source = Source::etcd(vec![etcd.url()], "/replicas/");
    let endpoint = Endpoint::new("r1", "http://10.0.0.1:9001");
    let registration =
        Registration::register(vec![etcd.url()], "/replicas/", &endpoint, Duration::from_secs(2))
            .await
            .unwrap();
    assert_eq!(registration.key(), "/replicas/r1");
    assert_eq!(changes(&mut source, 1).await, ["+r1@http://10.0.0.1:9001"]);

    // Kept alive past several TTLs, across an etcd restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.kill();
    assert!(next(&mut source).await.is_err());
    etcd.resume().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    quiet(&mut source).await;

    // The replica dies (its keep-alives stop): the key goes when the lease runs out.
    let died = tokio::time::Instant::now();
    drop(registration);
    assert_eq!(changes(&mut source, 1).await, ["-r1"]);
    let gone_after = died.elapsed();
    assert!(gone_after >= Duration::from_secs(1), "removed only once the lease ran out: {gone_after:?}");

    // A clean stop removes it at once.
    let endpoint = Endpoint::new("r2", "http://10.0.0.2:9001");
    let registration =
        Registration::register(vec![etcd.url()], "/replicas/", &endpoint, Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(changes(&mut source, 1).await, ["+r2@http://10.0.0.2:9001"]);
    registration.deregister().await.unwrap();
    assert_eq!(changes(&mut source, 1).await, ["-r2"]);
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_the_source_and_a_registration_work_and_a_wrong_ca_is_refused() {
    let etcd = EtcdServer::start_tls().await;
    let tls = etcd.tls().clone();
    // A registration and the source, both over TLS with the client certificate.
    let endpoint = Endpoint::new("gpu-a", "http://10.0.0.1:1");
    let registration = Registration::register_with_tls(
        vec![etcd.url()],
        "/pool/",
        &endpoint,
        Duration::from_secs(5),
        Some(tls.client()),
    )
    .await
    .unwrap();
    let mut source = Source::etcd_with_tls(vec![etcd.url()], "/pool/", Some(tls.client()));
    assert_eq!(changes(&mut source, 1).await, ["+gpu-a@http://10.0.0.1:1"]);
    registration.deregister().await.unwrap();
    assert_eq!(changes(&mut source, 1).await, ["-gpu-a"]);

    // The same server, trusted through another CA: refused, an error item saying why.
    let wrong = switchyard_discovery::etcd::EtcdTls::from_files(
        &tls.other_ca,
        Some((&tls.client_cert, &tls.client_key)),
        None,
    )
    .unwrap();
    let mut source = Source::etcd_with_tls(vec![etcd.url()], "/pool/", Some(wrong));
    let error = next(&mut source).await.unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    // Without a client certificate: refused too (`--client-cert-auth`).
    let anonymous = switchyard_discovery::etcd::EtcdTls::from_files(&tls.ca, None, None).unwrap();
    let mut source = Source::etcd_with_tls(vec![etcd.url()], "/pool/", Some(anonymous));
    assert!(next(&mut source).await.is_err());
    // Plain HTTP/2 to the TLS port: no answer it can read.
    let plain = format!("http://{}", etcd.url().trim_start_matches("https://"));
    let mut source = Source::etcd(vec![plain], "/pool/");
    assert!(next(&mut source).await.is_err());
}

#[test]
fn a_tls_file_that_cannot_be_read_is_named() {
    let error = switchyard_discovery::etcd::EtcdTls::from_files("/nonexistent/ca.pem".as_ref(), None, None)
        .unwrap_err();
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");
}
