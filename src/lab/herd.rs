//! The `herd` scenario: many independent balancers over one fleet.
//!
//! As a library, Switchyard runs inside every client process, and as a gateway it runs as several
//! replicas: K balancers over the same replicas, each seeing only its own requests in flight.
//! Balancers that each pick "the least loaded replica" from local counts can herd onto the same
//! replica while another idles. This scenario measures how much.
//!
//! The cluster, workload, load and capacity are `hetero`'s ([`run_hetero`](super::run_hetero)):
//! eight replicas of unequal speed, the first `requests` requests of the trace at 70 % of the
//! measured capacity. One set of simulated engines is shared by K balancers (K = 1, 2, 8, 32 by
//! default), each a real [`Balance`](switchyard_balance::Balance) with its own board and the same
//! policy, built from the registry with seed `seed + k` for balancer `k` (so balancer 0 has
//! exactly `seed`, and K = 1 is `hetero`'s run, figure for figure). The arrivals are split
//! among them:
//!
//! - `even`: request `i` goes to balancer `i mod K`;
//! - `skewed`: balancer 0 gets the even-indexed requests (half of them), the other K − 1 share
//!   the odd-indexed ones round robin.
//!
//! Each balancer hears a replica's load report in the trailers of its own responses, as a
//! gateway does by default. With [`HerdOptions::load_reports`] (`--load-reports 20ms`) every
//! balancer also gets every replica's report at that interval, as a subscriber to the worker's
//! out-of-band ORCA stream does ([`OobReports`](crate::oob_reports::OobReports)).
//!
//! At K = 2 the two splits are the same assignment. At K = 1 both splits are the same run, made once and reported under both. The ideal central
//! dispatcher sees every arrival whatever K, so it is run once (row `balancers: 1`, split
//! `central`).
//!
//! # The herd index
//!
//! A pick is a triple (balancer b, replica r, time t), t when b sent the request. It **herds**
//! when
//!
//! 1. another balancer b' ≠ b picked the same replica r in (t − S_r, t], where S_r is replica r's
//!    service time, taken as the mean time to first token of the requests r served in that run;
//! 2. and, just before the pick, at least one replica had nothing in flight (no request picked
//!    before and not yet at its last token).
//!
//! `herd_index` is the share of all picks (of requests that reached a replica) that herd: two
//! balancers piling onto one replica within one of its service times while capacity stood idle.
//! With one balancer there is no b', so it is 0; round robin and random herd by chance only, and
//! a policy that reads only local counts herds more as K grows.
//!
//! # Cost
//!
//! Each K, split and policy is one run of the whole window (as `hetero`'s 6,000 requests by
//! default), so the scenario is some 70 runs: about ten times `hetero`'s time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard_balance::{Policy, PolicySpec, policy};
use switchyard_hash::PrefixAwarePrecise;

use super::LabError;
use super::balanced::{Sizes, run_balancers};
use super::cluster::{ReplicaSpec, run_paused};
use super::hetero::{DEFAULT_REQUESTS, HeteroOptions, Setup, lab_policies};
use super::ideal::run_ideal;
use super::kv_delivery::deliver;
use super::report::{PolicyResult, ReplicaInfo, RequestOutcome, RunRecord};
use crate::report::Table;

/// The policy that routes on the replicas' KV events; not run by default (as in `hetero`), only
/// when named in [`HerdOptions::policies`].
const PRECISE: &str = "prefix-aware-precise";

/// The numbers of balancers run by default.
pub const HERD_BALANCERS: [usize; 4] = [1, 2, 8, 32];

/// Settings of a `herd` run.
#[derive(Debug, Clone, PartialEq)]
pub struct HerdOptions {
    /// Seed of balancer 0's policy; balancer k's is `seed + k`.
    pub seed: u64,
    /// Requests to replay: the first ones of the trace.
    pub requests: usize,
    /// Offered load as a share of the cluster's measured capacity.
    pub load: f64,
    /// A trace file (Azure CSV or Mooncake JSONL) instead of the bundled Azure trace.
    pub trace: Option<PathBuf>,
    /// The numbers of balancers to run (each at least 1).
    pub balancers: Vec<usize>,
    /// The policies to run, by registry name; empty runs every one of [`lab_policies`].
    /// `prefix-aware-precise`, which is not among those, runs here with each balancer's index
    /// fed by every replica's KV events.
    pub policies: Vec<String>,
    /// Every balancer also gets every replica's load report at this interval, out of band (the
    /// worker's ORCA `OpenRcaService`, [`OobReports`](crate::oob_reports::OobReports)); none:
    /// only the reports in the trailers of each balancer's own responses.
    pub load_reports: Option<Duration>,
}

