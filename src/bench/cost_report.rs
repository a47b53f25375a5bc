//! The report of scenario [`cost`](super::cost): per configuration and call kind, the figures per
//! call, the instructions by crate and the top functions; its terminal summary, its markdown, and
//! its comparison with a baseline report (`--baseline`, what `scripts/cost-check.sh` runs).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BenchError;
use super::callgrind::{Profile, crate_of};
use crate::allocations::AllocationCounts;
use crate::report::Table;

/// Functions listed by inclusive cost, per configuration and call kind.
pub const TOP_FUNCTIONS: usize = 25;

/// One crate's share of the instructions (exclusive: its functions' own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrateCost {
    /// The crate (`h2`, `tokio`, ...), or `allocator`, `libc mem*`, `libc`, `unknown`.
    #[serde(rename = "crate")]
    pub krate: String,
    /// Its instructions per call.
    pub instructions_per_call: f64,
    /// Its share of the total.
    pub share: f64,
}

/// One function by inclusive cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopFunction {
    /// Its demangled name, as callgrind gives it.
    pub function: String,
    /// Its crate.
    #[serde(rename = "crate")]
    pub krate: String,
    /// Its instructions and its callees' per call.
    pub inclusive_per_call: f64,
    /// Its own instructions per call.
    pub exclusive_per_call: f64,
    /// Its inclusive share of the total.
    pub share: f64,
}

/// What one kind of call (unary or streaming) cost in one configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindCost {
    /// Calls in the window.
    pub calls: u64,
    /// Instructions in the window (every thread of the gateway).
    pub instructions: u64,
    /// Instructions per call.
    pub instructions_per_call: f64,
    /// Calls into the allocator that allocate, per call (callgrind).
    pub allocations_per_call: f64,
    /// Calls into the allocator that free, per call (callgrind).
    pub frees_per_call: f64,
    /// Calls into each allocator entry point in the window, from outside the allocator.
    pub allocator_calls: BTreeMap<String, u64>,
    /// Allocations per call counted by `switchyard-count-allocations`; null without it.
    pub counted_allocations_per_call: Option<f64>,
    /// Bytes allocated per call counted by `switchyard-count-allocations`; null without it.
    pub counted_bytes_per_call: Option<f64>,
    /// Exclusive instructions by crate, most first.
    pub by_crate: Vec<CrateCost>,
    /// The functions of the highest inclusive cost, most first.
    pub top_functions: Vec<TopFunction>,
}

impl KindCost {
    /// The figures of `calls` calls from the window's `profile` and, when the counting binary
    /// ran, its counts over the same window.
    pub(crate) fn new(profile: &Profile, calls: u64, counted: Option<AllocationCounts>) -> Self {
        let n = calls.max(1) as f64;
        let total = profile.total.max(1) as f64;
        Self {
            calls,
            instructions: profile.total,
            instructions_per_call: profile.total as f64 / n,
            allocations_per_call: profile.allocations() as f64 / n,
            frees_per_call: profile.frees() as f64 / n,
            allocator_calls: profile.allocator_calls.clone(),
            counted_allocations_per_call: counted.map(|c| c.allocations as f64 / n),
            counted_bytes_per_call: counted.map(|c| c.bytes as f64 / n),
            by_crate: profile
                .by_crate()
                .into_iter()
                .map(|(krate, cost)| CrateCost {
                    krate,
                    instructions_per_call: cost as f64 / n,
                    share: cost as f64 / total,
                })
                .collect(),
            top_functions: profile
                .top_inclusive(TOP_FUNCTIONS)
                .into_iter()
                .map(|(name, cost)| TopFunction {
                    function: name.to_string(),
                    krate: crate_of(name).to_string(),
                    inclusive_per_call: cost.inclusive as f64 / n,
                    exclusive_per_call: cost.exclusive as f64 / n,
                    share: cost.inclusive as f64 / total,
                })
                .collect(),
        }
    }
}

/// One configuration's costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigCost {
    /// `default` or `protected`.
    pub name: String,
    /// The gateway flags it adds.
    pub flags: Vec<String>,
    /// Unary `ServerLive` calls.
    pub unary: KindCost,
    /// Streaming `ModelStreamInfer` calls.
    pub streaming: KindCost,
}

impl ConfigCost {
    fn kinds(&self) -> [(&'static str, &KindCost); 2] {
        [("unary", &self.unary), ("streaming", &self.streaming)]
    }
}

/// One figure against the baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedFigure {
    /// The configuration.
    pub config: String,
    /// `unary` or `streaming`.
    pub kind: String,
    /// `instructions_per_call` or `allocations_per_call`.
    pub figure: String,
    /// The baseline's value.
    pub old: f64,
    /// This run's.
    pub new: f64,
    /// `new / old`.
    pub ratio: f64,
    /// Whether it grew past the tolerance.
    pub grew: bool,
}

