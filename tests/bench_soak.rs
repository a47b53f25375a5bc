#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `switchyard bench soak`, short: workers restarted under load through a real gateway process,
//! its figures sampled from `/metrics`, every failed call explained by a restart.

use std::process::Command;

#[test]
fn a_short_soak_restarts_workers_samples_the_gateway_and_explains_every_failure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["bench", "soak", "--duration", "9", "--restart-every", "3s", "--rate", "100", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    // Two restarts fit in 9 s at one every 3 s (the last must settle before the end); each old
    // worker drained and a new one served on its port.
    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 2, "{report:#}");
    for (i, r) in restarts.iter().enumerate() {
        assert_eq!(r["worker"], i, "{r}");
        assert_eq!(r["drained"], true, "{r}");
        assert!(r["serving_at_s"].as_f64().unwrap() > r["stopped_at_s"].as_f64().unwrap(), "{r}");
    }

    // The gateway's figures, read from its /metrics.
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{report:#}");
    for s in samples {
        assert!(s["rss_bytes"].as_f64().unwrap() > 1e6, "{s}");
        assert!(s["open_fds"].as_f64().unwrap() >= 5.0, "{s}");
        assert!(s["tasks"].as_f64().unwrap() >= 1.0, "{s}");
    }
    assert_eq!(report["flatness"].as_array().unwrap().len(), 3);

    // Calls went through, and whatever failed was in flight during a restart.
    let calls = &report["calls"];
    let (sent, ok) = (calls["sent"].as_u64().unwrap(), calls["ok"].as_u64().unwrap());
    assert!(sent >= 600 && ok >= sent * 9 / 10, "{calls}");
    assert_eq!(calls["failed_unexplained"], 0, "{calls}");
    assert_eq!(
        calls["failed"].as_u64().unwrap(),
        calls["failed_during_restarts"].as_u64().unwrap(),
        "{calls}"
    );
    assert!(json.with_extension("md").exists() && json.with_extension("png").exists());
}
