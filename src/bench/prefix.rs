//! Scenario `prefix`: prefix-cache-aware routing over real worker processes, against nginx's
//! consistent hashing on the session header and its `least_conn`.
//!
//! Eight workers (`switchyard worker --speed 5 --kv-capacity K --metrics-listen ...`, the lab's
//! `prefix` replicas run five times faster so that the run takes minutes, not the trace's hour)
//! serve the first [`REQUESTS`] requests of the bundled Mooncake conversation trace, whose
//! `hash_ids` are the prompts' 512-token KV blocks, sent as each request's `prefix_hashes`
//! parameter (as the load generator replays any trace). Every request also carries its session in
//! `x-session-id`: the conversation its first two blocks name ([`crate::loadgen::session_of`]; a
//! conversation's later turns repeat its earlier ones), which is what nginx's and the gateway's
//! hash policies key on. `K` is set, as in the lab, so that the eight caches together hold about
//! [`KV_SHARE`] of the window's working set: a replica keeps only the conversations sent to it
//! lately, the case a router can help.
//!
//! The trace is time-compressed to [`LOAD`] of the workers' capacity, measured on the window's
//! own mix as the lab measures it (one simulated replica of the same settings, saturated, in
//! virtual time). Calls are unary (`ModelInfer`): the bench machine is small and shared, and a
//! streamed call costs the proxies one message per token; a unary call's TTFT is its latency less
//! the worker's own time after the first token (see [`crate::loadgen`]).
//!
//! Each target runs on **fresh workers** (empty caches), one after the other in one run:
//! `switchyard:prefix-aware` (its `capacity_tokens` set to `K`), `switchyard:bounded-load-hash`,
//! `switchyard:prefix-aware-precise` (the same `capacity_tokens`, fed by the workers' KV-event
//! streams), `nginx:hash-consistent` (`hash $http_x_session_id consistent`) and `nginx:least_conn`. Per
//! target the report gives TTFT (mean, p50, p90, p99) and latency, the prefix-cache hit rate
//! (cached prompt tokens over prompt tokens, summed from the workers' `/metrics`), the largest
//! worker's share of the prompt tokens over the mean share, and the errors by status.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use switchyard_balance::PolicySpec;
use switchyard_sim::{EngineConfig, TraceRecord};

use super::peers::{self, PeerBalance, PeerKind};
use super::processes::ChildProcess;
use super::{BenchArgs, BenchError, Proxy, START_TIMEOUT};
use crate::cluster::{PromptTokens, prompt_tokens_from_metrics};
use crate::loadgen::{self, LoadgenArgs};
use crate::report::{Percentiles, Table};

/// Workers.
pub const REPLICAS: usize = 8;

/// The workers' speed: five times an H100, so that the window replays in about a minute.
pub const SPEED: f64 = 5.0;

/// Requests replayed per target: the first ones of the trace.
pub const REQUESTS: usize = 1500;

/// The offered load, as a share of the workers' measured capacity.
pub const LOAD: f64 = 0.7;

/// The share of the window's working set the workers' caches hold together, as in the lab.
pub const KV_SHARE: f64 = 0.46;

/// The session header the hash targets key on.
pub const SESSION_HEADER: &str = peers::SESSION_HEADER;

/// The precise prefix-aware policy: a target when the policy registry knows it.
pub const PRECISE_POLICY: &str = "prefix-aware-precise";

/// What one target measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrefixTargetResult {
    /// `switchyard:prefix-aware`, `nginx:hash-consistent`, ...
    pub target: String,
    /// Calls sent.
    pub requests: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed calls by gRPC status, plus `dropped` (not sent: too many in flight).
    pub errors: BTreeMap<String, u64>,
    /// Time to first token of the successful calls, ms.
    pub ttft_ms: Percentiles,
    /// Latency of the successful calls, ms.
    pub latency_ms: Percentiles,
    /// Cached prompt tokens over prompt tokens, over all workers.
    pub prefix_hit_rate: f64,
    /// Prompt tokens admitted by each worker.
    pub prompt_tokens: Vec<u64>,
    /// The largest worker's prompt tokens over the mean.
    pub max_mean_prompt_tokens: f64,
}

