//! Scenario `herd`: many balancers, one fleet (issue 25), over real processes.
//!
//! A fleet is rarely fronted by one balancer: several gateway replicas share the same workers,
//! and each sees only the calls it sent itself. When they all count the same worker as the
//! least loaded, they send it their next calls at once, and its queue grows in bursts that no
//! single balancer caused: the herd. What the gateways share is what the workers tell every
//! caller: the ORCA load report in the trailers of each response (queue, running requests, KV
//! use). No state is shared between the gateways; nginx and HAProxy have only their local
//! connection counts, which herd too.
//!
//! The workers and the load are `hetero`'s ([`hetero::SPEEDS`], [`hetero::LOAD`]): four
//! `switchyard worker` processes, one five times slower, with `GET /metrics` on, and the bundled
//! Azure conversation trace, time-scaled to about 64 % of their capacity over `--duration`
//! seconds, sent as streaming `ModelStreamInfer` calls. The targets, in this order, over the same
//! workers:
//!
//! - `switchyard x1`: one gateway, one load generator sending the whole trace;
//! - `switchyard x4`: four gateway processes, each with its own listener;
//! - `switchyard x4 load-report oob`: the same four with the `load-report` policy, each
//!   subscribed to every worker's out-of-band load reports every 20 ms (`--load-reports 20ms`,
//!   [`crate::oob_reports`]), so that each hears what the other three sent;
//! - `nginx:least_conn x4`: four nginx instances, `least_conn`;
//! - `haproxy:leastconn x4`: four HAProxy instances, `leastconn`.
//!
//! With four front-ends the trace's arrivals are dealt round robin (call `i` to front-end
//! `i mod 4`), each front-end with a load generator of its own ([`crate::loadgen::drive_sampled`]
//! over its own connection) that keeps each call's arrival time, all four started together in the
//! bench process: together they send exactly the single load generator's calls at the same times,
//! each at a quarter of the rate. The gateways of `switchyard x1` and `switchyard x4` run
//! `--policy`, by default the gateway's default policy ([`PolicyKind::DEFAULT`], as
//! `switchyard gateway` without `--policy`). A single front-end runs
//! `--proxy-threads` threads; each of four runs `max(1, proxy_threads / 4)`, so that the four
//! together hold no more threads than the one where the machine's cores allow it.
//!
//! Per target the report gives the calls, the successes, the failures by status, the time to
//! first token and the latency merged over the load generators, the successes of each load
//! generator, and each worker's share of the prompt tokens it admitted during the target (from
//! its `/metrics`). The issue's targets: the four gateways' p99 TTFT at most 1.2 × one gateway's
//! at the same load, and at most 0.5 × the better of four nginx and four HAProxy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use switchyard_balance::PolicyKind;
use switchyard_sim::TraceRecord;

use super::peers::{self, PeerBalance, PeerKind};
use super::processes::ChildProcess;
use super::{BenchArgs, BenchError, Proxy, START_TIMEOUT, hetero};
use crate::cluster::{REPLICA_CAPACITY_RPS, prompt_tokens_from_metrics, time_scale_for_window};
use crate::loadgen::{self, LoadgenArgs, LoadgenReport, Outcome, RequestSample};
use crate::report::{Percentiles, Table};

/// Front-ends of the herd targets.
pub const FRONTS: usize = 4;

/// The most the herd's p99 TTFT may be over one gateway's (issue 25).
pub const MAX_OVER_ONE: f64 = 1.2;

/// The most the herd's p99 TTFT may be over the better peer herd's (issue 25).
pub const MAX_OVER_PEERS: f64 = 0.5;

/// What one target measured, merged over its load generators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HerdResult {
    /// `switchyard x1`, `switchyard x4`, `nginx:least_conn x4` or `haproxy:leastconn x4`.
    pub target: String,
    /// Front-end processes (each with its own load generator).
    pub fronts: usize,
    /// Threads (nginx: worker processes) of each front-end.
    pub threads_per_front: usize,
    /// Calls scheduled.
    pub requests: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed calls by gRPC status, plus `dropped` (not sent: too many in flight).
    pub errors: BTreeMap<String, u64>,
    /// Time to first token of the successful calls, in milliseconds.
    pub ttft_ms: Percentiles,
    /// Latency of the successful calls, in milliseconds.
    pub latency_ms: Percentiles,
    /// Successful calls of each load generator (front-end), in order.
    pub ok_per_front: Vec<u64>,
    /// Each worker's share of the prompt tokens the workers admitted during the target.
    pub prompt_token_share: Vec<f64>,
}

