//! `switchyard bench herd` end to end, short: one gateway, four gateways, four nginx and four
//! HAProxy over the same four workers, each target half a second of trace (18 calls; about 30 s
//! in all, most of it the tail of the longest calls). The figures of so short a run mean nothing;
//! what is checked is that every target runs, answers every call and lands in the JSON and the
//! markdown report. nginx and HAProxy must be installed (`scripts/install-bench-deps.sh`):
//! without them the test fails, naming the script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn a_short_herd_bench_runs_every_target_and_writes_both_reports() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-herd");
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("herd.json");
    let md = dir.join("herd.md");
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&md);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["bench", "herd", "--duration", "0.5", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench herd failed ({:?}); if nginx or haproxy is missing, run scripts/install-test-deps.sh. \
         Its stderr:\n{stderr}",
        output.status
    );

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let targets: Vec<&str> =
        report["results"].as_array().unwrap().iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(
        targets,
        [
            "switchyard x1",
            "switchyard x4",
            "switchyard x4 load-report oob",
            "nginx:least_conn x4",
            "haproxy:leastconn x4"
        ]
    );
    for r in report["results"].as_array().unwrap() {
        let (requests, ok) = (r["requests"].as_u64().unwrap(), r["ok"].as_u64().unwrap());
        assert!(requests > 0 && ok == requests, "{r}");
        let fronts = r["fronts"].as_u64().unwrap();
        assert_eq!(r["ok_per_front"].as_array().unwrap().len() as u64, fronts, "{r}");
        let shares: f64 =
            r["prompt_token_share"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 1e-6, "every call reached a worker: {r}");
    }
    assert_eq!(report["results"][0]["fronts"], 1);
    assert_eq!(report["results"][1]["fronts"], 4);
    assert_eq!(report["results"][0]["requests"], report["results"][1]["requests"], "the same calls");
    assert!(report["verdict"]["x4_over_x1_p99"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["verdict"]["reports_x4_over_x1_p99"].as_f64().unwrap() > 0.0, "{report}");

    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("| switchyard x4 |") && text.contains("## Against the issue's targets"), "{text}");
}
