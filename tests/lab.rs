//! The policy lab: reproducible, and its ideal is a real reference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard::lab::{HeteroOptions, LabReport, run_hetero};

/// A short `hetero` run: the first 400 requests of the bundled trace.
fn short(seed: u64) -> LabReport {
    run_hetero(&HeteroOptions { seed, requests: 400, ..HeteroOptions::default() }).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_report_byte_for_byte() {
    let a = serde_json::to_string_pretty(&short(7)).unwrap();
    let b = serde_json::to_string_pretty(&short(7)).unwrap();
    assert_eq!(a, b);
    let report: LabReport = serde_json::from_str(&a).unwrap();
    assert_eq!(
        report.results.len(),
        switchyard_balance::PolicyKind::ALL.len() + 2,
        "every policy, least response time without sizes, the ideal"
    );
    assert!(report.results.iter().all(|r| r.requests == 400 && r.errors == 0), "{a}");
    assert!(report.capacity_rps > 0.0 && report.time_scale > 0.0);
    for r in &report.results {
        let share: f64 = r.share.values().sum();
        assert!((share - 1.0).abs() < 1e-3, "{}: shares sum to {share}", r.policy);
    }
}

#[test]
fn the_ideal_beats_round_robin_on_p99_ttft() {
    let report = short(1);
    let ideal = report.result("ideal").unwrap();
    let round_robin = report.result("round-robin").unwrap();
    assert!(
        ideal.ttft_ms.p99 < round_robin.ttft_ms.p99,
        "ideal {} ms, round robin {} ms",
        ideal.ttft_ms.p99,
        round_robin.ttft_ms.p99
    );
    // Round robin gives the quarter-speed replica its eighth; the ideal knows better.
    assert_eq!(round_robin.share["replica-0"], 0.125);
    assert!(ideal.share["replica-0"] < 0.125);
}