impl Default for HerdOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            requests: DEFAULT_REQUESTS,
            load: 0.7,
            trace: None,
            balancers: HERD_BALANCERS.to_vec(),
            policies: Vec::new(),
            load_reports: None,
        }
    }
}

/// How the arrivals are split among the balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Request `i` to balancer `i mod K`.
    Even,
    /// Balancer 0 gets the even-indexed requests; the others share the odd-indexed ones round
    /// robin.
    Skewed,
    /// No split: one central dispatcher (the ideal) sees every arrival.
    Central,
}

impl Split {
    /// The splits run for the balancers.
    pub const RUN: [Split; 2] = [Split::Even, Split::Skewed];

    /// The balancer, of `k`, that receives request `i`.
    pub fn balancer(self, i: usize, k: usize) -> usize {
        match self {
            _ if k <= 1 => 0,
            Split::Even => i % k,
            Split::Skewed if i.is_multiple_of(2) => 0,
            Split::Skewed => 1 + (i / 2) % (k - 1),
            Split::Central => 0,
        }
    }

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Split::Even => "even",
            Split::Skewed => "skewed",
            Split::Central => "central",
        }
    }
}

/// One row of the report: one policy at one number of balancers and one split.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HerdRow {
    /// The number of independent balancers, K.
    pub balancers: usize,
    /// How the arrivals were split among them.
    pub split: Split,
    /// The policy's figures, as `hetero` reports them (`p99_ttft_vs_ideal` against the ideal).
    #[serde(flatten)]
    pub result: PolicyResult,
    /// Share of picks that herd (see the module docs).
    pub herd_index: f64,
    /// This row's p99 TTFT divided by the same policy's at K = 1 (0 if there is none).
    pub p99_ttft_vs_one: f64,
    /// The prompt tokens found in the replicas' prefix caches over all prompt tokens, of the
    /// requests served (rounded to 1e-4): 0 on a trace without prefix blocks.
    pub prefix_hit_rate: f64,
    /// This row's prefix hit rate divided by the same policy's at K = 1 (0 if that is 0).
    pub prefix_hit_rate_vs_one: f64,
}

/// The report of the `herd` scenario.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HerdReport {
    /// `herd`.
    pub scenario: String,
    /// Balancer 0's seed; balancer k's is `seed + k`.
    pub seed: u64,
    /// Where the workload came from.
    pub trace: String,
    /// Requests replayed (the first ones of the trace).
    pub window_requests: usize,
    /// Factor applied to the trace's arrival times (below 1 replays it faster).
    pub time_scale: f64,
    /// Requests per second one speed-1.0 replica sustains on this trace, as measured.
    pub replica_capacity_rps: f64,
    /// Requests per second the cluster sustains.
    pub capacity_rps: f64,
    /// Target share of `capacity_rps` offered.
    pub target_load: f64,
    /// Requests per second offered.
    pub offered_rps: f64,
    /// The replicas (`hetero`'s).
    pub replicas: Vec<ReplicaInfo>,
    /// The numbers of balancers run.
    pub balancers: Vec<usize>,
    /// The interval of the out-of-band load reports every balancer got, in milliseconds; absent
    /// when they got only their own responses' trailers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_reports_ms: Option<f64>,
    /// Per K (in the order of `balancers`), per split (even, skewed), every policy of
    /// [`lab_policies`]; then the ideal.
    pub rows: Vec<HerdRow>,
}

impl HerdReport {
    /// The row of `policy` at `balancers` and `split`, if the report has one.
    pub fn row(&self, balancers: usize, split: Split, policy: &str) -> Option<&HerdRow> {
        self.rows.iter().find(|r| r.balancers == balancers && r.split == split && r.result.policy == policy)
    }

