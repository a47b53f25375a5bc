//! Scenario `scale`: the pool scaled up and down under load over real worker processes, every
//! request's outcome counted: the issue's "scale-down fails no request".
//!
//! The gateway runs in the bench process (`Gateway::start_with_sources`), its pool fed by a
//! discovery channel; its replicas are `switchyard worker` processes that
//! [`ProcessScaler`](switchyard_autoscale::scaler::process::ProcessScaler) starts and stops: a new one joins discovery once its health is SERVING (after
//! its `--cold-start` of [`COLD_START`]); a removed one drains (out of discovery, its requests in
//! flight finish, then SIGTERM, and the worker's own drain grace). Workers are of the parallel
//! kind ([`PARALLEL`] calls at once at [`SERVICE_MS`] each: [`PARALLEL`] / [`SERVICE_MS`] calls a
//! second). The load is unary `ModelInfer` calls at Poisson arrivals, each with a deadline of
//! [`DEADLINE`]; a change of rate draws the next gap afresh (exact for a Poisson process whose
//! rate changes in steps). The scenario runs two parts, each on a fresh gateway and fresh workers:
//!
//! 1. **Autoscaled** ([`autoscaled`]): the real autoscaler decides the replica count
//!    (`switchyard_autoscale::Autoscaler` over the pool's board, the default `LlmAware`
//!    recommender, the process scaler, as `switchyard cluster` wires them:
//!    [`LocalAutoscaler`](crate::cluster::local_autoscaler::LocalAutoscaler)), while the rate
//!    goes through `--steps` (`RATE:SECONDS,...`, [`DEFAULT_STEPS`] by default: low, high, medium),
//!    so that it scales up and then down, the replicas it removes still carrying calls.
//! 2. **Scripted**: the replica count is set by explicit scale steps interleaved with the load,
//!    through [`PHASES`], each `--duration` seconds long: a rise scales up first and raises the
//!    rate once the new replicas are ready (as a predictive autoscaler would have them); a fall
//!    lowers the rate and scales down at the same moment, so that the replicas removed still have
//!    calls in flight. The rate of each phase is about 70 % of its replicas' capacity.
//!
//! Reported per part: requests sent and their outcomes (failures by gRPC status), the scale
//! events, the replicas (desired, current, ready, draining on the board) and the calls in flight
//! every [`SAMPLE_EVERY`], and the replicas that drained, with the calls each had in flight when
//! it left discovery (read off the board, sampled every [`DRAIN_SAMPLE_EVERY`]); for the
//! autoscaled part also the calls in flight during a scale-down and how many of them failed.

pub mod autoscaled;
mod scripted;
mod traffic;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{BenchArgs, BenchError};
use crate::report::{Percentiles, Table};
use traffic::Call;

/// Calls a worker serves at once.
pub const PARALLEL: u32 = 8;
/// Milliseconds a call takes (long enough that a replica leaving has calls in flight).
pub const SERVICE_MS: f64 = 400.0;
/// Each worker's simulated weight loading (`--cold-start`).
pub const COLD_START: Duration = Duration::from_secs(1);
/// Every call's deadline.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The scripted part's phases: replicas, and calls a second (about 70 % of their capacity, 20
/// calls/s each).
pub const PHASES: [(u32, f64); 7] =
    [(1, 14.0), (3, 42.0), (1, 14.0), (4, 56.0), (2, 28.0), (3, 42.0), (1, 14.0)];
/// The autoscaled part's load unless `--steps` says otherwise: calls a second and seconds.
pub const DEFAULT_STEPS: &str = "5:30,50:45,15:75";
/// How often the timeline is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How often the board is read for replicas leaving discovery.
pub const DRAIN_SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// HTTP/2 connections the load generator spreads its calls over.
const CONNECTIONS: usize = 4;
/// Most calls in flight at once in the load generator; more are counted as not sent.
const MAX_IN_FLIGHT: usize = 4096;
/// How long a scale-up may take to have its replicas ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One step of a load profile: Poisson arrivals at `rate` calls a second for `secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadStep {
    /// Calls a second.
    pub rate: f64,
    /// Seconds.
    pub secs: f64,
}

impl std::str::FromStr for LoadStep {
    type Err = String;

