//! `switchyard bench cost` end to end, short: both configurations, 20 warm-up calls, 100 unary
//! and 20 streaming calls counted, the debug build's gateway under callgrind (about 15 s). The
//! figures of a debug build are not the release build's; what is checked is that each window is
//! counted, plausible and complete: instructions per call in a debug build's range, allocations
//! counted, the crates adding up to the total, the HTTP/2 stack among the top functions, and, with
//! the counting binary (`--all-features`), its allocations close to callgrind's. valgrind must be
//! installed (`scripts/install-test-deps.sh`): without it the test fails, naming the script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

fn f64_at(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or_else(|| panic!("no number {key} in {value}"))
}

#[test]
fn a_short_cost_bench_counts_every_window() {
    assert!(
        on_path("valgrind") && on_path("callgrind_control"),
        "valgrind (callgrind_control) is not on PATH: run scripts/install-test-deps.sh"
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-cost");
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("cost.json");
    let md = dir.join("cost.md");
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&md);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args([
        "bench",
        "cost",
        "--warmup-calls",
        "20",
        "--calls",
        "100",
        "--stream-calls",
        "20",
        "--json",
    ]);
    command.arg(&json);
    // Built by `cargo test --all-features` (scripts/test.sh), as the feature requires.
    let counting = option_env!("CARGO_BIN_EXE_switchyard-count-allocations");
    if let Some(binary) = counting {
        command.args(["--alloc-binary", binary]);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench cost failed ({:?}); if valgrind is missing, run scripts/install-test-deps.sh. Its stderr:\n{stderr}",
        output.status
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let configs = report["configs"].as_array().unwrap();
    let names: Vec<&str> = configs.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "protected"]);
    for config in configs {
        for (kind, calls) in [("unary", 100), ("streaming", 20)] {
            let cost = &config[kind];
            let what = format!("{} {kind}", config["name"]);
            assert_eq!(cost["calls"], calls, "{what}");
            let instructions = f64_at(cost, "instructions_per_call");
            assert!(
                (10_000.0..5_000_000.0).contains(&instructions),
                "{what}: {instructions} instructions per call"
            );
            let allocations = f64_at(cost, "allocations_per_call");
            assert!(allocations > 0.0, "{what}: {allocations} allocations per call");
            assert!(f64_at(cost, "frees_per_call") > 0.0, "{what}");
            let by_crate: f64 =
                cost["by_crate"].as_array().unwrap().iter().map(|c| f64_at(c, "instructions_per_call")).sum();
            assert!(
                (by_crate - instructions).abs() <= 0.01 * instructions,
                "{what}: the crates add up to {by_crate}, the total is {instructions}"
            );
            let top = cost["top_functions"].as_array().unwrap();
            assert!(!top.is_empty() && top.len() <= 25, "{what}");
            assert!(
                top.iter().any(|f| {
                    let name = f["function"].as_str().unwrap_or("");
                    name.contains("h2::") || name.contains("hyper::")
                }),
                "{what}: no h2 or hyper function among the top ones: {top:?}"
            );
            if counting.is_some() {
                let counted = f64_at(cost, "counted_allocations_per_call");
                assert!(
                    (counted - allocations).abs() <= 0.15 * allocations + 2.0,
                    "{what}: counted {counted} allocations per call, callgrind {allocations}"
                );
                assert!(f64_at(cost, "counted_bytes_per_call") > 0.0, "{what}");
            }
        }
    }

    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("scripts/cost-check.sh") && text.contains("| protected | streaming |"), "{text}");
}
