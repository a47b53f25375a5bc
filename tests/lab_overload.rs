//! The lab's `overload` scenario: reproducible, every request accounted for, and the shed queue
//! serving the critical class first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard::lab::{LOAD_STEPS, OverloadOptions, OverloadReport, run_overload};

/// Two virtual seconds per load step.
fn short() -> OverloadReport {
    run_overload(&OverloadOptions { step_seconds: 2.0, ..OverloadOptions::default() }).unwrap()
}

#[test]
fn the_overload_scenario_is_reproducible_and_the_shed_queue_serves_critical_requests_first() {
    let report = short();
    let again = short();
    assert_eq!(serde_json::to_string(&report).unwrap(), serde_json::to_string(&again).unwrap());

    assert!(report.capacity_rps > 0.0);
    let names: Vec<&str> = report.configs.iter().map(|c| c.config.as_str()).collect();
    assert_eq!(names[0], "none");
    assert!(names.iter().any(|n| n.ends_with("+load-shed")) && names.iter().any(|n| n.starts_with("vegas")));
    for config in &report.configs {
        assert_eq!(config.steps.len(), LOAD_STEPS.len());
        for step in &config.steps {
            let expected = (step.load * report.capacity_rps * report.step_seconds).round() as usize;
            assert_eq!(step.requests, expected, "{}: {step:?}", config.config);
            assert!((0.0..=1.0).contains(&step.admitted));
            assert!(step.goodput_share <= step.offered_rps / report.capacity_rps + 1e-3, "{step:?}");
        }
        assert_eq!(config.limit_over_time.is_empty(), config.config == "none");
    }
    let critical_at_3x = |name: &str| {
        let config = report.configs.iter().find(|c| c.config.starts_with(name)).unwrap();
        config.steps.last().unwrap().success_by_priority
    };
    let shed = critical_at_3x("fixed(384)+shed");
    let none = critical_at_3x("none");
    assert!(shed.critical > none.critical, "shed {shed:?}, none {none:?}");
    assert!(shed.critical >= shed.standard && shed.standard >= shed.sheddable, "{shed:?}");
}