    /// `RATE:SECONDS`, such as `50:30` (50 calls a second for 30 s).
    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, secs) =
            s.split_once(':').ok_or_else(|| format!("{s:?}: a step is RATE:SECONDS, such as 50:30"))?;
        let number = |what: &str, v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{s:?}: the {what} {v:?} is not a number ≥ 0"))
        };
        let step = Self { rate: number("rate", rate)?, secs: number("duration", secs)? };
        if step.secs == 0.0 {
            return Err(format!("{s:?}: a step lasts more than 0 seconds"));
        }
        Ok(step)
    }
}

impl std::fmt::Display for LoadStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.rate, self.secs)
    }
}

/// Parses a load profile: steps separated by commas (`5:30,50:45,5:75`).
pub fn parse_steps(s: &str) -> Result<Vec<LoadStep>, String> {
    let steps = s.split(',').map(str::parse).collect::<Result<Vec<LoadStep>, _>>()?;
    if steps.is_empty() {
        return Err("no load step".into());
    }
    Ok(steps)
}

/// One change of the desired replica count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleEvent {
    /// Seconds since the load began.
    pub at_s: f64,
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
    /// For a scale-up: seconds until every new replica was ready (SERVING, in discovery).
    pub ready_after_s: Option<f64>,
}

/// One sample of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the load began.
    pub at_s: f64,
    /// Calls a second being offered.
    pub offered_rps: f64,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas that exist (ready or starting).
    pub current: u32,
    /// Replicas ready (in discovery).
    pub ready: u32,
    /// Replicas out of discovery still finishing calls (draining on the board).
    pub draining: u32,
    /// Calls in flight on the board.
    pub in_flight: u64,
}

/// One replica that left discovery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drained {
    /// The replica.
    pub replica: String,
    /// Seconds since the load began when the board last showed it in discovery.
    pub at_s: f64,
    /// The calls it had in flight then, which it finished while draining.
    pub in_flight_at_removal: u32,
    /// Seconds since the load began when it had left the board (its calls ended), if it did
    /// before the run ended.
    pub left_board_at_s: Option<f64>,
}

/// Calls and how they ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcomes {
    /// Calls offered (sent, or not sent because too many were in flight).
    pub requests: u64,
    /// Calls answered.
    pub ok: u64,
    /// Calls that failed, by gRPC status (`not-sent` for calls the generator could not send).
    pub failures_by_status: BTreeMap<String, u64>,
    /// All failures.
    pub failures: u64,
    /// Latency of the answered calls, ms.
    pub latency_ms: Percentiles,
}

impl Outcomes {
    /// The outcomes of `calls`, and `not_sent` calls the generator could not send.
    fn of(calls: &[Call], not_sent: u64) -> Self {
        let mut failures_by_status = BTreeMap::new();
        let mut latencies = Vec::new();
        for call in calls {
            match &call.end {
                Ok(us) => latencies.push(*us as f64 / 1e3),
                Err(status) => *failures_by_status.entry(status.clone()).or_insert(0) += 1,
            }
        }
        if not_sent > 0 {
            failures_by_status.insert("not-sent".into(), not_sent);
        }
        Self {
            requests: calls.len() as u64 + not_sent,
            ok: latencies.len() as u64,
            failures: failures_by_status.values().sum(),
            failures_by_status,
            latency_ms: Percentiles::of(&mut latencies),
        }
    }

    /// The failures by status in one line.
    fn failures_line(&self) -> String {
        if self.failures_by_status.is_empty() {
            return "none".into();
        }
        self.failures_by_status.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    }

    /// A markdown table row `| requests | answered | failed | p50 | p99 | max |` with its header.
    fn markdown(&self) -> String {
        format!(
            "| requests | answered | failed | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- | --- |\n\
             | {} | {} | {} | {:.0} | {:.0} | {:.0} |\n\nFailures by status: {}.\n\n",
            self.requests,
            self.ok,
            self.failures,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.failures_line(),
        )
    }
}

/// The scripted part of scenario `scale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScriptedReport {
    /// Who decided the replica count.
    pub scaling: String,
    /// Seconds per phase.
    pub phase_s: f64,
    /// The phases: replicas and calls a second.
    pub phases: Vec<(u32, f64)>,
    /// The calls.
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// The scale events.
    pub scale_events: Vec<ScaleEvent>,
    /// Scale-downs among them.
    pub scale_downs: usize,
    /// The replicas that left discovery, in order.
    pub drained: Vec<Drained>,
    /// How many of them had calls in flight when they left.
    pub drained_with_calls_in_flight: usize,
    /// The timeline.
    pub timeline: Vec<Sample>,
}

