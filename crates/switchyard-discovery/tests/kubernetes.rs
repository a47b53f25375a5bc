//! The EndpointSlice watcher against kube's mock service (`tower_test::mock`, as kube's own tests
//! do): no API server runs here, so the mock answers the watcher's list and watch requests with
//! hand-written EndpointSlice responses in the API server's wire format (`tests/fixtures/k8s/`:
//! a list, then watches of MODIFIED, DELETED, ADDED and BOOKMARK events; see the `kubernetes`
//! module's documentation for what they are and what they leave out).
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use kube::client::Body;
use switchyard_discovery::kubernetes::KubernetesTarget;
use switchyard_discovery::{EndpointChange, Source};

const LIST: &str = include_str!("fixtures/k8s/list.json");
const WATCH_1: &str = include_str!("fixtures/k8s/watch-1.jsonl");
const WATCH_2: &str = include_str!("fixtures/k8s/watch-2.jsonl");

fn describe(change: &EndpointChange) -> String {
    match change {
        EndpointChange::Insert(id, e) => {
            format!("+{id}{}", e.labels.get("pod").map(|p| format!(" {p}")).unwrap_or_default())
        }
        EndpointChange::Remove(id) => format!("-{id}"),
    }
}

async fn changes(source: &mut Source, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(10), source.next())
            .await
            .expect("a change within 10 s")
            .expect("the source does not end");
        out.push(describe(&item.expect("a change, not an error")));
    }
    out.sort();
    out
}

#[tokio::test]
async fn endpoint_slice_conditions_ready_serving_and_terminating_are_honoured() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (uris_tx, mut uris) = tokio::sync::mpsc::unbounded_channel::<String>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let mut held = Vec::new();
        for answer in [LIST, WATCH_1, WATCH_2].into_iter().map(Some).chain(std::iter::repeat(None)) {
            let Some((request, send)) = handle.next_request().await else { return };
            uris_tx.send(request.uri().to_string()).unwrap();
            match answer {
                Some(body) => send.send_response(Response::new(Body::from(body.as_bytes().to_vec()))),
                // Later watches wait, as an API server with nothing new to say does.
                None => held.push(send),
            }
        }
    });
    let client = kube::Client::new(mock, "default");
    let target =
        KubernetesTarget { namespace: "serving".into(), service: "llm".into(), port: Some("grpc".into()) };
    let mut source = Source::kubernetes_with_client(client, target);

    // The list: ready endpoints (conditions unset mean ready); the one not ready is held out.
    assert_eq!(
        changes(&mut source, 3).await,
        [
            "+10.1.0.1:9001 llm-7d9f8c6b5-aaaaa",
            "+10.1.0.2:9001 llm-7d9f8c6b5-bbbbb",
            "+10.1.0.4:9001 llm-7d9f8c6b5-ddddd"
        ]
    );
    let list = tokio::time::timeout(Duration::from_secs(10), uris.recv())
        .await
        .expect("a request within 10 s")
        .unwrap();
    assert!(list.starts_with("/apis/discovery.k8s.io/v1/namespaces/serving/endpointslices?"), "{list}");
    assert!(list.contains("labelSelector=kubernetes.io%2Fservice-name%3Dllm"), "{list}");

    // A pod starts terminating (still serving): it drains; the one not ready becomes ready.
    assert_eq!(changes(&mut source, 2).await, ["+10.1.0.3:9001 llm-7d9f8c6b5-ccccc", "-10.1.0.2:9001"]);
    let watch = tokio::time::timeout(Duration::from_secs(10), uris.recv())
        .await
        .expect("a request within 10 s")
        .unwrap();
    assert!(watch.contains("watch=true") && watch.contains("resourceVersion=1000417"), "{watch}");
    assert!(watch.contains("allowWatchBookmarks=true"), "{watch}");

    // A slice deleted, an IPv6 slice added.
    assert_eq!(changes(&mut source, 1).await, ["-10.1.0.4:9001"]);
    assert_eq!(changes(&mut source, 1).await, ["+[fd00::5]:9001 llm-7d9f8c6b5-eeeee"]);
    // The first watch ended (as the server ends one at its timeoutSeconds) after a bookmark: the
    // next one starts from the bookmark's version, and so does the one after.
    let watch = tokio::time::timeout(Duration::from_secs(10), uris.recv())
        .await
        .expect("a request within 10 s")
        .unwrap();
    assert!(watch.contains("resourceVersion=1000450"), "{watch}");
    // (The watcher asks only while the source is polled; nothing more is to come.)
    let watch = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            uri = uris.recv() => uri.unwrap(),
            item = source.next() => panic!("no change expected: {:?}", item.map(|i| i.map(|c| describe(&c)))),
        }
    })
    .await
    .expect("a request within 10 s");
    assert!(watch.contains("resourceVersion=1000488"), "{watch}");

    drop(source);
    server.abort();
}

#[tokio::test]
async fn a_slice_with_several_ports_and_none_named_gives_no_endpoints() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let mut held = Vec::new();
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Body::from(LIST.as_bytes().to_vec())));
        while let Some((_, send)) = handle.next_request().await {
            held.push(send);
        }
    });
    let client = kube::Client::new(mock, "default");
    let target = KubernetesTarget { namespace: "serving".into(), service: "llm".into(), port: None };
    let mut source = Source::kubernetes_with_client(client, target);
    // Both fixture slices name two ports: without `port`, which one is meant is unknown.
    let item = tokio::time::timeout(Duration::from_millis(500), source.next()).await;
    assert!(item.is_err(), "no change expected: {:?}", item.map(|i| i.map(|c| c.map(|c| describe(&c)))));
    server.abort();
}