/// The issue's targets, judged on one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HerdVerdict {
    /// `switchyard x4`'s p99 TTFT over `switchyard x1`'s.
    pub x4_over_x1_p99: f64,
    /// At most [`MAX_OVER_ONE`], with no call lost by `switchyard x4`.
    pub x4_over_x1_met: bool,
    /// The peer herd with the lower p99 TTFT.
    pub best_peer: String,
    /// `switchyard x4`'s p99 TTFT over the best peer herd's.
    pub x4_over_best_peer_p99: f64,
    /// At most [`MAX_OVER_PEERS`], with no call lost by `switchyard x4`.
    pub x4_over_best_peer_met: bool,
    /// `switchyard x4 load-report oob`'s p99 TTFT over `switchyard x1`'s, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports_x4_over_x1_p99: Option<f64>,
    /// `switchyard x4 load-report oob`'s p99 TTFT over the best peer herd's, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports_x4_over_best_peer_p99: Option<f64>,
}

/// The report of scenario `herd`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HerdReport {
    /// `herd`.
    pub scenario: String,
    /// The workers' speeds.
    pub speeds: Vec<f64>,
    /// Seconds of trace replayed per target.
    pub duration_s: f64,
    /// The trace's time scale.
    pub time_scale: f64,
    /// Offered requests/s, over all front-ends.
    pub offered_rps: f64,
    /// Offered load over capacity.
    pub load: f64,
    /// How the calls are dealt to the front-ends.
    pub split: String,
    /// The gateways' policy.
    pub gateway_policy: String,
    /// One entry per target, in the order run.
    pub results: Vec<HerdResult>,
    /// The issue's targets; `None` when a target is missing.
    pub verdict: Option<HerdVerdict>,
}

/// Target names, in the order run.
const X1: &str = "switchyard x1";
const X4: &str = "switchyard x4";
const X4_REPORTS: &str = "switchyard x4 load-report oob";
/// The out-of-band report interval of [`X4_REPORTS`].
const REPORTS_EVERY: &str = "20ms";
const NGINX_X4: &str = "nginx:least_conn x4";
const HAPROXY_X4: &str = "haproxy:leastconn x4";

impl HerdReport {
    /// The results as a table, p99 TTFT first.
    pub fn table(&self) -> Table {
        let mut table = Table::new([
            "target",
            "p99 TTFT ms",
            "p90",
            "p50",
            "p99 latency ms",
            "ok",
            "requests",
            "worker prompt-token shares",
        ]);
        for r in &self.results {
            table.row([
                r.target.clone(),
                format!("{:.0}", r.ttft_ms.p99),
                format!("{:.0}", r.ttft_ms.p90),
                format!("{:.0}", r.ttft_ms.p50),
                format!("{:.0}", r.latency_ms.p99),
                r.ok.to_string(),
                r.requests.to_string(),
                shares_text(&r.prompt_token_share),
            ]);
        }
        table
    }