/// The issue's target for the bench, for one gateway policy against nginx's consistent hashing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrefixVerdict {
    /// The gateway target.
    pub target: String,
    /// Its mean TTFT over nginx consistent hashing's (target ≤ 0.5).
    pub mean_ttft_ratio: f64,
    /// Its p99 TTFT over nginx consistent hashing's (target ≤ 1).
    pub p99_ttft_ratio: f64,
    /// Both met, with no errors.
    pub met: bool,
}

/// The report of scenario `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrefixBenchReport {
    /// `prefix`.
    pub scenario: String,
    /// Workers.
    pub replicas: usize,
    /// Their speed.
    pub speed: f64,
    /// KV-cache tokens of each.
    pub kv_capacity_tokens: u64,
    /// Requests replayed per target.
    pub requests: usize,
    /// Seconds over which they are sent.
    pub send_window_s: f64,
    /// The factor applied to the trace's arrival times.
    pub time_scale: f64,
    /// Requests/s one worker sustains on the window's mix (measured in the lab's way).
    pub replica_capacity_rps: f64,
    /// Requests/s offered.
    pub offered_rps: f64,
    /// Offered over capacity.
    pub load: f64,
    /// Distinct KV blocks of the window, in tokens.
    pub working_set_tokens: u64,
    /// The hit rate of one infinitely large cache over the window.
    pub upper_bound_hit_rate: f64,
    /// The header the hash targets key on.
    pub session_header: String,
    /// Threads (nginx: worker processes) of each proxy.
    pub proxy_threads: usize,
    /// One entry per target, in the order run.
    pub results: Vec<PrefixTargetResult>,
    /// The gateway's prefix policies against nginx consistent hashing.
    pub verdicts: Vec<PrefixVerdict>,
}

impl PrefixBenchReport {
    /// The results as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new([
            "target",
            "TTFT mean ms",
            "p50",
            "p90",
            "p99",
            "latency p99 ms",
            "hit rate",
            "max/mean prompt tokens",
            "ok",
            "errors",
        ]);
        for r in &self.results {
            let errors: u64 = r.errors.values().sum();
            table.row([
                r.target.clone(),
                format!("{:.0}", r.ttft_ms.mean),
                format!("{:.0}", r.ttft_ms.p50),
                format!("{:.0}", r.ttft_ms.p90),
                format!("{:.0}", r.ttft_ms.p99),
                format!("{:.0}", r.latency_ms.p99),
                format!("{:.3}", r.prefix_hit_rate),
                format!("{:.2}", r.max_mean_prompt_tokens),
                r.ok.to_string(),
                errors.to_string(),
            ]);
        }
        table
    }

    /// A heading, the table and the verdicts.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "bench prefix: {} workers at speed {}, {} KV tokens each ({:.0}% of the working set together); \
             {} requests of the Mooncake conversation trace at {:.1} req/s ({:.0}% of capacity) over {:.0} s; \
             upper bound hit rate {:.3}\n\n{}",
            self.replicas,
            self.speed,
            self.kv_capacity_tokens,
            self.kv_capacity_tokens as f64 * self.replicas as f64 / self.working_set_tokens.max(1) as f64
                * 100.0,
            self.requests,
            self.offered_rps,
            self.load * 100.0,
            self.send_window_s,
            self.upper_bound_hit_rate,
            self.table()
        );
        for v in &self.verdicts {
            out.push_str(&format!(
                "\n{}: mean TTFT {:.2} × nginx consistent hashing's (target ≤ 0.5), p99 {:.2} × (target ≤ 1): {}",
                v.target,
                v.mean_ttft_ratio,
                v.p99_ttft_ratio,
                if v.met { "met" } else { "not met" }
            ));
        }
        out
    }
}