    /// A terminal summary: the setup, then one row per K, split and policy.
    pub fn summary(&self) -> String {
        let mut table = Table::new([
            "K",
            "split",
            "policy",
            "ttft mean ms",
            "ttft p50 ms",
            "ttft p90 ms",
            "ttft p99 ms",
            "p99 / K=1",
            "max/mean load",
            "herd index",
            "hit rate",
            "errors",
        ]);
        for r in &self.rows {
            table.row([
                r.balancers.to_string(),
                r.split.name().to_string(),
                r.result.policy.clone(),
                format!("{:.1}", r.result.ttft_ms.mean),
                format!("{:.1}", r.result.ttft_ms.p50),
                format!("{:.1}", r.result.ttft_ms.p90),
                format!("{:.1}", r.result.ttft_ms.p99),
                format!("{:.2}×", r.p99_ttft_vs_one),
                format!("{:.2}", r.result.max_mean_load),
                format!("{:.4}", r.herd_index),
                format!("{:.3}", r.prefix_hit_rate),
                r.result.errors.to_string(),
            ]);
        }
        let reports = match self.load_reports_ms {
            Some(ms) => format!(", out-of-band load reports every {ms} ms"),
            None => String::new(),
        };
        format!(
            "lab {}: K independent balancers (K = {:?}) over {} replicas, {} requests of {}, seed {}{reports}\n\
             capacity {:.1} req/s, offered {:.1} req/s ({:.0}% load), time scale {:.5}\n\n{table}",
            self.scenario,
            self.balancers,
            self.replicas.len(),
            self.window_requests,
            self.trace,
            self.seed,
            self.capacity_rps,
            self.offered_rps,
            self.target_load * 100.0,
            self.time_scale,
        )
    }
}

/// Runs the scenario: measures the capacity as `hetero` does, then for each K, split and policy
/// of [`lab_policies`] replays the window through K balancers over one set of fresh replicas
/// under a paused clock; then the ideal once.
pub fn run_herd(options: &HerdOptions) -> Result<HerdReport, LabError> {
    if options.balancers.is_empty() || options.balancers.contains(&0) {
        return Err(LabError::Setting(format!(
            "balancers must be at least 1 each, got {:?}",
            options.balancers
        )));
    }
    let setup = Setup::new(&HeteroOptions {
        seed: options.seed,
        requests: options.requests,
        load: options.load,
        trace: options.trace.clone(),
    })?;
    let window = &setup.records[..setup.n];
    let names: Vec<String> = setup.replicas.iter().map(|r| r.name.clone()).collect();
    let policies: Vec<PolicySpec> = if options.policies.is_empty() {
        lab_policies()
    } else {
        options.policies.iter().map(|name| PolicySpec::named(name.as_str())).collect()
    };
    let mut rows = Vec::new();
    for &k in &options.balancers {
        // With one balancer the splits are one assignment: run once, reported under both.
        let splits: &[Split] = if k == 1 { &[Split::Even] } else { &Split::RUN };
        for &split in splits {
            let run = policies
                .iter()
                .map(|spec| {
                    run_row(spec, k, split, options, &setup.replicas, window, setup.time_scale, &names)
                })
                .collect::<Result<Vec<_>, _>>()?;
            if k == 1 {
                for split in Split::RUN {
                    rows.extend(run.iter().cloned().map(|row| HerdRow { split, ..row }));
                }
            } else {
                rows.extend(run);
            }
        }
    }
    let ideal_run = run_paused(run_ideal(&setup.replicas, window, setup.time_scale))??;
    let ideal = PolicyResult::summarise("ideal", &ideal_run, &names);
    rows.push(HerdRow {
        balancers: 1,
        split: Split::Central,
        result: ideal,
        herd_index: 0.0,
        p99_ttft_vs_one: 0.0,
        prefix_hit_rate: hit_rate(&ideal_run, window),
        prefix_hit_rate_vs_one: 0.0,
    });

    let ideal_p99 = rows.last().map_or(0.0, |r| r.result.ttft_ms.p99);
    let ones: Vec<(String, f64, f64)> = rows
        .iter()
        .filter(|r| r.balancers == 1 && r.split != Split::Skewed)
        .map(|r| (r.result.policy.clone(), r.result.ttft_ms.p99, r.prefix_hit_rate))
        .collect();
    for row in &mut rows {
        row.result.p99_ttft_vs_ideal = ratio(row.result.ttft_ms.p99, ideal_p99);
        let one = ones.iter().find(|(p, _, _)| *p == row.result.policy);
        row.p99_ttft_vs_one = ratio(row.result.ttft_ms.p99, one.map_or(0.0, |o| o.1));
        row.prefix_hit_rate_vs_one = ratio(row.prefix_hit_rate, one.map_or(0.0, |o| o.2));
    }

    Ok(HerdReport {
        scenario: "herd".to_string(),
        seed: options.seed,
        trace: setup.trace,
        window_requests: setup.n,
        time_scale: setup.time_scale,
        replica_capacity_rps: setup.replica_capacity_rps,
        capacity_rps: setup.capacity_rps,
        target_load: options.load,
        offered_rps: setup.offered_rps,
        replicas: setup
            .replicas
            .iter()
            .map(|r| ReplicaInfo { name: r.name.clone(), speed: r.config.speed, weight: r.weight() })
            .collect(),
        balancers: options.balancers.clone(),
        load_reports_ms: options.load_reports.map(|i| i.as_secs_f64() * 1e3),
        rows,
    })
}

