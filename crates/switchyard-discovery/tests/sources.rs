//! Each source's snapshot-then-differences behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::Endpoint;
use switchyard_discovery::{DiscoveryError, EndpointChange, Source, channel};

/// `+id@address` for an insert, `-id` for a removal.
fn describe(change: &EndpointChange) -> String {
    match change {
        EndpointChange::Insert(id, e) => format!("+{id}@{}", e.address),
        EndpointChange::Remove(id) => format!("-{id}"),
    }
}

/// The next `n` items of `source`, failing the test if they do not come within 10 s.
async fn next(source: &mut Source, n: usize) -> Vec<Result<String, DiscoveryError>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(10), source.next())
            .await
            .expect("the source announces a change within 10 s")
            .expect("the source does not end");
        out.push(item.map(|c| describe(&c)));
    }
    out
}

fn ok(items: Vec<Result<String, DiscoveryError>>) -> Vec<String> {
    items.into_iter().map(|i| i.expect("a change, not an error")).collect()
}

/// Nothing more within a short while (the source has said all it has to say).
async fn quiet(source: &mut Source) {
    let more = tokio::time::timeout(Duration::from_millis(200), source.next()).await;
    assert!(more.is_err(), "unexpected item: {:?}", more.map(|i| i.map(|i| i.map(|c| describe(&c)))));
}

#[tokio::test]
async fn static_source_inserts_each_once_then_ends() {
    let a = Endpoint::new("a", "http://10.0.0.1:1");
    let b = Endpoint::new("b", "http://10.0.0.2:1");
    let source = Source::fixed([a.clone(), b, a.with_weight(2)]);
    let changes: Vec<_> = source.map(|c| c.map(|c| describe(&c)).unwrap()).collect().await;
    assert_eq!(changes, ["+a@http://10.0.0.1:1", "+b@http://10.0.0.2:1"]);
}

#[tokio::test]
async fn channel_source_announces_differences_only() {
    let (publisher, mut source) = channel(4);
    let a = Endpoint::new("a", "http://10.0.0.1:1");
    let b = Endpoint::new("b", "http://10.0.0.2:1");
    publisher.replace(vec![a.clone(), b.clone()]).await.unwrap();
    assert_eq!(ok(next(&mut source, 2).await), ["+a@http://10.0.0.1:1", "+b@http://10.0.0.2:1"]);
    publisher.insert(a.clone()).await.unwrap(); // unchanged: nothing
    publisher.remove("nobody").await.unwrap(); // unknown: nothing
    publisher.insert(Endpoint::new("a", "http://10.0.0.9:1")).await.unwrap();
    assert_eq!(ok(next(&mut source, 1).await), ["+a@http://10.0.0.9:1"]);
    publisher.replace(vec![b.clone()]).await.unwrap();
    assert_eq!(ok(next(&mut source, 1).await), ["-a"]);
    quiet(&mut source).await;
    drop(publisher);
    assert!(source.next().await.is_none(), "the source ends with its publishers");
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn file_source_reloads_and_keeps_the_last_good_set_over_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.toml");
    write_atomically(
        &path,
        "[[endpoints]]\naddress = \"10.0.0.1:1\"\n[[endpoints]]\naddress = \"10.0.0.2:1\"\n",
    );
    let mut source = Source::file(&path).unwrap();
    assert_eq!(
        ok(next(&mut source, 2).await),
        ["+10.0.0.1:1@http://10.0.0.1:1", "+10.0.0.2:1@http://10.0.0.2:1"]
    );

    // One removed, one added, one unchanged.
    write_atomically(
        &path,
        "[[endpoints]]\naddress = \"10.0.0.2:1\"\n[[endpoints]]\naddress = \"10.0.0.3:1\"\n",
    );
    assert_eq!(ok(next(&mut source, 2).await), ["-10.0.0.1:1", "+10.0.0.3:1@http://10.0.0.3:1"]);

    // Broken on line 3: an error naming the line, and no change.
    write_atomically(&path, "[[endpoints]]\naddress = \"10.0.0.2:1\"\nweight = \"heavy\"\n");
    let error = next(&mut source, 1).await.remove(0).unwrap_err();
    assert!(matches!(error, DiscoveryError::File { line: Some(3), .. }), "{error}");
    assert!(error.to_string().contains("line 3"), "{error}");
    quiet(&mut source).await;

    // Fixed, with one more: only the difference from the last good set.
    write_atomically(
        &path,
        "[[endpoints]]\naddress = \"10.0.0.2:1\"\n[[endpoints]]\naddress = \"10.0.0.3:1\"\n[[endpoints]]\naddress = \"10.0.0.4:1\"\n",
    );
    assert_eq!(ok(next(&mut source, 1).await), ["+10.0.0.4:1@http://10.0.0.4:1"]);

    // Written in place (not renamed) too.
    std::fs::write(&path, "[[endpoints]]\naddress = \"10.0.0.4:1\"\n").unwrap();
    assert_eq!(ok(next(&mut source, 2).await), ["-10.0.0.2:1", "-10.0.0.3:1"]);
    quiet(&mut source).await;
}

#[tokio::test]
async fn file_source_reads_json_and_waits_for_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.json");
    let mut source = Source::file(&path).unwrap();
    let error = next(&mut source, 1).await.remove(0).unwrap_err();
    assert!(error.to_string().contains("cannot read"), "{error}");
    write_atomically(&path, r#"{"endpoints": [{"id": "a", "address": "http://10.0.0.1:1"}]}"#);
    assert_eq!(ok(next(&mut source, 1).await), ["+a@http://10.0.0.1:1"]);
}