impl PrefixBenchReport {
    /// The report as markdown: the command, the setup, the figures and the verdicts
    /// (`reports/bench/prefix.md`).
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Bench `prefix`: prefix-cache-aware routing over real processes\n\n");
        out.push_str(
            "Written by the bench itself:\n\n```sh\ncargo run --release -- bench prefix --json reports/bench/prefix.json\n```\n\n",
        );
        out.push_str(&format!(
            "Setup: {} `switchyard worker` processes (speed {}, {} KV tokens each: together {:.0} % of the \
             window's working set of {} tokens), the first {} requests of the bundled Mooncake conversation trace \
             (`prefix_hashes` from its `hash_ids`; session `{}` = the first two block ids) sent as unary \
             `ModelInfer` calls at {:.1} req/s ({:.0} % of the capacity measured on the window's mix, \
             {:.2} req/s a worker) over {:.0} s per target. Every target runs on fresh workers, one after \
             the other in one run; each proxy has {} threads (nginx: worker processes). Hit rate: cached \
             prompt tokens over prompt tokens, summed from the workers' `/metrics`; one infinitely large \
             cache would reach {:.3}. TTFT and latency in ms from the client; a unary call's TTFT is its \
             latency less the worker's time after the first token. `max/mean` is the busiest worker's \
             prompt tokens over the mean.\n\n",
            self.replicas,
            self.speed,
            self.kv_capacity_tokens,
            self.kv_capacity_tokens as f64 * self.replicas as f64 / self.working_set_tokens.max(1) as f64 * 100.0,
            self.working_set_tokens,
            self.requests,
            self.session_header,
            self.offered_rps,
            self.load * 100.0,
            self.replica_capacity_rps,
            self.send_window_s,
            self.proxy_threads,
            self.upper_bound_hit_rate,
        ));
        out.push_str(
            "| target | TTFT mean | p50 | p90 | p99 | latency p99 | hit rate | max/mean | ok | errors |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for r in &self.results {
            let errors = super::errors_text(&r.errors);
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {:.2} | {} / {} | {} |\n",
                r.target,
                r.ttft_ms.mean,
                r.ttft_ms.p50,
                r.ttft_ms.p90,
                r.ttft_ms.p99,
                r.latency_ms.p99,
                r.prefix_hit_rate,
                r.max_mean_prompt_tokens,
                r.ok,
                r.requests,
                errors
            ));
        }
        out.push_str("\n## Against the issue's target (mean TTFT ≤ 0.5 × nginx consistent hashing's, p99 no worse)\n\n");
        out.push_str(
            "| gateway policy | mean TTFT ratio | p99 TTFT ratio | verdict |\n| --- | --- | --- | --- |\n",
        );
        for v in &self.verdicts {
            out.push_str(&format!(
                "| {} | {:.3} | {:.3} | {} |\n",
                v.target,
                v.mean_ttft_ratio,
                v.p99_ttft_ratio,
                if v.met { "met" } else { "not met" }
            ));
        }
        out
    }
}

/// KV tokens per worker so that `replicas` caches hold `share` of `working_set` tokens, and at
/// least twice the largest request's prompt and output (which must fit at once).
pub fn kv_capacity_for(working_set: u64, replicas: usize, share: f64, records: &[TraceRecord]) -> u64 {
    let largest = records.iter().map(|r| u64::from(r.prompt_tokens) + u64::from(r.output_tokens)).max();
    let by_share = (working_set as f64 * share / replicas.max(1) as f64).round() as u64;
    by_share.max(2 * largest.unwrap_or(0))
}

/// The workers' engine: the default, at `speed`, with `kv` tokens of KV cache.
fn engine(speed: f64, kv: u64) -> EngineConfig {
    EngineConfig { speed, kv_capacity_tokens: kv, ..EngineConfig::default() }
}