/// As [`LabReport::compare_with_ideal`](super::LabReport::compare_with_ideal) rounds it.
fn ratio(value: f64, base: f64) -> f64 {
    if base > 0.0 && base.is_finite() { (value / base * 1e3).round() / 1e3 } else { 0.0 }
}

/// One policy's run with `k` balancers and `split`.
#[allow(clippy::too_many_arguments)]
fn run_row(
    spec: &PolicySpec,
    k: usize,
    split: Split,
    options: &HerdOptions,
    replicas: &[ReplicaSpec],
    window: &[switchyard_sim::TraceRecord],
    time_scale: f64,
    names: &[String],
) -> Result<HerdRow, LabError> {
    // `prefix-aware-precise` routes on the replicas' KV events: each balancer gets its own
    // index, fed by every replica's stream (as every gateway subscribes to every worker).
    let mut feeds = Vec::new();
    let policies: Vec<Arc<dyn Policy>> = if spec.name() == PRECISE {
        (0..k)
            .map(|_| {
                let precise = Arc::new(PrefixAwarePrecise::from_spec(spec)?);
                feeds.push(precise.feed().clone());
                Ok::<Arc<dyn Policy>, LabError>(precise)
            })
            .collect::<Result<_, _>>()?
    } else {
        (0..k)
            .map(|b| policy::registry().build(spec, options.seed.wrapping_add(b as u64)))
            .collect::<Result<_, _>>()?
    };
    let attach = |engines: &[switchyard_sim::EngineHandle]| {
        feeds.iter().flat_map(|feed| deliver(feed, names, engines, Duration::ZERO)).collect()
    };
    let run = run_paused(run_balancers(
        policies,
        |i| split.balancer(i, k),
        Sizes::Known,
        replicas,
        window,
        time_scale,
        options.load_reports,
        attach,
    ))??;
    tracing::info!(policy = spec.name(), k, split = split.name(), "lab herd: run done");
    Ok(HerdRow {
        balancers: k,
        split,
        herd_index: herd_index(&run, names.len()),
        result: PolicyResult::summarise(spec.name(), &run, names),
        p99_ttft_vs_one: 0.0,
        prefix_hit_rate: hit_rate(&run, window),
        prefix_hit_rate_vs_one: 0.0,
    })
}

/// The prompt tokens found cached over all prompt tokens, of the requests of `run` served
/// (`run`'s outcomes are `window`'s records in order), rounded to 1e-4.
fn hit_rate(run: &RunRecord, window: &[switchyard_sim::TraceRecord]) -> f64 {
    let (mut cached, mut total) = (0u64, 0u64);
    for (o, r) in run.outcomes.iter().zip(window) {
        if !o.failed() {
            cached += u64::from(o.cached_prompt_tokens);
            total += u64::from(r.prompt_tokens);
        }
    }
    if total == 0 { 0.0 } else { (cached as f64 / total as f64 * 1e4).round() / 1e4 }
}

/// When a request stopped being in flight on its replica: its last token, or, for a request that
/// failed, its first token or its dispatch.
fn end_of(o: &RequestOutcome) -> Duration {
    o.latency.or(o.ttft).map_or(o.dispatched, |d| o.arrived + d)
}