/// The report of scenario `scale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleReport {
    /// The scenario.
    pub scenario: String,
    /// The workers.
    pub workers: String,
    /// Every call's deadline, in ms.
    pub deadline_ms: f64,
    /// The autoscaled part.
    pub autoscaled: Box<autoscaled::AutoscaledReport>,
    /// The scripted part.
    pub scripted: ScriptedReport,
    /// `/proc/loadavg` before and after.
    pub loadavg: (String, String),
    /// The build the bench ran as: `release` or `debug` (the result is a count of failures,
    /// not a speed; both are valid runs).
    pub build: String,
}

impl ScaleReport {
    /// Failures in both parts.
    pub fn failures(&self) -> u64 {
        self.autoscaled.outcomes.failures + self.scripted.outcomes.failures
    }

    /// The scripted part's scale events as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(["t (s)", "from", "to", "ready after (s)"]);
        for e in &self.scripted.scale_events {
            table.row([
                format!("{:.1}", e.at_s),
                e.from.to_string(),
                e.to.to_string(),
                e.ready_after_s.map_or_else(|| "-".to_string(), |s| format!("{s:.2}")),
            ]);
        }
        table
    }

    /// The figures and the verdict against the issue's target.
    pub fn summary(&self) -> String {
        let s = &self.scripted;
        let verdict = if self.failures() == 0 { "met" } else { "NOT met" };
        format!(
            "bench scale: {}\n\n{}\n\
             scripted: {} phases of {} s\n\n{}\n\
             requests {}, answered {}, failed {} ({}); latency p50 {:.0} ms, p99 {:.0} ms\n\
             scale-downs {}, replicas drained {} ({} with calls in flight, {} calls in all)\n\n\
             target: scale-down fails no request: {} failed (autoscaled {}, scripted {}) ({verdict})\n",
            self.workers,
            self.autoscaled.summary(),
            s.phases.len(),
            s.phase_s,
            self.table(),
            s.outcomes.requests,
            s.outcomes.ok,
            s.outcomes.failures,
            s.outcomes.failures_line(),
            s.outcomes.latency_ms.p50,
            s.outcomes.latency_ms.p99,
            s.scale_downs,
            s.drained.len(),
            s.drained_with_calls_in_flight,
            s.drained.iter().map(|d| u64::from(d.in_flight_at_removal)).sum::<u64>(),
            self.failures(),
            self.autoscaled.outcomes.failures,
            s.outcomes.failures,
        )
    }

    /// The markdown report (`reports/bench/scale.md`).
    pub fn markdown(&self) -> String {
        let a = &self.autoscaled;
        let s = &self.scripted;
        let mut out = String::from("# Bench `scale`: scaling up and down under load over real processes\n\n");
        out.push_str(&format!(
            "Written by the bench itself:\n\n```sh\ncargo build --release\ntarget/release/switchyard bench scale --steps {} --json reports/bench/scale.json\n```\n\n",
            a.steps.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        ));
        out.push_str(&format!(
            "This run: a {} build, on {} CPUs shared with other jobs (the load averages below).\n\n",
            self.build,
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        ));
        out.push_str(&format!(
            "Setup: the gateway in the bench process, its pool fed by a discovery channel; replicas are \
             `switchyard worker` processes ({}) started and stopped by `switchyard_autoscale`'s `ProcessScaler` \
             (a replica joins discovery once SERVING; a removed one drains: out of discovery, its calls in \
             flight finish, then SIGTERM and the worker's drain grace). Load: unary `ModelInfer` calls at \
             Poisson arrivals, each call with a {} ms deadline. Two parts, each on a fresh gateway and fresh \
             workers: the real autoscaler, then a scripted schedule. Machine load average before / after: \
             `{}` / `{}`.\n\n",
            self.workers, self.deadline_ms, self.loadavg.0, self.loadavg.1,
        ));
        out.push_str(&format!(
            "## Against the issue's target\n\n| target | measured | verdict |\n| --- | --- | --- |\n\
             | scale-down fails no request (autoscaler) | {} failed of {} calls; {} of the {} calls in flight during its {} scale-downs failed; {} replicas drained ({} with calls in flight) | {} |\n\
             | scale-down fails no request (scripted) | {} failed of {} over {} scale-downs, {} replicas drained ({} with calls in flight) | {} |\n\n",
            a.outcomes.failures,
            a.outcomes.requests,
            a.failed_during_scale_down,
            a.calls_during_scale_down,
            a.scale_downs,
            a.drained.len(),
            a.drained.iter().filter(|d| d.in_flight_at_removal > 0).count(),
            if a.outcomes.failures == 0 && a.scale_downs > 0 { "met" } else { "not met" },
            s.outcomes.failures,
            s.outcomes.requests,
            s.scale_downs,
            s.drained.len(),
            s.drained_with_calls_in_flight,
            if s.outcomes.failures == 0 { "met" } else { "not met" },
        ));
        out.push_str(&a.markdown());
        out.push_str(&format!(
            "## Scripted\n\nScaling: {}; {} phases of {} s.\n\n| phase | replicas | calls/s |\n| --- | --- | --- |\n",
            s.scaling,
            s.phases.len(),
            s.phase_s
        ));
        for (i, (n, rate)) in s.phases.iter().enumerate() {
            out.push_str(&format!("| {} | {n} | {rate} |\n", i + 1));
        }
        out.push_str("\n### Outcomes\n\n");
        out.push_str(&s.outcomes.markdown());
        out.push_str("### Scale events\n\n| t (s) | from | to | new replicas ready after (s) |\n| --- | --- | --- | --- |\n");
        for e in &s.scale_events {
            out.push_str(&format!(
                "| {:.1} | {} | {} | {} |\n",
                e.at_s,
                e.from,
                e.to,
                e.ready_after_s.map_or_else(|| "-".to_string(), |s| format!("{s:.2}"))
            ));
        }
        out.push_str("\n### Replicas drained\n\n");
        out.push_str(&drained_markdown(&s.drained));
        out.push_str("\nThe timelines (replicas desired, current, ready, draining, and calls in flight, every 0.5 s) are in `scale.json`.\n");
        out
    }
}