/// This run against a baseline report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The baseline's path.
    pub baseline: String,
    /// How much a figure may grow, in percent.
    pub tolerance_percent: f64,
    /// Each figure present in both.
    pub figures: Vec<ComparedFigure>,
    /// Configurations of this run the baseline lacks.
    pub not_in_baseline: Vec<String>,
}

/// The report of scenario `cost`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// `cost`.
    pub scenario: String,
    /// `git rev-parse --short HEAD` where the run was made (`+dirty` with changes), if in git.
    pub commit: Option<String>,
    /// When (RFC 3339, UTC).
    pub date: String,
    /// The binary whose gateway callgrind ran.
    pub binary: String,
    /// The counting binary, if one ran.
    pub alloc_binary: Option<String>,
    /// Runs under callgrind per configuration; each window is the run's of the median instructions.
    #[serde(default = "one_run")]
    pub runs: u32,
    /// Unary warm-up calls before the counted windows (a quarter as many streaming ones).
    pub warmup_calls: u64,
    /// Unary calls counted.
    pub calls: u64,
    /// Streaming calls counted.
    pub stream_calls: u64,
    /// Output tokens per streaming call.
    pub stream_tokens: u32,
    /// Concurrent clients.
    pub clients: usize,
    /// HTTP/2 connections they share.
    pub connections: usize,
    /// Wall-clock seconds of the whole run.
    pub duration_s: f64,
    /// One entry per configuration, in the order run.
    pub configs: Vec<ConfigCost>,
    /// Against `--baseline`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

fn one_run() -> u32 {
    1
}

/// Reads a baseline report.
pub(crate) fn read_baseline(path: &Path) -> Result<CostReport, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Io(format!("read the baseline {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| {
        BenchError::Invalid(format!("--baseline {}: not a bench cost report: {e}", path.display()))
    })
}

fn per_call(value: f64) -> String {
    format!("{value:.0}")
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
}