/// Runs the scenario with its processes under `dir`.
pub(crate) async fn run(
    args: &BenchArgs,
    exe: &Path,
    nginx_exe: &Path,
    dir: &Path,
) -> Result<PrefixBenchReport, BenchError> {
    let records = crate::traces::mooncake_conversation()
        .map_err(|e| BenchError::Setup(format!("bundled trace: {e}")))?;
    let window: Vec<TraceRecord> = records.into_iter().take(REQUESTS).collect();
    let block_tokens = EngineConfig::default().block_tokens;
    let (upper_bound_hit_rate, working_set) = crate::lab::upper_bound(&window, block_tokens);
    let kv = kv_capacity_for(working_set, REPLICAS, KV_SHARE, &window);
    // The capacity on the window's own mix, in virtual time on a thread of its own.
    let config = engine(SPEED, kv);
    let measured = {
        let (config, window) = (config.clone(), window.clone());
        crate::cluster::in_virtual_time(move || async move {
            crate::lab::measure_capacity(&config, &window).await
        })
        .await
        .map_err(|e| BenchError::Setup(format!("capacity: {e}")))?
    };
    let span = window.last().map_or(0.0, |r| r.at.as_secs_f64())
        - window.first().map_or(0.0, |r| r.at.as_secs_f64());
    if !(span > 0.0 && measured > 0.0) {
        return Err(BenchError::Setup("the window's requests all arrive at once".into()));
    }
    let trace_rps = (window.len() - 1) as f64 / span;
    let offered_rps = LOAD * measured * REPLICAS as f64;
    let time_scale = trace_rps / offered_rps;
    eprintln!(
        "bench: prefix: {REPLICAS} workers at speed {SPEED} with {kv} KV tokens, {} requests at {offered_rps:.1} req/s over {:.0} s per target",
        window.len(),
        span * time_scale
    );

    let mut targets: Vec<(String, Target)> = vec![
        ("switchyard:prefix-aware".into(), Target::Gateway(prefix_aware("prefix-aware", kv))),
        ("switchyard:bounded-load-hash".into(), Target::Gateway(PolicySpec::named("bounded-load-hash"))),
    ];
    // The hook for the precise index: it runs as soon as the registry has it.
    crate::register_policies();
    let precise = prefix_aware(PRECISE_POLICY, kv);
    if switchyard_balance::policy::registry().validate(&precise).is_ok() {
        targets.push((format!("switchyard:{PRECISE_POLICY}"), Target::Gateway(precise)));
    }
    targets.push(("nginx:hash-consistent".into(), Target::Nginx(PeerBalance::SessionHash)));
    targets.push(("nginx:least_conn".into(), Target::Nginx(PeerBalance::LeastConn)));

    let mut results = Vec::new();
    for (name, target) in targets {
        let workers = start_workers(exe, kv).await?;
        let addresses: Vec<String> = workers.iter().map(|w| w.address.clone()).collect();
        let (address, proxy) = match &target {
            Target::Gateway(policy) => {
                let gateway_args = gateway_args(&addresses, policy, args.proxy_threads());
                let (child, mut logged) = ChildProcess::start(
                    "gateway",
                    exe,
                    &gateway_args,
                    &["gateway serving on "],
                    START_TIMEOUT,
                )
                .await?;
                (logged.remove(0), Proxy::Gateway(child))
            }
            Target::Nginx(balance) => {
                let peer_dir = dir.join(name.replace(':', "-"));
                std::fs::create_dir_all(&peer_dir)
                    .map_err(|e| BenchError::Io(format!("create {}", peer_dir.display()), e))?;
                let peer = peers::start(
                    PeerKind::Nginx,
                    nginx_exe,
                    *balance,
                    args.proxy_threads(),
                    &addresses,
                    &peer_dir,
                )
                .await?;
                (peer.address.clone(), Proxy::Peer(peer))
            }
        };
        eprintln!("bench: {name}");
        let result = replay(&name, &address, &window, time_scale, &workers).await;
        proxy.stop().await;
        super::stop_children(workers.into_iter().map(|worker| worker.child)).await;
        results.push(result?);
    }
    let verdicts = verdicts(&results);
    Ok(PrefixBenchReport {
        scenario: "prefix".into(),
        replicas: REPLICAS,
        speed: SPEED,
        kv_capacity_tokens: kv,
        requests: window.len(),
        send_window_s: span * time_scale,
        time_scale,
        replica_capacity_rps: measured,
        offered_rps,
        load: LOAD,
        working_set_tokens: working_set,
        upper_bound_hit_rate,
        session_header: SESSION_HEADER.into(),
        proxy_threads: args.proxy_threads(),
        results,
        verdicts,
    })
}