/// The replicas drained as a markdown table.
fn drained_markdown(drained: &[Drained]) -> String {
    let mut out = String::from(
        "| replica | left discovery at (s) | calls in flight then | left the board at (s) |\n| --- | --- | --- | --- |\n",
    );
    for d in drained {
        out.push_str(&format!(
            "| {} | {:.2} | {} | {} |\n",
            d.replica,
            d.at_s,
            d.in_flight_at_removal,
            d.left_board_at_s.map_or_else(|| "-".to_string(), |s| format!("{s:.2}"))
        ));
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Runs the scenario: the autoscaled part over `--steps`, then the scripted part.
pub(crate) async fn run(args: &BenchArgs, exe: &Path) -> Result<ScaleReport, BenchError> {
    let steps = match &args.steps {
        Some(steps) => parse_steps(steps).map_err(|e| BenchError::Invalid(format!("--steps: {e}")))?,
        None => parse_steps(DEFAULT_STEPS).map_err(BenchError::Invalid)?,
    };
    let loadavg_before = loadavg();
    let autoscaled = autoscaled::run(args, exe, &steps).await?;
    let scripted = scripted::run(args, exe).await?;
    Ok(ScaleReport {
        scenario: "scale".into(),
        workers: format!(
            "workers --kind parallel --parallel {PARALLEL} --service-ms {SERVICE_MS} ({:.0} calls/s each), --cold-start {:?}",
            f64::from(PARALLEL) / (SERVICE_MS / 1e3),
            COLD_START
        ),
        deadline_ms: DEADLINE.as_secs_f64() * 1e3,
        autoscaled: Box::new(autoscaled),
        scripted,
        loadavg: (loadavg_before, loadavg()),
        build: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_profile_is_rate_colon_seconds_separated_by_commas() {
        let steps = parse_steps(DEFAULT_STEPS).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1], LoadStep { rate: 50.0, secs: 45.0 });
        assert_eq!(parse_steps("0:2.5").unwrap(), vec![LoadStep { rate: 0.0, secs: 2.5 }]);
        assert_eq!(steps.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), DEFAULT_STEPS);
        for bad in ["", "5", "5:0", "-1:3", "x:3", "5:NaN", "5:3,"] {
            assert!(parse_steps(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
