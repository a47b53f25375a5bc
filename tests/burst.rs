//! The `burst` lab rerun: Switchyard's autoscaler on the Azure replay and the step, against the
//! committed report and the targets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard::lab::{BurstOptions, BurstResult, run_burst};

/// The committed report's row for `workload` and `autoscaler`, as JSON.
fn committed(workload: &str, autoscaler: &str) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_str(include_str!("../reports/lab/burst.json")).expect("burst.json parses");
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["workload"] == workload && r["autoscaler"] == autoscaler)
        .cloned()
        .unwrap_or_else(|| panic!("no row {workload}/{autoscaler} in reports/lab/burst.json"))
}

fn row<'a>(rows: &'a [BurstResult], workload: &str, autoscaler: &str) -> &'a BurstResult {
    rows.iter()
        .find(|r| r.workload == workload && r.autoscaler == autoscaler)
        .unwrap_or_else(|| panic!("no row {workload}/{autoscaler}"))
}

/// Reruns `burst` for Switchyard's recommender (and the fixed pool its cost is measured against)
/// on the Azure replay and the step. The lab runs on tokio's paused clock with a fixed seed, so
/// the rows are the committed report's, figure for figure, whatever the build profile: a change
/// to the recommender, the signals, the balancer or the engine that moves any figure fails here
/// until `reports/lab/burst.{json,md}` are regenerated (`switchyard lab burst --json
/// reports/lab/burst.json --plot reports/lab/burst.png`). Then the rows must still hold the
/// targets the report claims.
#[test]
fn burst_reruns_to_the_committed_rows_and_holds_its_targets() {
    let report = run_burst(&BurstOptions {
        workloads: vec!["azure".into(), "step".into()],
        autoscalers: vec!["switchyard".into()],
        ..BurstOptions::default()
    })
    .unwrap();
    assert_eq!(report.results.len(), 4, "switchyard and fixed-peak on two workloads");
    for r in &report.results {
        // Through the same serializer as the committed file, so that floats compare exactly.
        let fresh: serde_json::Value = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(
            fresh,
            committed(&r.workload, &r.autoscaler),
            "reports/lab/burst.json is stale for {}/{}: regenerate it with `cargo run --release -- \
             lab burst --json reports/lab/burst.json --plot reports/lab/burst.png`",
            r.workload,
            r.autoscaler
        );
    }
    let azure = row(&report.results, "azure", "switchyard");
    assert!(azure.slo_attainment >= 0.99, "{azure:?}");
    assert!(azure.failed == 0, "{azure:?}");
    // The cost target (≤ 0.60 × the fixed pool) is not met, and not reachable at the lab's 70 %
    // target utilisation: see reports/lab/burst.md. The exact rows above hold the cost it has.
    let step = row(&report.results, "step", "switchyard");
    // The step's targets are the reaction's (its SLO through a 30 s cold start at 5 × load is
    // what the cold start allows: see the report); no request fails.
    assert!(step.failed == 0, "{step:?}");
    assert!(step.decision_s.is_some_and(|d| d <= 2.0), "a scale-up decision within 2 s: {step:?}");
    assert!(
        step.time_to_ready_s.is_some_and(|t| t <= report.cold_start_s + 3.0),
        "enough replicas ready within cold start + 3 s: {step:?}"
    );
}

/// The `clairvoyant` row (a bound: it is given the arrivals, see `src/lab/burst_clairvoyant.rs`)
/// on the Azure replay and the steady load: the committed figures, measured through the same
/// pool as the others, and what a bound must hold. On the Azure replay it reaches the SLO for
/// less than the fixed pool and less than Switchyard's committed row. On `steady` it reaches the
/// SLO for no more than a fixed pool sized at its own 70 % target for the workload's peak (it does
/// cost more than the `fixed-peak` pool there, which is sized at 80 %: see the report).
#[test]
fn the_clairvoyant_bound_reaches_the_slo_for_less_than_a_pool_sized_for_the_peak() {
    let report = run_burst(&BurstOptions {
        workloads: vec!["azure".into(), "steady".into()],
        autoscalers: vec!["clairvoyant".into()],
        ..BurstOptions::default()
    })
    .unwrap();
    assert_eq!(report.results.len(), 4, "clairvoyant and fixed-peak on two workloads");
    for r in &report.results {
        let fresh: serde_json::Value = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(
            fresh,
            committed(&r.workload, &r.autoscaler),
            "reports/lab/burst.json is stale for {}/{}: regenerate it",
            r.workload,
            r.autoscaler
        );
    }
    let azure = row(&report.results, "azure", "clairvoyant");
    assert!(azure.slo_attainment >= 0.99 && azure.failed == 0, "{azure:?}");
    assert!(azure.cost_vs_fixed_peak < 1.0, "{azure:?}");
    let switchyard = committed("azure", "switchyard")["replica_seconds"].as_f64().unwrap();
    assert!(
        azure.replica_seconds < switchyard,
        "a bound costs less than Switchyard's {switchyard}: {azure:?}"
    );
    let steady = row(&report.results, "steady", "clairvoyant");
    assert!(steady.slo_attainment >= 0.99 && steady.failed == 0, "{steady:?}");
    let info = report.workloads.iter().find(|w| w.workload == "steady").unwrap();
    let at_its_target = (info.peak_load / 0.7).ceil() * info.duration_s;
    assert!(
        steady.replica_seconds <= at_its_target,
        "no more than a fixed pool at 70 % for the peak ({at_its_target}): {steady:?}"
    );
    assert!(steady.replica_seconds < f64::from(steady.max_replicas) * info.duration_s, "it lets replicas go");
}
