//! `switchyard cluster` autoscales by default: a short run over real worker processes grows the
//! pool from its minimum on the trace's load and shrinks it again (draining), and fails no
//! request on the way.

mod common;

use switchyard::cluster::ClusterReport;
use tokio::process::Command;

#[tokio::test]
async fn the_autoscaled_cluster_grows_and_shrinks_its_pool_and_fails_no_request() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-autoscale");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(common::BIN)
        // Ten seconds of a stretch replayed at 0.3 (a light load, for the debug build's workers).
        .args(["cluster", "--duration", "10", "--time-scale", "0.3", "--max-replicas", "4"])
        .args(["--cold-start", "300ms", "--out"])
        .arg(&dir)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("autoscaled (llm-aware) between 1 and 4 replicas"), "{stdout}");
    let report: ClusterReport =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap()).unwrap();
    let loadgen = &report.loadgen;
    assert!(loadgen.requests > 50, "{loadgen:?}");
    assert_eq!(loadgen.ok, loadgen.requests, "a request failed while the pool scaled: {loadgen:?}");
    assert!(loadgen.errors.is_empty() && loadgen.dropped == 0, "{loadgen:?}");

    let scaling = report.scaling.as_ref().expect("an autoscaled run reports its scaling");
    let timeline = &scaling.timeline;
    assert_eq!(timeline.first().map(|p| p.ready), Some(1), "the pool starts at its minimum");
    assert!(scaling.scale_ups >= 1 && scaling.ready_max >= 2, "the pool did not grow: {scaling:?}");
    assert!(scaling.ready_max <= 4 && scaling.desired_max <= 4, "beyond --max-replicas: {scaling:?}");
    // It shrank while the load ran: a scale-down decision, and fewer ready after the most.
    let peak = timeline.iter().position(|p| p.ready == scaling.ready_max).unwrap();
    assert!(scaling.scale_downs >= 1, "the pool did not shrink: {timeline:?}");
    assert!(
        timeline[peak..].iter().any(|p| p.desired < scaling.ready_max),
        "no scale-down after the peak: {timeline:?}"
    );
    assert!(scaling.replica_seconds > 0.0 && scaling.replica_seconds >= scaling.ready_replica_seconds);
    // The requests the gateway's board showed (sampled once a second: a drained replica's last
    // second may be missing), spread over the replicas the autoscaler started.
    let completed: u64 = report.replicas.iter().map(|r| r.completed).sum();
    assert!(completed <= loadgen.ok && completed > 0, "{:?}", report.replicas);
    assert!(report.replicas.iter().filter(|r| r.completed > 0).count() >= 2, "{:?}", report.replicas);
    assert!(report.replicas.iter().all(|r| r.failed == 0), "{:?}", report.replicas);
    // Each replica that served has its prompt tokens and prefix-cache hit rate from its worker's
    // /metrics, stopped replicas included (their last reading before they drained).
    for r in report.replicas.iter().filter(|r| r.completed > 0) {
        assert!(r.prompt_tokens > 0, "no prompt tokens read for {r:?}");
        assert!(r.cached_prompt_tokens <= r.prompt_tokens, "{r:?}");
        assert!((0.0..=1.0).contains(&r.prefix_hit_rate), "{r:?}");
    }
    let (cached, prompt) =
        report.replicas.iter().fold((0, 0), |(c, p), r| (c + r.cached_prompt_tokens, p + r.prompt_tokens));
    assert!((report.prefix_hit_rate - cached as f64 / prompt as f64).abs() < 1e-9, "{report:?}");
    // The set-up line quotes the bounds and the load against one replica.
    assert!(stdout.contains("cluster: autoscaled 1..4 replicas"), "{stdout}");
    assert!(stdout.contains("replicas' capacity of"), "{stdout}");
    for plot in ["scaling.png", "latency.png", "shares.png", "hit_rate.png"] {
        let bytes = std::fs::read(dir.join(plot)).unwrap();
        assert!(bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{plot}");
    }
}