/// A markdown table.
fn markdown_table<const N: usize>(header: [&str; N], rows: &[Vec<String>]) -> String {
    let mut text = format!("| {} |\n|{}\n", header.join(" | "), " --- |".repeat(N));
    for row in rows {
        text.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    text
}

impl CostReport {
    /// Whether a figure grew past the tolerance of `--baseline`.
    pub fn grew(&self) -> bool {
        self.comparison.as_ref().is_some_and(|c| c.figures.iter().any(|f| f.grew))
    }

    /// This run's figures against `baseline`'s, `tolerance` in percent.
    pub fn compare(&self, path: &str, baseline: &CostReport, tolerance: f64) -> Comparison {
        let mut figures = Vec::new();
        let mut not_in_baseline = Vec::new();
        for config in &self.configs {
            let Some(old) = baseline.configs.iter().find(|c| c.name == config.name) else {
                not_in_baseline.push(config.name.clone());
                continue;
            };
            for ((kind, new), (_, old)) in config.kinds().into_iter().zip(old.kinds()) {
                for (figure, new, old) in [
                    ("instructions_per_call", new.instructions_per_call, old.instructions_per_call),
                    ("allocations_per_call", new.allocations_per_call, old.allocations_per_call),
                ] {
                    let ratio = if old > 0.0 { new / old } else { f64::INFINITY };
                    figures.push(ComparedFigure {
                        config: config.name.clone(),
                        kind: kind.to_string(),
                        figure: figure.to_string(),
                        old,
                        new,
                        ratio,
                        grew: ratio > 1.0 + tolerance / 100.0,
                    });
                }
            }
        }
        Comparison { baseline: path.to_string(), tolerance_percent: tolerance, figures, not_in_baseline }
    }

    /// The figures per call of every configuration and kind: (row cells).
    fn per_call_rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for config in &self.configs {
            for (kind, cost) in config.kinds() {
                rows.push(vec![
                    config.name.clone(),
                    kind.to_string(),
                    per_call(cost.instructions_per_call),
                    format!("{:.2}", cost.allocations_per_call),
                    format!("{:.2}", cost.frees_per_call),
                    optional(cost.counted_allocations_per_call, 2),
                    optional(cost.counted_bytes_per_call, 0),
                ]);
            }
        }
        rows
    }

    const PER_CALL_HEADER: [&'static str; 7] = [
        "configuration",
        "call",
        "instructions",
        "allocations (callgrind)",
        "frees (callgrind)",
        "allocations (counted)",
        "bytes (counted)",
    ];

    fn setup(&self) -> String {
        format!(
            "one worker natively, the gateway (`--threads 1`) under callgrind, {} run(s) per configuration \
             (each window the run's of the median instructions), {} clients over {} HTTP/2 \
             connections; {} unary warm-up calls, then {} unary `ServerLive` calls counted; {} streaming \
             warm-up calls, then {} streaming `ModelStreamInfer` calls of {} tokens counted; commit {}, {}; \
             {:.0} s in all",
            self.runs,
            self.clients,
            self.connections,
            self.warmup_calls,
            self.calls,
            (self.warmup_calls / 4).max(1),
            self.stream_calls,
            self.stream_tokens,
            self.commit.as_deref().unwrap_or("unknown"),
            self.date,
            self.duration_s,
        )
    }

    fn bytes_note(&self) -> Option<String> {
        self.alloc_binary.is_none().then(|| {
            "bytes: n/a, no counting binary; build it with `cargo build --release --features \
             count-allocations --bin switchyard-count-allocations` (or name one with --alloc-binary)"
                .to_string()
        })
    }

    fn comparison_text(&self) -> Option<String> {
        let c = self.comparison.as_ref()?;
        let mut table = Table::new(["configuration", "call", "figure", "old", "new", "ratio", ""]);
        for f in &c.figures {
            table.row([
                f.config.clone(),
                f.kind.clone(),
                f.figure.clone(),
                format!("{:.1}", f.old),
                format!("{:.1}", f.new),
                format!("{:.4}", f.ratio),
                if f.grew { "GREW".to_string() } else { "ok".to_string() },
            ]);
        }
        let mut text = format!(
            "\nagainst {} (a figure may grow by {} % at most):\n\n{table}",
            c.baseline, c.tolerance_percent
        );
        if !c.not_in_baseline.is_empty() {
            text.push_str(&format!("not in the baseline: {}\n", c.not_in_baseline.join(", ")));
        }
        let grew = c.figures.iter().filter(|f| f.grew).count();
        text.push_str(&if grew == 0 {
            "every figure within the tolerance\n".to_string()
        } else {
            format!("{grew} figure(s) grew past the tolerance\n")
        });
        Some(text)
    }

    /// The per-call table, the largest crates of each window, and the comparison if any.
    pub fn summary(&self) -> String {
        let mut table = Table::new(Self::PER_CALL_HEADER);
        for row in self.per_call_rows() {
            table.row(row);
        }
        let mut text = format!("bench cost: {}\n\n{table}", self.setup());
        for config in &self.configs {
            for (kind, cost) in config.kinds() {
                let crates: Vec<String> = cost
                    .by_crate
                    .iter()
                    .take(8)
                    .map(|c| format!("{} {:.1} %", c.krate, c.share * 100.0))
                    .collect();
                text.push_str(&format!("{} {kind}: {}\n", config.name, crates.join(", ")));
            }
        }
        if let Some(note) = self.bytes_note() {
            text.push_str(&format!("{note}\n"));
        }
        if let Some(comparison) = self.comparison_text() {
            text.push_str(&comparison);
        }
        text
    }

    /// The report as markdown: how a review uses it, the command, the setup, and the tables.
    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "# bench cost: instructions and allocations per call of the gateway\n\n\
             A review runs scripts/cost-check.sh; instruction counts do not move with machine load, times do. \
             The script builds the release binary, runs `switchyard bench cost --runs 3 --baseline reports/bench/cost.json` \
             and fails when a configuration's instructions or allocations per call (unary or streaming) grew by \
             more than 2 % (`--tolerance`) over this report's JSON twin, `cost.json`. After a change that \
             moves them on purpose, regenerate both files with the command below and commit them with it.\n\n",
        );
        md.push_str(
            "```sh\ncargo build --release && cargo build --release --features count-allocations --bin \
             switchyard-count-allocations\ntarget/release/switchyard bench cost --runs 3 --json reports/bench/cost.json\n```\n\n",
        );
        md.push_str(&format!("Setup: {}.\n\n", self.setup()));
        md.push_str(
            "Instructions are callgrind's count of every instruction the gateway process ran in the window \
             (all its threads), over the calls. Allocations and frees are callgrind's counts of calls into the \
             allocator's entry points from outside it (`mi_malloc_aligned`, `mi_zalloc_aligned`, \
             `mi_realloc_aligned`, `mi_free`, ...); the counted allocations and bytes come from the same gateway \
             built with a counting allocator (`switchyard-count-allocations`), run natively with the same \
             windows, its counters read through `GET /debug/allocations` before and after each window. A \
             streaming call is one request and 8 responses.\n\n## Per call\n\n",
        );
        md.push_str(&markdown_table(Self::PER_CALL_HEADER, &self.per_call_rows()));
        if let Some(note) = self.bytes_note() {
            md.push_str(&format!("\n{note}\n"));
        }
        md.push_str(
            "\n## By crate\n\nExclusive instructions per call (each function's own), grouped by the crate of its \
             demangled name; `allocator` is mimalloc, `libc mem*` glibc's memcpy, memmove and memset, `libc` \
             the rest of glibc and the loader.\n",
        );
        for config in &self.configs {
            for (kind, cost) in config.kinds() {
                md.push_str(&format!("\n### {} {kind}\n\n", config.name));
                let rows: Vec<Vec<String>> = cost
                    .by_crate
                    .iter()
                    .map(|c| {
                        vec![
                            format!("`{}`", c.krate),
                            per_call(c.instructions_per_call),
                            format!("{:.1} %", c.share * 100.0),
                        ]
                    })
                    .collect();
                md.push_str(&markdown_table(["crate", "instructions per call", "share"], &rows));
            }
        }
        md.push_str(&format!(
            "\n## Top {TOP_FUNCTIONS} functions by inclusive cost\n\nA function's instructions and those of \
             what it calls, per call, and its share of the total. The frames every call runs under are left \
             out: functions of `std`, `core`, `alloc`, `tokio` and C (thread start, closures, the runtime's \
             scheduler and task polls, generic wrappers) and any function of 99 % of the total or more; they \
             would fill the table at 100 % each.\n"
        ));
        for config in &self.configs {
            for (kind, cost) in config.kinds() {
                md.push_str(&format!("\n### {} {kind}\n\n", config.name));
                let rows: Vec<Vec<String>> = cost
                    .top_functions
                    .iter()
                    .map(|f| {
                        vec![
                            format!("`{}`", f.function.replace('|', "\\|").replace('`', "'")),
                            format!("`{}`", f.krate),
                            per_call(f.inclusive_per_call),
                            per_call(f.exclusive_per_call),
                            format!("{:.1} %", f.share * 100.0),
                        ]
                    })
                    .collect();
                md.push_str(&markdown_table(["function", "crate", "inclusive", "exclusive", "share"], &rows));
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(instructions_per_call: f64, allocations_per_call: f64) -> KindCost {
        KindCost {
            calls: 100,
            instructions: (instructions_per_call * 100.0) as u64,
            instructions_per_call,
            allocations_per_call,
            frees_per_call: allocations_per_call,
            allocator_calls: BTreeMap::new(),
            counted_allocations_per_call: None,
            counted_bytes_per_call: None,
            by_crate: vec![CrateCost { krate: "h2".into(), instructions_per_call, share: 1.0 }],
            top_functions: Vec::new(),
        }
    }

    fn report(unary: f64, streaming: f64, allocations: f64) -> CostReport {
        CostReport {
            scenario: "cost".into(),
            commit: Some("abc1234".into()),
            date: "2026-12-01T00:00:00Z".into(),
            binary: "switchyard".into(),
            alloc_binary: None,
            runs: 1,
            warmup_calls: 400,
            calls: 100,
            stream_calls: 100,
            stream_tokens: 8,
            clients: 4,
            connections: 2,
            duration_s: 60.0,
            configs: vec![ConfigCost {
                name: "default".into(),
                flags: Vec::new(),
                unary: kind(unary, allocations),
                streaming: kind(streaming, allocations),
            }],
            comparison: None,
        }
    }

    #[test]
    fn a_figure_that_grew_past_the_tolerance_fails_the_comparison() {
        let baseline = report(80_000.0, 200_000.0, 40.0);
        let mut same = report(81_000.0, 199_000.0, 40.0);
        same.comparison = Some(same.compare("base.json", &baseline, 2.0));
        assert!(!same.grew(), "{}", same.summary());
        let mut worse = report(80_000.0, 210_000.0, 40.0);
        worse.comparison = Some(worse.compare("base.json", &baseline, 2.0));
        assert!(worse.grew());
        let text = worse.summary();
        assert!(text.contains("GREW") && text.contains("1 figure(s) grew"), "{text}");
        let mut more_allocations = report(80_000.0, 200_000.0, 41.0);
        more_allocations.comparison = Some(more_allocations.compare("base.json", &baseline, 2.0));
        assert!(more_allocations.grew(), "allocations count too");
    }

    #[test]
    fn the_report_reads_back_and_its_markdown_says_how_a_review_uses_it() {
        let report = report(80_000.0, 200_000.0, 40.0);
        let json = serde_json::to_string(&report).unwrap_or_default();
        assert!(
            json.contains("\"crate\":\"h2\"") && json.contains("\"counted_bytes_per_call\":null"),
            "{json}"
        );
        let back: Result<CostReport, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(report.clone()));
        let md = report.markdown();
        assert!(md.contains("instruction counts do not move with machine load, times do"), "{md}");
        assert!(md.contains("| default | unary | 80000 | 40.00 | 40.00 | n/a | n/a |"), "{md}");
        assert!(md.contains("switchyard-count-allocations"), "{md}");
    }
}
