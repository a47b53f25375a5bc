//! The policy lab: reproducible, and its ideal is a real reference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard::lab::{HeteroOptions, LabReport, run_hetero};

/// A short `hetero` run: the first 400 requests of the bundled trace.
fn short(seed: u64) -> LabReport {
    run_hetero(&HeteroOptions { seed, requests: 400, ..HeteroOptions::default() }).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_report_byte_for_byte() {
    // Every test of this binary sees the same registry: with the hash policies in it.
    switchyard::register_policies();
    let a = serde_json::to_string_pretty(&short(7)).unwrap();
    let b = serde_json::to_string_pretty(&short(7)).unwrap();
    assert_eq!(a, b);
    let report: LabReport = serde_json::from_str(&a).unwrap();
    assert_eq!(
        report.results.len(),
        switchyard::lab::lab_policies().len() + 2,
        "every registered policy, least response time without sizes, the ideal"
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

#[test]
fn prefix_aware_routing_hits_the_cache_more_than_round_robin_and_never_beats_the_upper_bound() {
    use switchyard::lab::{PrefixOptions, run_prefix};
    switchyard::register_policies();
    let report = run_prefix(&PrefixOptions { requests: 300, ..PrefixOptions::default() }).unwrap();
    for skewed in [false, true] {
        let upper =
            if skewed { report.skewed.upper_bound_hit_rate } else { report.base.upper_bound_hit_rate };
        let aware = report.result(skewed, "prefix-aware").unwrap();
        let round_robin = report.result(skewed, "round-robin").unwrap();
        assert_eq!((aware.requests, aware.errors), (300, 0));
        assert!(aware.prefix_hit_rate > round_robin.prefix_hit_rate, "{aware:?} {round_robin:?}");
        for r in if skewed { &report.skewed.results } else { &report.base.results } {
            assert!(r.prefix_hit_rate <= upper, "{} beats one infinite cache: {r:?}", r.policy);
        }
    }
}