/// The share of `run`'s picks that herd, over `replicas` replicas (see the module docs), rounded
/// to 1e-4.
pub fn herd_index(run: &RunRecord, replicas: usize) -> f64 {
    let outcomes = &run.outcomes;
    // S_r: the mean TTFT of the requests replica r served.
    let mut sum = vec![Duration::ZERO; replicas];
    let mut count = vec![0u32; replicas];
    for o in outcomes {
        if let (Some(r), Some(ttft)) = (o.replica.filter(|&r| r < replicas), o.ttft) {
            sum[r] += ttft;
            count[r] += 1;
        }
    }
    let service: Vec<Duration> =
        sum.iter().zip(&count).map(|(s, &c)| if c == 0 { Duration::ZERO } else { *s / c }).collect();

    // Picks in time order: the arrival loop picks in request order.
    let mut picks: Vec<&RequestOutcome> =
        outcomes.iter().filter(|o| o.replica.is_some_and(|r| r < replicas)).collect();
    picks.sort_by_key(|o| o.dispatched);
    let mut in_flight = vec![0usize; replicas];
    let mut ends: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
    let mut recent: Vec<VecDeque<(Duration, usize)>> = vec![VecDeque::new(); replicas];
    let mut herded = 0usize;
    for o in &picks {
        let Some(r) = o.replica else { continue };
        let t = o.dispatched;
        while let Some(&Reverse((end, done))) = ends.peek() {
            if end > t {
                break;
            }
            ends.pop();
            in_flight[done] = in_flight[done].saturating_sub(1);
        }
        let idle = in_flight.contains(&0);
        let window = &mut recent[r];
        while window.front().is_some_and(|&(at, _)| t.saturating_sub(at) >= service[r]) {
            window.pop_front();
        }
        let other = window.iter().any(|&(_, b)| b != o.balancer);
        if idle && other {
            herded += 1;
        }
        window.push_back((t, o.balancer));
        in_flight[r] += 1;
        ends.push(Reverse((end_of(o), r)));
    }
    if picks.is_empty() { 0.0 } else { (herded as f64 / picks.len() as f64 * 1e4).round() / 1e4 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(balancer: usize, replica: usize, at_ms: u64, ttft_ms: u64, latency_ms: u64) -> RequestOutcome {
        RequestOutcome {
            replica: Some(replica),
            arrived: Duration::from_millis(at_ms),
            dispatched: Duration::from_millis(at_ms),
            ttft: Some(Duration::from_millis(ttft_ms)),
            latency: Some(Duration::from_millis(latency_ms)),
            balancer,
            ..RequestOutcome::default()
        }
    }

    #[test]
    fn splits_send_each_request_to_one_balancer() {
        assert_eq!((0..8).map(|i| Split::Even.balancer(i, 4)).collect::<Vec<_>>(), [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(
            (0..8).map(|i| Split::Skewed.balancer(i, 3)).collect::<Vec<_>>(),
            [0, 1, 0, 2, 0, 1, 0, 2]
        );
        assert!((0..100).all(|i| Split::Skewed.balancer(i, 1) == 0 && Split::Even.balancer(i, 1) == 0));
    }

    #[test]
    fn two_balancers_on_one_replica_while_another_idles_herd() {
        // Two replicas, S = 100 ms on replica 0. Balancer 1 picks replica 0 10 ms after balancer
        // 0 did, while replica 1 is idle: one herding pick out of two.
        let run = RunRecord { outcomes: vec![pick(0, 0, 0, 100, 500), pick(1, 0, 10, 100, 500)] };
        assert_eq!(herd_index(&run, 2), 0.5);
        // The same balancer twice is not a herd.
        let run = RunRecord { outcomes: vec![pick(0, 0, 0, 100, 500), pick(0, 0, 10, 100, 500)] };
        assert_eq!(herd_index(&run, 2), 0.0);
        // Nor is a pick after the first's service time.
        let run = RunRecord { outcomes: vec![pick(0, 0, 0, 100, 500), pick(1, 0, 100, 100, 500)] };
        assert_eq!(herd_index(&run, 2), 0.0);
        // Nor one while no replica idles.
        let run = RunRecord {
            outcomes: vec![pick(0, 1, 0, 100, 500), pick(0, 0, 0, 100, 500), pick(1, 0, 10, 100, 500)],
        };
        assert_eq!(herd_index(&run, 2), 0.0);
    }
}