    /// A heading, the table and the verdicts.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "bench herd: workers {:?}, {:.1} req/s offered ({:.0}% of capacity), {} s per target, \
             gateway policy {}\n\n{}",
            self.speeds,
            self.offered_rps,
            self.load * 100.0,
            self.duration_s,
            self.gateway_policy,
            self.table()
        );
        if let Some(v) = &self.verdict {
            let _ = write!(
                out,
                "\ntargets: x4 p99 TTFT ≤ {MAX_OVER_ONE} × x1's: {:.2}× ({}); \
                 x4 p99 TTFT ≤ {MAX_OVER_PEERS} × the best peer's ({}): {:.2}× ({})\n",
                v.x4_over_x1_p99,
                met(v.x4_over_x1_met),
                v.best_peer,
                v.x4_over_best_peer_p99,
                met(v.x4_over_best_peer_met),
            );
        }
        out
    }

    /// The report as markdown: the command, the setup, the figures and the verdicts
    /// (`reports/bench/herd.md`).
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Bench `herd`: four balancers, one fleet (issue 25, item 3)\n\n");
        let _ = write!(
            out,
            "Written by the bench itself:\n\n```sh\ntarget/release/switchyard bench herd --duration {} \
             --json reports/bench/herd.json\n```\n\n",
            self.duration_s
        );
        let x4_threads = self.results.iter().find(|r| r.fronts > 1).map_or(0, |r| r.threads_per_front);
        let x1_threads = self.results.iter().find(|r| r.fronts == 1).map_or(0, |r| r.threads_per_front);
        let _ = write!(
            out,
            "Setup: four `switchyard worker` processes (speeds {}), the bundled Azure conversation trace \
             replayed as streaming `ModelStreamInfer` calls at {:.1} req/s ({:.0} % of the workers' \
             capacity) for {} s of trace per target, one target after the other over the same workers. \
             `x1` is one front-end and one load generator; `x4` is four front-end processes, the calls \
             dealt {}, each front-end with its own load generator in the bench process (every call keeps \
             its arrival time). The gateways run `{}` (the gateway's default) and share no state; nginx \
             runs `least_conn`, HAProxy `leastconn`. Threads per front-end: {} with one, {} with four \
             (nginx: worker processes). TTFT and latency in ms from the clients, merged over the load \
             generators; shares: each worker's part of the prompt tokens admitted during the target, \
             from its `/metrics`.\n\n",
            self.speeds.iter().map(|s| format!("{s}")).collect::<Vec<_>>().join(", "),
            self.offered_rps,
            self.load * 100.0,
            self.duration_s,
            self.split,
            self.gateway_policy,
            x1_threads,
            x4_threads,
        );
        out.push_str(
            "| target | TTFT p99 | p90 | p50 | mean | latency p99 | ok / requests | errors | ok per front-end | worker shares |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for r in &self.results {
            let errors = super::errors_text(&r.errors);
            let per_front = r.ok_per_front.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} / {} | {} | {} | {} |",
                r.target,
                r.ttft_ms.p99,
                r.ttft_ms.p90,
                r.ttft_ms.p50,
                r.ttft_ms.mean,
                r.latency_ms.p99,
                r.ok,
                r.requests,
                errors,
                per_front,
                shares_text(&r.prompt_token_share),
            );
        }
        out.push_str("\n## Against the issue's targets\n\n");
        match &self.verdict {
            Some(v) => {
                let _ = write!(
                    out,
                    "| target | measured | verdict |\n| --- | --- | --- |\n\
                     | `switchyard x4` p99 TTFT ≤ {MAX_OVER_ONE} × `switchyard x1`'s | {:.2}× | {} |\n\
                     | `switchyard x4` p99 TTFT ≤ {MAX_OVER_PEERS} × the best peer herd's (`{}`) | {:.2}× | {} |\n",
                    v.x4_over_x1_p99,
                    met(v.x4_over_x1_met),
                    v.best_peer,
                    v.x4_over_best_peer_p99,
                    met(v.x4_over_best_peer_met),
                );
                if let (Some(one), Some(peer)) = (v.reports_x4_over_x1_p99, v.reports_x4_over_best_peer_p99) {
                    let _ = write!(
                        out,
                        "| `{X4_REPORTS}` p99 TTFT ≤ {MAX_OVER_ONE} × `switchyard x1`'s | {one:.2}× | {} |\n\
                         | `{X4_REPORTS}` p99 TTFT ≤ {MAX_OVER_PEERS} × the best peer herd's | {peer:.2}× | {} |\n",
                        met(one <= MAX_OVER_ONE),
                        met(peer <= MAX_OVER_PEERS),
                    );
                }
            }
            None => out.push_str("Not judged: a target did not run.\n"),
        }
        out
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

fn shares_text(shares: &[f64]) -> String {
    shares.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" ")
}

