//! What a lab run measures, per request and per policy, and the report it writes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::{Percentiles, Table};

/// How one request went in one run. Times are offsets from the start of the run (virtual time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOutcome {
    /// Index of the replica that served it, if one did.
    pub replica: Option<usize>,
    /// When the request arrived.
    pub arrived: Duration,
    /// When it was sent to its replica (later than `arrived` only in a central queue).
    pub dispatched: Duration,
    /// From arrival to the first token, for a request that got one.
    pub ttft: Option<Duration>,
    /// From arrival to the last token, for a request that completed.
    pub latency: Option<Duration>,
    /// Prompt tokens its replica's prefix cache served.
    pub cached_prompt_tokens: u32,
    /// Index of the balancer that picked its replica (0 with one balancer or a central
    /// dispatcher); the pick is at `dispatched`.
    pub balancer: usize,
}

impl RequestOutcome {
    /// Whether the request failed (refused, or its stream ended before the last token).
    pub fn failed(&self) -> bool {
        self.latency.is_none()
    }
}

/// Every request of one run, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    /// One outcome per request of the workload.
    pub outcomes: Vec<RequestOutcome>,
}

/// Mean and percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl LatencySummary {
    /// Summarises durations (nearest-rank percentiles, see [`Percentiles`]), rounded to the
    /// microsecond so that reports stay readable.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Self {
        Self::with_failures(samples.into_iter().map(Some))
    }

    /// Summarises one sample per request, `None` for a request that failed (or was shed): a
    /// failure ranks above every measured time, so a percentile that falls among the failures
    /// is infinite (`null` in JSON, `inf` in tables), never a failure left out. The mean is over
    /// the measured times.
    pub fn with_failures(samples: impl IntoIterator<Item = Option<Duration>>) -> Self {
        let mut ms: Vec<f64> =
            samples.into_iter().map(|d| d.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3)).collect();
        let measured: Vec<f64> = ms.iter().copied().filter(|v| v.is_finite()).collect();
        let mean =
            if measured.is_empty() { 0.0 } else { measured.iter().sum::<f64>() / measured.len() as f64 };
        let p = Percentiles::of(&mut ms);
        Self { mean: round3(mean), p50: round3(p.p50), p90: round3(p.p90), p99: round3(p.p99) }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

/// One policy's (or the ideal's) figures in a lab report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyResult {
    /// The policy's name (`p2c-peak-ewma`, ...), or `ideal` for the reference.
    pub policy: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed (refused by a replica, or ended early).
    pub errors: usize,
    /// Time to first token, from arrival, of the requests that got one.
    pub ttft_ms: LatencySummary,
    /// Time to the last token, from arrival, of the requests that completed.
    pub latency_ms: LatencySummary,
    /// Imbalance: the largest replica's time-averaged number of requests in flight (sent to it and
    /// not finished), divided by the mean over replicas. 1 is perfectly even; it is not the goal
    /// on unequal replicas, where the fast ones should hold more.
    pub max_mean_load: f64,
    /// Share of the requests each replica served, by replica name.
    pub share: BTreeMap<String, f64>,
    /// This result's p99 time to first token divided by the ideal's.
    pub p99_ttft_vs_ideal: f64,
}

impl PolicyResult {
    /// Summarises `run` over replicas named `names` (in replica index order).
    /// `p99_ttft_vs_ideal` is left at 0 for [`LabReport::compare_with_ideal`] to fill in.
    pub fn summarise(policy: &str, run: &RunRecord, names: &[String]) -> Self {
        let outcomes = &run.outcomes;
        let errors = outcomes.iter().filter(|o| o.failed()).count();
        // A request that failed counts, as a time longer than any measured.
        let ttft_ms = LatencySummary::with_failures(outcomes.iter().map(|o| o.ttft.filter(|_| !o.failed())));
        let latency_ms = LatencySummary::with_failures(outcomes.iter().map(|o| o.latency));

        let mut served = vec![0usize; names.len()];
        // ∫ in_flight dt per replica: the sum of its requests' times from dispatch to the end.
        let mut busy = vec![Duration::ZERO; names.len()];
        let mut end = Duration::ZERO;
        for o in outcomes {
            let Some(r) = o.replica.filter(|&r| r < names.len()) else { continue };
            served[r] += 1;
            if let Some(latency) = o.latency {
                let finished = o.arrived + latency;
                busy[r] += finished.saturating_sub(o.dispatched);
                end = end.max(finished);
            }
        }
        let total_served: usize = served.iter().sum();
        let share = names
            .iter()
            .zip(&served)
            .map(|(name, &n)| {
                let f = if total_served == 0 { 0.0 } else { n as f64 / total_served as f64 };
                (name.clone(), (f * 1e4).round() / 1e4)
            })
            .collect();
        let span = end.as_secs_f64();
        let avg: Vec<f64> =
            busy.iter().map(|b| if span > 0.0 { b.as_secs_f64() / span } else { 0.0 }).collect();
        let mean = avg.iter().sum::<f64>() / avg.len().max(1) as f64;
        let max = avg.iter().copied().fold(0.0, f64::max);
        let max_mean_load = if mean > 0.0 { (max / mean * 1e3).round() / 1e3 } else { 0.0 };

        Self {
            policy: policy.to_string(),
            requests: outcomes.len(),
            errors,
            ttft_ms,
            latency_ms,
            max_mean_load,
            share,
            p99_ttft_vs_ideal: 0.0,
        }
    }
}