/// `prefix-aware` told the workers' cache size, as the lab runs it.
fn prefix_aware(name: &str, kv: u64) -> PolicySpec {
    let json = format!(r#"{{"name": "{name}", "capacity_tokens": {kv}}}"#);
    serde_json::from_str(&json).unwrap_or_else(|_| PolicySpec::named(name))
}

/// The gateway's command line: `workers` as its backends, with `policy` and `threads`.
fn gateway_args(workers: &[String], policy: &PolicySpec, threads: usize) -> Vec<String> {
    let mut args: Vec<String> =
        ["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"].map(String::from).into();
    for address in workers {
        args.extend(["--backend".to_string(), format!("http://{address}")]);
    }
    args.extend([
        "--policy".to_string(),
        crate::gateway::spec_arg(policy),
        "--threads".to_string(),
        threads.to_string(),
    ]);
    args
}

enum Target {
    Gateway(PolicySpec),
    Nginx(PeerBalance),
}

/// A worker process with its gRPC and metrics addresses.
struct Worker {
    child: ChildProcess,
    address: String,
    metrics: String,
}

async fn start_workers(exe: &Path, kv: u64) -> Result<Vec<Worker>, BenchError> {
    let starts = (0..REPLICAS).map(|i| {
        let args: Vec<String> = [
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--speed",
            &SPEED.to_string(),
            "--kv-capacity",
            &kv.to_string(),
            "--model",
            "sim-llm",
            "--metrics-listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .into();
        async move {
            let phrases = ["worker serving on ", "metrics serving on "];
            let (child, mut logged) =
                ChildProcess::start(&format!("worker-{i}"), exe, &args, &phrases, START_TIMEOUT).await?;
            let metrics = logged.pop().unwrap_or_default();
            Ok::<_, BenchError>(Worker { child, address: logged.remove(0), metrics })
        }
    });
    futures::future::try_join_all(starts).await
}

async fn replay(
    target: &str,
    address: &str,
    window: &[TraceRecord],
    time_scale: f64,
    workers: &[Worker],
) -> Result<PrefixTargetResult, BenchError> {
    let args = LoadgenArgs {
        target: format!("http://{address}"),
        time_scale,
        session_header: Some(SESSION_HEADER.to_string()),
        ..LoadgenArgs::default()
    };
    let channel =
        loadgen::connect(&args.target).await.map_err(|e| BenchError::Setup(format!("{target}: {e}")))?;
    let report = loadgen::drive(channel, window.to_vec(), "mooncake_conversation.jsonl".into(), &args).await;
    let mut prompt_tokens = Vec::with_capacity(workers.len());
    let mut total = PromptTokens::default();
    for worker in workers {
        let text = crate::cluster::fetch_metrics(&worker.metrics)
            .await
            .map_err(|e| BenchError::Setup(format!("{}'s metrics: {e}", worker.child.name())))?;
        let tokens = prompt_tokens_from_metrics(&text).unwrap_or_default();
        prompt_tokens.push(tokens.prompt);
        total.prompt += tokens.prompt;
        total.cached += tokens.cached;
    }
    let mean = total.prompt as f64 / workers.len().max(1) as f64;
    let max = prompt_tokens.iter().copied().max().unwrap_or(0) as f64;
    let mut errors = report.errors.clone();
    if report.dropped > 0 {
        errors.insert("dropped".into(), report.dropped);
    }
    Ok(PrefixTargetResult {
        target: target.to_string(),
        requests: report.requests,
        ok: report.ok,
        errors,
        ttft_ms: report.ttft_ms,
        latency_ms: report.latency_ms,
        prefix_hit_rate: total.hit_rate(),
        prompt_tokens,
        max_mean_prompt_tokens: if mean > 0.0 { max / mean } else { 0.0 },
    })
}

/// Each gateway target against nginx consistent hashing.
fn verdicts(results: &[PrefixTargetResult]) -> Vec<PrefixVerdict> {
    let Some(nginx) = results.iter().find(|r| r.target == "nginx:hash-consistent") else { return Vec::new() };
    results
        .iter()
        .filter(|r| r.target.starts_with("switchyard:"))
        .map(|r| {
            let mean_ttft_ratio = r.ttft_ms.mean / nginx.ttft_ms.mean;
            let p99_ttft_ratio = r.ttft_ms.p99 / nginx.ttft_ms.p99;
            PrefixVerdict {
                target: r.target.clone(),
                mean_ttft_ratio,
                p99_ttft_ratio,
                met: mean_ttft_ratio <= 0.5 && p99_ttft_ratio <= 1.0 && r.errors.is_empty(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn result(target: &str, mean: f64, p99: f64, errors: u64) -> PrefixTargetResult {
        let mut e = BTreeMap::new();
        if errors > 0 {
            e.insert("UNAVAILABLE".to_string(), errors);
        }
        PrefixTargetResult {
            target: target.into(),
            requests: 10,
            ok: 10 - errors,
            errors: e,
            ttft_ms: Percentiles { mean, p99, ..Percentiles::default() },
            latency_ms: Percentiles::default(),
            prefix_hit_rate: 0.0,
            prompt_tokens: vec![],
            max_mean_prompt_tokens: 0.0,
        }
    }

    #[test]
    fn verdicts_compare_with_nginx_consistent_hashing() {
        let results = [
            result("switchyard:prefix-aware", 40.0, 900.0, 0),
            result("switchyard:bounded-load-hash", 60.0, 900.0, 0),
            result("switchyard:other", 40.0, 900.0, 1),
            result("nginx:hash-consistent", 100.0, 1000.0, 0),
        ];
        let v = verdicts(&results);
        assert_eq!(v.len(), 3);
        assert!(v[0].met && (v[0].mean_ttft_ratio - 0.4).abs() < 1e-9);
        assert!(!v[1].met, "0.6 × the mean is not ≤ 0.5");
        assert!(!v[2].met, "errors");
        assert!(verdicts(&results[..1]).is_empty());
    }

    #[test]
    fn the_caches_hold_their_share_and_the_largest_request_twice() {
        let record = |prompt, output| TraceRecord {
            at: Duration::ZERO,
            prompt_tokens: prompt,
            output_tokens: output,
            prefix: Default::default(),
        };
        assert_eq!(kv_capacity_for(8_000_000, 8, 0.5, &[record(1000, 10)]), 500_000);
        assert_eq!(kv_capacity_for(8_000, 8, 0.5, &[record(1000, 10)]), 2020);
    }

    #[test]
    fn the_gateway_gets_the_policy_with_its_parameters() {
        crate::register_policies();
        let spec = prefix_aware("prefix-aware", 123_000);
        assert!(switchyard_balance::policy::registry().validate(&spec).is_ok(), "{spec:?}");
        let args = gateway_args(&["127.0.0.1:1".into()], &spec, 2);
        let policy = &args[args.iter().position(|a| a == "--policy").unwrap() + 1];
        assert!(policy.contains("\"capacity_tokens\":123000") && policy.contains("prefix-aware"), "{policy}");
    }
}