/// The issue's targets from `results`: `None` unless `switchyard x1`, `switchyard x4` and at
/// least one peer herd ran.
pub fn verdict(results: &[HerdResult]) -> Option<HerdVerdict> {
    let find = |name: &str| results.iter().find(|r| r.target == name);
    let (x1, x4) = (find(X1)?, find(X4)?);
    let best = [find(NGINX_X4), find(HAPROXY_X4)]
        .into_iter()
        .flatten()
        .min_by(|a, b| a.ttft_ms.p99.total_cmp(&b.ttft_ms.p99))?;
    let ratio_of = |r: &HerdResult, over: f64| if over > 0.0 { r.ttft_ms.p99 / over } else { f64::INFINITY };
    let ratio = |over: f64| ratio_of(x4, over);
    let reports = find(X4_REPORTS);
    let lost_none = x4.ok == x4.requests;
    let (over_one, over_peer) = (ratio(x1.ttft_ms.p99), ratio(best.ttft_ms.p99));
    Some(HerdVerdict {
        x4_over_x1_p99: over_one,
        x4_over_x1_met: lost_none && over_one <= MAX_OVER_ONE,
        best_peer: best.target.clone(),
        x4_over_best_peer_p99: over_peer,
        x4_over_best_peer_met: lost_none && over_peer <= MAX_OVER_PEERS,
        reports_x4_over_x1_p99: reports.map(|r| ratio_of(r, x1.ttft_ms.p99)),
        reports_x4_over_best_peer_p99: reports.map(|r| ratio_of(r, best.ttft_ms.p99)),
    })
}

/// `records` dealt round robin to `fronts` load generators (record `i` to `i mod fronts`), each
/// keeping its arrival time.
pub fn deal(records: &[TraceRecord], fronts: usize) -> Vec<Vec<TraceRecord>> {
    let fronts = fronts.max(1);
    let mut parts = vec![Vec::with_capacity(records.len() / fronts + 1); fronts];
    for (i, record) in records.iter().enumerate() {
        parts[i % fronts].push(record.clone());
    }
    parts
}

/// The load generators' reports and samples merged into one target's figures (no worker shares).
pub fn merge(
    target: &str,
    threads_per_front: usize,
    runs: Vec<(LoadgenReport, Vec<RequestSample>)>,
) -> HerdResult {
    let mut errors = BTreeMap::new();
    let (mut requests, mut ok, mut ok_per_front) = (0, 0, Vec::with_capacity(runs.len()));
    let (mut ttft, mut latency) = (Vec::new(), Vec::new());
    let fronts = runs.len();
    for (report, samples) in runs {
        requests += report.requests;
        ok += report.ok;
        ok_per_front.push(report.ok);
        for (code, n) in report.errors {
            *errors.entry(code).or_insert(0) += n;
        }
        if report.dropped > 0 {
            *errors.entry("dropped".to_string()).or_insert(0) += report.dropped;
        }
        for sample in samples {
            if let Outcome::Ok { ttft: t, latency: l, .. } = sample.outcome {
                ttft.push(t.as_secs_f64() * 1e3);
                latency.push(l.as_secs_f64() * 1e3);
            }
        }
    }
    HerdResult {
        target: target.to_string(),
        fronts,
        threads_per_front,
        requests,
        ok,
        errors,
        ttft_ms: Percentiles::of(&mut ttft),
        latency_ms: Percentiles::of(&mut latency),
        ok_per_front,
        prompt_token_share: Vec::new(),
    }
}