/// One replica of a scenario, as the report lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaInfo {
    /// Its endpoint name.
    pub name: String,
    /// Its relative speed (1 = one H100).
    pub speed: f64,
    /// Its endpoint weight (for weighted round robin): proportional to its speed.
    pub weight: u32,
}

/// The report of one lab scenario: how it was set up, and every policy's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabReport {
    /// The scenario's name.
    pub scenario: String,
    /// The seed of the policies' (and any synthetic) random choices.
    pub seed: u64,
    /// Where the workload came from.
    pub trace: String,
    /// Requests replayed (the first ones of the trace).
    pub window_requests: usize,
    /// Factor applied to the trace's arrival times (below 1 replays it faster).
    pub time_scale: f64,
    /// Requests per second one speed-1.0 replica sustains on this trace, as measured.
    pub replica_capacity_rps: f64,
    /// Requests per second the cluster sustains: `replica_capacity_rps × Σ speeds`.
    pub capacity_rps: f64,
    /// Target share of `capacity_rps` offered.
    pub target_load: f64,
    /// Requests per second offered: the replayed window's mean arrival rate after scaling.
    pub offered_rps: f64,
    /// The replicas.
    pub replicas: Vec<ReplicaInfo>,
    /// Every policy of [`lab_policies`](super::lab_policies), in that order, then least response
    /// time without request sizes, then `ideal`.
    pub results: Vec<PolicyResult>,
}

impl LabReport {
    /// Fills every result's `p99_ttft_vs_ideal` from the result named `ideal`.
    pub fn compare_with_ideal(&mut self) {
        let ideal = self.results.iter().find(|r| r.policy == "ideal").map(|r| r.ttft_ms.p99);
        for r in &mut self.results {
            r.p99_ttft_vs_ideal = match ideal {
                Some(i) if i > 0.0 => (r.ttft_ms.p99 / i * 1e3).round() / 1e3,
                _ => 0.0,
            };
        }
    }

    /// The result of `policy`, if the report has one.
    pub fn result(&self, policy: &str) -> Option<&PolicyResult> {
        self.results.iter().find(|r| r.policy == policy)
    }

    /// A terminal summary: the setup, then one row per policy.
    pub fn summary(&self) -> String {
        let slowest = self
            .replicas
            .iter()
            .min_by(|a, b| a.speed.total_cmp(&b.speed))
            .map(|r| (r.name.clone(), r.speed));
        let slow_title = match &slowest {
            Some((name, speed)) => format!("share {name} (×{speed})"),
            None => "share slowest".to_string(),
        };
        let mut table = Table::new([
            "policy",
            "ttft p50 ms",
            "ttft p90 ms",
            "ttft p99 ms",
            "latency p99 ms",
            "errors",
            "max/mean load",
            slow_title.as_str(),
            "p99 ttft / ideal",
        ]);
        for r in &self.results {
            let slow_share = slowest.as_ref().and_then(|(name, _)| r.share.get(name)).copied().unwrap_or(0.0);
            table.row([
                r.policy.clone(),
                format!("{:.1}", r.ttft_ms.p50),
                format!("{:.1}", r.ttft_ms.p90),
                format!("{:.1}", r.ttft_ms.p99),
                format!("{:.1}", r.latency_ms.p99),
                r.errors.to_string(),
                format!("{:.2}", r.max_mean_load),
                format!("{:.3}", slow_share),
                format!("{:.2}×", r.p99_ttft_vs_ideal),
            ]);
        }
        let speeds: Vec<String> = self.replicas.iter().map(|r| format!("{}", r.speed)).collect();
        format!(
            "lab {}: {} replicas (speeds {}), {} requests of {}, seed {}\n\
             capacity {:.1} req/s ({:.2} req/s per speed-1.0 replica, measured), offered {:.1} req/s \
             ({:.0}% load), time scale {:.5}\n\n{table}",
            self.scenario,
            self.replicas.len(),
            speeds.join(", "),
            self.window_requests,
            self.trace,
            self.seed,
            self.capacity_rps,
            self.replica_capacity_rps,
            self.offered_rps,
            self.target_load * 100.0,
            self.time_scale,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_in_the_percentiles_as_longer_than_any_time() {
        let ms = |n: u64| Some(Duration::from_millis(n));
        // 98 fast requests, two failures: p99 falls among the failures.
        let mut samples: Vec<Option<Duration>> = (1..=98).map(ms).collect();
        samples.extend([None, None]);
        let s = LatencySummary::with_failures(samples);
        assert_eq!((s.p50, s.p90), (50.0, 90.0));
        assert!(s.p99.is_infinite(), "{s:?}");
        assert_eq!(s.mean, 49.5, "the mean is over the measured times");
        assert_eq!(serde_json::to_value(s).unwrap()["p99"], serde_json::Value::Null);
        // Without failures, the same as before.
        assert_eq!(
            LatencySummary::with_failures((1..=100).map(ms)),
            LatencySummary::of((1..=100).map(Duration::from_millis))
        );
    }
}