/// Which front-ends a target runs.
#[derive(Debug, Clone, Copy)]
enum Front {
    /// A gateway with this policy.
    Gateway(PolicyKind),
    /// A gateway with `load-report` and out-of-band load reports every [`REPORTS_EVERY`].
    GatewayReports,
    Peer(PeerKind, &'static str),
}

/// Runs the scenario with its processes under `dir`.
pub(crate) async fn run(
    args: &BenchArgs,
    policy: PolicyKind,
    exe: &Path,
    nginx_exe: &Path,
    haproxy_exe: &Path,
    dir: &Path,
) -> Result<HerdReport, BenchError> {
    let trace = crate::traces::azure_conv().map_err(|e| BenchError::Setup(format!("bundled trace: {e}")))?;
    let (time_scale, _) = time_scale_for_window(&trace, args.duration, &hetero::SPEEDS, hetero::LOAD);
    drop(trace);
    if !(time_scale.is_finite() && time_scale > 0.0) {
        return Err(BenchError::Setup("cannot compute a time scale for the bundled trace".into()));
    }
    let template =
        LoadgenArgs { time_scale, duration: Some(args.duration), stream: true, ..LoadgenArgs::default() };
    let (records, source) =
        loadgen::schedule(&template).map_err(|e| BenchError::Setup(format!("schedule: {e}")))?;
    let span = records.last().map_or(0.0, |r| r.at.as_secs_f64() * time_scale);
    if records.len() < 2 || span <= 0.0 {
        return Err(BenchError::Invalid(format!(
            "--duration {} s holds {} calls of the trace: too few",
            args.duration,
            records.len()
        )));
    }
    let rate = (records.len() - 1) as f64 / span;
    let capacity = REPLICA_CAPACITY_RPS * hetero::SPEEDS.iter().sum::<f64>();

    let mut workers = Vec::new();
    for (i, speed) in hetero::SPEEDS.iter().enumerate() {
        workers.push(super::start_metered_worker(exe, i, *speed).await?);
    }
    let addresses: Vec<String> = workers.iter().map(|(_, a, _)| a.clone()).collect();
    let metrics: Vec<String> = workers.iter().map(|(_, _, m)| m.clone()).collect();
    eprintln!(
        "bench: herd: workers {:?} on {}; {} calls at {rate:.1} req/s",
        hetero::SPEEDS,
        addresses.join(" "),
        records.len()
    );

    let threads = args.proxy_threads();
    let targets = [
        (X1, 1, Front::Gateway(policy)),
        (X4, FRONTS, Front::Gateway(policy)),
        (X4_REPORTS, FRONTS, Front::GatewayReports),
        (NGINX_X4, FRONTS, Front::Peer(PeerKind::Nginx, "least_conn")),
        (HAPROXY_X4, FRONTS, Front::Peer(PeerKind::Haproxy, "leastconn")),
    ];
    let mut results = Vec::new();
    let mut outcome = Ok(());
    for (name, fronts, front) in targets {
        let threads_per_front = if fronts == 1 { threads } else { (threads / fronts).max(1) };
        let program = match front {
            Front::Peer(PeerKind::Nginx, _) => nginx_exe,
            Front::Peer(PeerKind::Haproxy, _) => haproxy_exe,
            Front::Gateway(_) | Front::GatewayReports => exe,
        };
        let run = async {
            let mut proxies = Vec::new();
            let started =
                start_fronts(front, fronts, program, threads_per_front, &addresses, dir, &mut proxies).await;
            let result = match started {
                Ok(fronts) => {
                    replay(name, threads_per_front, &fronts, &records, &source, &template, &metrics).await
                }
                Err(e) => Err(e),
            };
            for proxy in proxies {
                proxy.stop().await;
            }
            result
        };
        match run.await {
            Ok(result) => results.push(result),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    super::stop_children(workers.into_iter().map(|(child, _, _)| child)).await;
    outcome?;
    Ok(HerdReport {
        scenario: "herd".into(),
        speeds: hetero::SPEEDS.to_vec(),
        duration_s: args.duration,
        time_scale,
        offered_rps: rate,
        load: rate / capacity,
        split: "round robin by arrival (call i to front-end i mod 4)".into(),
        gateway_policy: policy.name().to_string(),
        verdict: verdict(&results),
        results,
    })
}

/// Starts `fronts` front-ends of kind `front` over `workers`, pushing each onto `proxies` as it
/// starts (so that the caller stops them all, even after a failure); returns their addresses.
async fn start_fronts(
    front: Front,
    fronts: usize,
    program: &Path,
    threads: usize,
    workers: &[String],
    dir: &Path,
    proxies: &mut Vec<Proxy>,
) -> Result<Vec<String>, BenchError> {
    let mut addresses = Vec::with_capacity(fronts);
    for k in 0..fronts {
        match front {
            Front::Gateway(_) | Front::GatewayReports => {
                let gateway_args = if let Front::Gateway(policy) = front {
                    super::gateway_args(workers, policy, threads)
                } else {
                    let mut args = super::gateway_args(workers, PolicyKind::LoadReport, threads);
                    args.extend(["--load-reports".to_string(), REPORTS_EVERY.to_string()]);
                    args
                };
                let (child, mut logged) = ChildProcess::start(
                    &format!("gateway-{k}"),
                    program,
                    &gateway_args,
                    &["gateway serving on "],
                    START_TIMEOUT,
                )
                .await?;
                proxies.push(Proxy::Gateway(child));
                addresses.push(logged.remove(0));
            }
            Front::Peer(kind, label) => {
                let peer_dir = dir.join(format!("herd-{}-{label}-{k}", kind.program()));
                let peer =
                    peers::start(kind, program, PeerBalance::LeastConn, threads, workers, &peer_dir).await?;
                addresses.push(peer.address.clone());
                proxies.push(Proxy::Peer(peer));
            }
        }
    }
    Ok(addresses)
}

/// Replays `records` dealt to the front-ends at `fronts`, one load generator each, all at once;
/// then reads the workers' prompt tokens admitted meanwhile from their `/metrics` at `metrics`.
async fn replay(
    target: &str,
    threads_per_front: usize,
    fronts: &[String],
    records: &[TraceRecord],
    source: &str,
    template: &LoadgenArgs,
    metrics: &[String],
) -> Result<HerdResult, BenchError> {
    eprintln!("bench: {target} on {}", fronts.join(" "));
    let before = prompt_tokens(metrics).await?;
    let mut channels = Vec::with_capacity(fronts.len());
    for address in fronts {
        channels
            .push(loadgen::connect(address).await.map_err(|e| BenchError::Setup(format!("{target}: {e}")))?);
    }
    let runs = channels.into_iter().zip(deal(records, fronts.len())).zip(fronts).map(
        |((channel, part), address)| {
            let args = LoadgenArgs { target: format!("http://{address}"), ..template.clone() };
            async move { loadgen::drive_sampled(channel, part, source.to_string(), &args).await }
        },
    );
    let runs = futures::future::join_all(runs).await;
    let mut result = merge(target, threads_per_front, runs);
    let after = prompt_tokens(metrics).await?;
    let admitted: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
    result.prompt_token_share = crate::cluster::shares(&admitted);
    // Every call has ended here, but one that failed (a deadline, say) may still hold a place in
    // a worker's queue: then let the queues drain before the next target.
    if result.ok < result.requests {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(result)
}

/// Each worker's prompt tokens admitted so far, from its `/metrics`.
async fn prompt_tokens(metrics: &[String]) -> Result<Vec<u64>, BenchError> {
    let mut tokens = Vec::with_capacity(metrics.len());
    for (i, address) in metrics.iter().enumerate() {
        let text = crate::cluster::fetch_metrics(address)
            .await
            .map_err(|e| BenchError::Setup(format!("worker-{i}'s metrics on {address}: {e}")))?;
        tokens.push(prompt_tokens_from_metrics(&text).map_or(0, |t| t.prompt));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(target: &str, p99: f64, ok: u64) -> HerdResult {
        HerdResult {
            target: target.into(),
            fronts: 4,
            threads_per_front: 1,
            requests: 100,
            ok,
            errors: BTreeMap::new(),
            ttft_ms: Percentiles { p99, ..Percentiles::default() },
            latency_ms: Percentiles::default(),
            ok_per_front: vec![25; 4],
            prompt_token_share: vec![0.3, 0.3, 0.3, 0.1],
        }
    }

    #[test]
    fn the_verdict_compares_four_gateways_with_one_and_with_the_better_peer() {
        let results = vec![
            result(X1, 200.0, 100),
            result(X4, 220.0, 100),
            result(NGINX_X4, 900.0, 100),
            result(HAPROXY_X4, 500.0, 100),
        ];
        let v = verdict(&results).unwrap_or_else(|| panic!("all targets ran"));
        assert!((v.x4_over_x1_p99 - 1.1).abs() < 1e-9 && v.x4_over_x1_met);
        assert_eq!(v.best_peer, HAPROXY_X4);
        assert!((v.x4_over_best_peer_p99 - 0.44).abs() < 1e-9 && v.x4_over_best_peer_met);

        let mut lossy = results.clone();
        lossy[1].ok = 99;
        let v = verdict(&lossy).unwrap_or_else(|| panic!("all targets ran"));
        assert!(!v.x4_over_x1_met && !v.x4_over_best_peer_met, "a lost call fails both targets");
        assert!(verdict(&results[..2]).is_none(), "no peer herd, no verdict");
    }

    #[test]
    fn dealing_keeps_every_call_and_its_arrival_time() {
        let records: Vec<TraceRecord> = (0..10u64)
            .map(|i| TraceRecord {
                at: Duration::from_millis(i * 10),
                prompt_tokens: 1,
                output_tokens: 1,
                prefix: switchyard_core::PrefixBlocks::default(),
            })
            .collect();
        let parts = deal(&records, 4);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2, 2]);
        assert_eq!(parts[1].iter().map(|r| r.at.as_millis()).collect::<Vec<_>>(), [10, 50, 90]);
        assert_eq!(deal(&records, 1), vec![records.clone()]);
    }

    #[test]
    fn merging_pools_the_samples_and_adds_the_counts() {
        let sample = |ms: u64| RequestSample {
            sent_at: Duration::ZERO,
            outcome: Outcome::Ok {
                ttft: Duration::from_millis(ms),
                latency: Duration::from_millis(2 * ms),
                output_tokens: 1,
            },
        };
        let report = |ok: u64, dropped: u64| LoadgenReport {
            target: String::new(),
            mode: "stream".into(),
            source: String::new(),
            requests: ok + dropped + 1,
            ok,
            errors: BTreeMap::from([("UNAVAILABLE".to_string(), 1)]),
            dropped,
            ttft_ms: Percentiles::default(),
            latency_ms: Percentiles::default(),
            output_tokens_per_s: 0.0,
            arrival_rate: 0.0,
            offered_rate: 0.0,
            duration_s: 0.0,
        };
        let merged = merge(
            X4,
            1,
            vec![
                (
                    report(2, 0),
                    vec![
                        sample(10),
                        sample(30),
                        RequestSample { sent_at: Duration::ZERO, outcome: Outcome::Failed("UNAVAILABLE") },
                    ],
                ),
                (report(1, 2), vec![sample(20)]),
            ],
        );
        assert_eq!((merged.fronts, merged.requests, merged.ok), (2, 7, 3));
        assert_eq!(merged.ok_per_front, [2, 1]);
        assert_eq!(merged.errors, BTreeMap::from([("UNAVAILABLE".into(), 2), ("dropped".into(), 2)]));
        assert!((merged.ttft_ms.mean - 20.0).abs() < 1e-9 && merged.ttft_ms.p99 == 30.0);
        assert_eq!(merged.latency_ms.p99, 60.0);
    }

    #[test]
    fn the_markdown_states_the_verdicts() {
        let results = vec![
            result(X1, 200.0, 100),
            result(X4, 300.0, 100),
            result(NGINX_X4, 900.0, 100),
            result(HAPROXY_X4, 500.0, 100),
        ];
        let report = HerdReport {
            scenario: "herd".into(),
            speeds: hetero::SPEEDS.to_vec(),
            duration_s: 30.0,
            time_scale: 0.1,
            offered_rps: 37.7,
            load: 0.64,
            split: "round robin".into(),
            gateway_policy: PolicyKind::DEFAULT.name().into(),
            verdict: verdict(&results),
            results,
        };
        let md = report.markdown();
        assert!(md.contains("| 1.50× | not met |"), "{md}");
        assert!(md.contains("(`haproxy:leastconn x4`) | 0.60× | not met |"), "{md}");
        let summary = report.summary();
        assert!(summary.contains("1.50× (not met)") && summary.contains("0.30 0.30 0.30 0.10"), "{summary}");
    }
}
