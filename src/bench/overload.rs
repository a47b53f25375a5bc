//! Scenario `overload`: offered load stepping from half to three times the measured capacity of
//! real worker processes, through the gateway with and without overload protection: the
//! real-process twin of lab `overload`.
//!
//! Four workers of the parallel kind (`--kind parallel --parallel 4 --service-ms 100`: 4 calls at
//! once at 100 ms each, the rest queued in the worker), 160 calls/s in all on paper: slow enough
//! that at 3× the load generator, the gateway and the workers share a 2-core machine without the
//! CPU setting the result. The capacity is measured first, with a closed loop of
//! [`CAPACITY_CLIENTS`] clients through an unprotected gateway for [`CAPACITY_SECONDS`].
//!
//! Then per configuration (fresh workers and gateway each): unary calls at Poisson arrivals at
//! 0.5, 1, 2 and 3 × the measured capacity, `--duration` seconds each, back to back. Every call
//! has a class, 10 % critical, 60 % standard, 30 % sheddable (of every ten consecutive calls one
//! critical, three sheddable; `x-priority`), and a deadline of [`DEADLINE`] (`grpc-timeout`; the
//! client gives up then, and the worker's engine drops a call still queued at it).
//!
//! Configurations:
//! - `none`: the gateway alone (least response time); excess load queues in the workers;
//! - `load-shed+fixed(16)`: tower's `LoadShed` in front of the same hand-tuned limit (the
//!   gateway's `load-shed` layer): what finds the limit full is refused at once, whatever its
//!   class or deadline;
//! - `shed+fixed(16)`: the gateway's `shed` queue in front of a hand-tuned fixed `limit` on the
//!   pool, 16, the workers' slots;
//! - `shed+aimd`: the same with AIMD and its defaults (`AimdParams::knee`: a drop is an RTT
//!   above 1.5 × the smallest of the last 10 s, or an overloaded or expired call; one cut and, after
//!   the first, one step up per round trip; floor 1): no hand-set threshold;
//! - `shed+gradient2`, `shed+vegas`, `shed+envoy-gradient`: the shed queue in front of each
//!   other algorithm with its defaults (`Gradient2Params::knee`, `VegasParams::knee`, Envoy's
//!   gradient controller);
//! - `shed+aimd(netflix)`: AIMD with Netflix's defaults (`AimdParams::netflix`: floor 20, drop at
//!   an RTT above 5 s or an overloaded or expired call, every drop cuts, one more per success);
//!   these workers queue instead of refusing, so it backs off only once calls expire;
//! - `shed+aimd(rtt>200ms)`: Netflix's AIMD with a hand-set absolute threshold instead, an RTT
//!   above twice the service time, and a floor of 1;
//! - `worker-shed`: no protection in the gateway, each worker with `--shed 50ms`
//!   (`switchyard_shed::ServerShedLayer` over its engine's own queue).
//!
//! Per configuration and step (calls counted by the step they were sent in): `goodput_share`
//! (calls answered within their deadline per second, over the measured capacity), success by
//! class (the share answered within the deadline), the shares refused (`RESOURCE_EXHAUSTED`)
//! and expired (`DEADLINE_EXCEEDED`, or the client gave up), and the latency of the answered
//! calls. The machine's load average (`/proc/loadavg`) is read before and after each
//! configuration. The pool's limit in force is read off the gateway's `/metrics` every
//! [`LIMIT_POLL`] (`limit_over_time` in the JSON), and drawn per configuration beside the JSON
//! report (`overload.json` → `overload-limit.png`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use switchyard_balance::PolicyKind;
use switchyard_sim::{LengthSampler, Pattern, Synthetic};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::processes::ChildProcess;
use super::{BenchArgs, BenchError, START_TIMEOUT};
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::report::{Percentiles, Table};

/// Workers.
pub const WORKERS: usize = 4;
/// Calls a worker serves at once.
pub const PARALLEL: u32 = 4;
/// Milliseconds a call takes.
pub const SERVICE_MS: f64 = 100.0;
/// The offered loads, as multiples of the measured capacity.
pub const LOAD_STEPS: [f64; 4] = [0.5, 1.0, 2.0, 3.0];
/// Every call's deadline: ten times its service time.
pub const DEADLINE: Duration = Duration::from_secs(1);
/// Closed-loop clients of the capacity measurement (twice the workers' slots).
pub const CAPACITY_CLIENTS: usize = 32;
/// Seconds the capacity is measured over (after one second of warm-up).
pub const CAPACITY_SECONDS: f64 = 5.0;
/// Most calls in flight at once in the load generator; more are counted as not sent.
const MAX_IN_FLIGHT: usize = 8192;
/// HTTP/2 connections the load generator spreads its calls over.
const CONNECTIONS: usize = 8;
/// How often the limit in force is read off the gateway's admin API.
pub const LIMIT_POLL: Duration = Duration::from_millis(500);

/// A configuration: its name, the gateway's extra flags and each worker's.
struct Config {
    name: &'static str,
    gateway: &'static [&'static str],
    worker: &'static [&'static str],
}

const CONFIGS: [Config; 10] = [
    Config { name: "none", gateway: &[], worker: &[] },
    Config {
        name: "load-shed+fixed(16)",
        gateway: &["--load-shed", "--limit", r#"{"name":"fixed","limit":16}"#],
        worker: &[],
    },
    Config {
        name: "shed+fixed(16)",
        gateway: &["--shed", "--limit", r#"{"name":"fixed","limit":16}"#],
        worker: &[],
    },
    Config { name: "shed+aimd", gateway: &["--shed", "--limit", "aimd"], worker: &[] },
    Config { name: "shed+gradient2", gateway: &["--shed", "--limit", "gradient2"], worker: &[] },
    Config { name: "shed+vegas", gateway: &["--shed", "--limit", "vegas"], worker: &[] },
    Config { name: "shed+envoy-gradient", gateway: &["--shed", "--limit", "envoy-gradient"], worker: &[] },
    // Netflix's AIMD (`AimdParams::netflix`), the default before the relative RTT threshold.
    Config {
        name: "shed+aimd(netflix)",
        gateway: &[
            "--shed",
            "--limit",
            r#"{"name":"aimd","min_limit":20,"rtt_tolerance":0,"once_per_rtt":false,"per_rtt_increase":false}"#,
        ],
        worker: &[],
    },
    // Netflix's AIMD with a hand-set drop signal these workers give: they queue rather than
    // refuse, so an RTT above twice the service time counts as a drop, and the floor is one slot.
    Config {
        name: "shed+aimd(rtt>200ms)",
        gateway: &[
            "--shed",
            "--limit",
            r#"{"name":"aimd","min_limit":1,"initial_limit":16,"timeout_ms":200,"rtt_tolerance":0,"once_per_rtt":false,"per_rtt_increase":false}"#,
        ],
        worker: &[],
    },
    Config { name: "worker-shed", gateway: &[], worker: &["--shed", "50ms"] },
];

/// A call's class, by its index: of every ten, one critical and three sheddable.
fn class_of(i: usize) -> usize {
    match i % 10 {
        0 => 2,
        1..=3 => 0,
        _ => 1,
    }
}

const CLASS_NAMES: [&str; 3] = ["sheddable", "standard", "critical"];

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Answered within its deadline, after this many microseconds.
    Ok(u64),
    Refused,
    Expired,
    Failed,
}

/// What one configuration measured in one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    /// Offered load, a multiple of the measured capacity.
    pub load: f64,
    /// Calls offered per second.
    pub offered_rps: f64,
    /// Calls sent.
    pub sent: u64,
    /// Calls answered within their deadline per second, over the measured capacity.
    pub goodput_share: f64,
    /// Share of each class answered within its deadline: sheddable, standard, critical.
    pub success_by_priority: std::collections::BTreeMap<String, f64>,
    /// Share of the calls refused with `RESOURCE_EXHAUSTED`.
    pub refused: f64,
    /// Share of the calls that expired (`DEADLINE_EXCEEDED`, or the client gave up).
    pub expired: f64,
    /// Share of the calls that failed otherwise (or were not sent: too many in flight).
    pub failed: f64,
    /// Latency of the answered calls.
    pub latency_ms: Percentiles,
    /// 99th percentile latency of the answered calls of each class (0 when none was answered).
    pub p99_ms_by_priority: std::collections::BTreeMap<String, f64>,
}

/// What one configuration measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigResult {
    /// The configuration.
    pub config: String,
    /// The gateway's extra flags.
    pub gateway_flags: Vec<String>,
    /// Each worker's extra flags.
    pub worker_flags: Vec<String>,
    /// `/proc/loadavg` before the configuration ran.
    pub loadavg_before: String,
    /// `/proc/loadavg` after.
    pub loadavg_after: String,
    /// One entry per load step.
    pub steps: Vec<StepResult>,
    /// The pool's concurrency limit in force over the run, `[seconds since the first step, limit]`
    /// every [`LIMIT_POLL`] (read from the gateway's `/metrics`); empty without a `limit` layer.
    pub limit_over_time: Vec<(f64, u32)>,
}

/// The report of scenario `overload`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverloadReport {
    /// The scenario.
    pub scenario: String,
    /// The workers.
    pub workers: String,
    /// The measured capacity, calls per second.
    pub capacity_rps: f64,
    /// How it was measured.
    pub capacity_from: String,
    /// Seconds per load step.
    pub step_s: f64,
    /// Every call's deadline, in ms.
    pub deadline_ms: f64,
    /// The class mix.
    pub mix: String,
    /// CPUs of the machine.
    pub cpus: usize,
    /// The gateway's threads.
    pub proxy_threads: usize,
    /// One entry per configuration, in the order run.
    pub results: Vec<ConfigResult>,
}

impl OverloadReport {
    /// The results as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new([
            "config",
            "load",
            "goodput",
            "critical",
            "standard",
            "sheddable",
            "refused",
            "expired",
            "p50 ms",
            "p99 ms",
        ]);
        for c in &self.results {
            for s in &c.steps {
                let ok =
                    |class: &str| format!("{:.3}", s.success_by_priority.get(class).copied().unwrap_or(0.0));
                table.row([
                    c.config.clone(),
                    format!("{}x", s.load),
                    format!("{:.3}", s.goodput_share),
                    ok("critical"),
                    ok("standard"),
                    ok("sheddable"),
                    format!("{:.3}", s.refused),
                    format!("{:.3}", s.expired),
                    format!("{:.0}", s.latency_ms.p50),
                    format!("{:.0}", s.latency_ms.p99),
                ]);
            }
        }
        table
    }

    /// The table and each configuration against the issue's targets at 3×.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "bench overload: {}; capacity {:.1} calls/s ({}); {} s a step; deadline {} ms; {}\n\n{}\n",
            self.workers,
            self.capacity_rps,
            self.capacity_from,
            self.step_s,
            self.deadline_ms,
            self.mix,
            self.table()
        );
        text.push_str("targets at 3x: goodput >= 0.95, critical success >= 0.999, p99 3x/0.5x <= 2\n");
        for c in &self.results {
            let (Some(first), Some(last)) = (c.steps.first(), c.steps.last()) else { continue };
            let critical = last.success_by_priority.get("critical").copied().unwrap_or(0.0);
            // No call answered at 3 × (a full collapse) has no p99: the ratio is unbounded.
            let answered = last.goodput_share > 0.0 && last.latency_ms.p99 > 0.0;
            let ratio = if answered { last.latency_ms.p99 / first.latency_ms.p99 } else { f64::INFINITY };
            let met = last.goodput_share >= 0.95 && critical >= 0.999 && ratio <= 2.0;
            text.push_str(&format!(
                "  {}: goodput {:.3}, critical {:.4}, p99 ratio {:.2}: {}\n",
                c.config,
                last.goodput_share,
                critical,
                ratio,
                if met { "met" } else { "NOT met" }
            ));
        }
        text
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_default()
}

async fn start_workers(exe: &Path, extra: &[&str]) -> Result<Vec<(ChildProcess, String)>, BenchError> {
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let mut args: Vec<String> = ["worker", "--listen", "127.0.0.1:0"].map(String::from).into();
        args.extend(super::parallel_worker_args(PARALLEL, SERVICE_MS));
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, mut addresses) =
            ChildProcess::start(&format!("worker-{i}"), exe, &args, &["worker serving on "], START_TIMEOUT)
                .await?;
        workers.push((child, addresses.remove(0)));
    }
    Ok(workers)
}

/// Starts the gateway; its gRPC address and its admin API's.
async fn start_gateway(
    exe: &Path,
    workers: &[(ChildProcess, String)],
    extra: &[&str],
    threads: usize,
) -> Result<(ChildProcess, String, String), BenchError> {
    let addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
    let mut args = super::gateway_args(&addresses, PolicyKind::DEFAULT, threads);
    args.extend(extra.iter().map(|s| s.to_string()));
    let (child, mut logged) = ChildProcess::start(
        "gateway",
        exe,
        &args,
        &["gateway serving on ", "admin serving on "],
        START_TIMEOUT,
    )
    .await?;
    let admin = logged.remove(1);
    Ok((child, logged.remove(0), admin))
}

/// Reads the pool's concurrency limit off the gateway's `/metrics` on `admin` every
/// [`LIMIT_POLL`] until dropped; the readings, `(seconds since start, limit)`, go to `into`.
async fn watch_limit(admin: String, start: Instant, into: Arc<std::sync::Mutex<Vec<(f64, u32)>>>) {
    let mut tick = tokio::time::interval(LIMIT_POLL);
    loop {
        tick.tick().await;
        let Ok(text) = crate::cluster::fetch_metrics(&admin).await else { continue };
        if let Some(limit) = pool_limit(&text) {
            into.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((start.elapsed().as_secs_f64(), limit));
        }
    }
}

/// The value of the pool's limit gauge in a Prometheus text exposition, if it has one.
fn pool_limit(metrics: &str) -> Option<u32> {
    crate::cluster::metric_values(metrics, switchyard_telemetry::names::POOL_LIMIT)
        .find(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v as u32)
}

async fn stop_all(gateway: ChildProcess, workers: Vec<(ChildProcess, String)>) {
    if let Err(e) = gateway.stop(Duration::from_secs(20)).await {
        eprintln!("bench: warning: {e}");
    }
    for (child, _) in workers {
        if let Err(e) = child.stop(Duration::from_secs(20)).await {
            eprintln!("bench: warning: {e}");
        }
    }
}

fn request(
    priority: &str,
    deadline: Option<Duration>,
) -> tonic::Request<crate::proto::inference::ModelInferRequest> {
    let mut request = tonic::Request::new(crate::worker::request::text_request("sim-llm", "overload", 4));
    if let Ok(value) = priority.parse() {
        request.metadata_mut().insert("x-priority", value);
    }
    if let Some(d) = deadline
        && let Ok(value) = format!("{}m", d.as_millis()).parse()
    {
        request.metadata_mut().insert("grpc-timeout", value);
    }
    request
}

/// Calls answered per second by a closed loop of [`CAPACITY_CLIENTS`] through `address`.
async fn measure_capacity(channels: &[Channel]) -> Result<f64, BenchError> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(CAPACITY_SECONDS);
    let mut clients = JoinSet::new();
    for i in 0..CAPACITY_CLIENTS {
        let mut client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone());
        clients.spawn(async move {
            let mut ok = 0u64;
            while Instant::now() < end {
                let result = client.model_infer(request("standard", None)).await;
                let now = Instant::now();
                if result.is_ok() && now >= start && now <= end {
                    ok += 1;
                }
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = clients.join_next().await {
        ok += n.map_err(|e| BenchError::Setup(format!("capacity client: {e}")))?;
    }
    if ok == 0 {
        return Err(BenchError::Setup("the capacity measurement answered no call".into()));
    }
    Ok(ok as f64 / CAPACITY_SECONDS)
}

/// Sends the steps' calls through `channels` and sums them up.
async fn drive(channels: &[Channel], capacity: f64, step_s: f64, seed: u64) -> Vec<StepResult> {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let mut sent = vec![[0u64; 3]; LOAD_STEPS.len()];
    let mut not_sent = vec![0u64; LOAD_STEPS.len()];
    let start = Instant::now();
    let mut index = 0usize;
    for (step, load) in LOAD_STEPS.iter().enumerate() {
        let step_start = start + Duration::from_secs_f64(step_s * step as f64);
        let arrivals = Synthetic::new(
            Pattern::Poisson { rate: load * capacity },
            LengthSampler::fixed(16, 4),
            Duration::from_secs_f64(step_s),
            seed + step as u64,
        );
        for arrival in arrivals {
            tokio::time::sleep_until(step_start + arrival.at).await;
            let class = class_of(index);
            index += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                not_sent[step] += 1;
                continue;
            };
            sent[step][class] += 1;
            let mut client = GrpcInferenceServiceClient::new(channels[index % channels.len()].clone());
            calls.spawn(async move {
                let sent_at = Instant::now();
                let call = client.model_infer(request(CLASS_NAMES[class], Some(DEADLINE)));
                let end = match tokio::time::timeout(DEADLINE, call).await {
                    // A reply this task sees only after the deadline (the load generator's own
                    // scheduling delay) is late all the same.
                    Ok(Ok(_)) if sent_at.elapsed() > DEADLINE => End::Expired,
                    Ok(Ok(_)) => End::Ok(u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    Ok(Err(status)) => match status.code() {
                        tonic::Code::ResourceExhausted => End::Refused,
                        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => End::Expired,
                        _ => End::Failed,
                    },
                    Err(_) => End::Expired,
                };
                drop(permit);
                (step, class, end)
            });
        }
    }
    let mut ends: Vec<Vec<(usize, End)>> = vec![Vec::new(); LOAD_STEPS.len()];
    while let Some(result) = calls.join_next().await {
        if let Ok((step, class, end)) = result {
            ends[step].push((class, end));
        }
    }
    LOAD_STEPS
        .iter()
        .enumerate()
        .map(|(step, &load)| {
            let total = sent[step].iter().sum::<u64>() + not_sent[step];
            let share = |n: usize| if total == 0 { 0.0 } else { n as f64 / total as f64 };
            let count = |f: &dyn Fn(&End) -> bool| ends[step].iter().filter(|(_, e)| f(e)).count();
            let ok = count(&|e| matches!(e, End::Ok(_)));
            let success_by_priority = (0..3)
                .map(|class| {
                    let ok =
                        ends[step].iter().filter(|(c, e)| *c == class && matches!(e, End::Ok(_))).count();
                    let of = sent[step][class];
                    (CLASS_NAMES[class].to_string(), if of == 0 { 0.0 } else { ok as f64 / of as f64 })
                })
                .collect();
            let p99_ms_by_priority = (0..3)
                .map(|class| {
                    let mut of_class: Vec<f64> = ends[step]
                        .iter()
                        .filter_map(|(c, e)| match e {
                            End::Ok(us) if *c == class => Some(*us as f64 / 1e3),
                            _ => None,
                        })
                        .collect();
                    let p99 = if of_class.is_empty() { 0.0 } else { Percentiles::of(&mut of_class).p99 };
                    (CLASS_NAMES[class].to_string(), p99)
                })
                .collect();
            let mut latencies: Vec<f64> = ends[step]
                .iter()
                .filter_map(|(_, e)| match e {
                    End::Ok(us) => Some(*us as f64 / 1e3),
                    _ => None,
                })
                .collect();
            StepResult {
                load,
                offered_rps: load * capacity,
                sent: total,
                goodput_share: ok as f64 / step_s / capacity,
                success_by_priority,
                refused: share(count(&|e| *e == End::Refused)),
                expired: share(count(&|e| *e == End::Expired)),
                failed: share(count(&|e| *e == End::Failed) + usize::try_from(not_sent[step]).unwrap_or(0)),
                latency_ms: Percentiles::of(&mut latencies),
                p99_ms_by_priority,
            }
        })
        .collect()
}

/// Runs the scenario.
pub(crate) async fn run(args: &BenchArgs, exe: &Path) -> Result<OverloadReport, BenchError> {
    let threads = args.proxy_threads();
    let step_s = args.duration;

    // The capacity, through an unprotected gateway.
    let workers = start_workers(exe, &[]).await?;
    let (gateway, address, _) = start_gateway(exe, &workers, &[], threads).await?;
    let channels = super::load::connect(&[address], CONNECTIONS).await.map_err(BenchError::Setup)?;
    let capacity = measure_capacity(&channels).await?;
    drop(channels);
    stop_all(gateway, workers).await;
    eprintln!("bench: overload: measured capacity {capacity:.1} calls/s");

    let chosen = chosen_configs(args.configs.as_deref())?;
    let mut results = Vec::new();
    for config in chosen {
        eprintln!("bench: overload: {}", config.name);
        let loadavg_before = loadavg();
        let workers = start_workers(exe, config.worker).await?;
        let (gateway, address, admin) = start_gateway(exe, &workers, config.gateway, threads).await?;
        let channels = super::load::connect(&[address], CONNECTIONS).await.map_err(BenchError::Setup)?;
        let limits = Arc::default();
        let watch = tokio::spawn(watch_limit(admin, Instant::now(), Arc::clone(&limits)));
        let steps = drive(&channels, capacity, step_s, 1).await;
        watch.abort();
        drop(channels);
        let limit_over_time =
            std::mem::take(&mut *limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        stop_all(gateway, workers).await;
        results.push(ConfigResult {
            config: config.name.to_string(),
            gateway_flags: config.gateway.iter().map(|s| s.to_string()).collect(),
            worker_flags: config.worker.iter().map(|s| s.to_string()).collect(),
            loadavg_before,
            loadavg_after: loadavg(),
            steps,
            limit_over_time,
        });
    }
    if let Some(json) = &args.json {
        let path = limit_plot_path(json);
        let series: Vec<(String, Vec<(f64, u32)>)> = results
            .iter()
            .filter(|r| !r.limit_over_time.is_empty())
            .map(|r| (r.config.clone(), r.limit_over_time.clone()))
            .collect();
        crate::lab::overload_plot::limit_plot(&path, &series, step_s, &LOAD_STEPS, "wall-clock")
            .map_err(|e| BenchError::Setup(format!("plot: {e}")))?;
        eprintln!("bench: overload: limit over time drawn in {}", path.display());
    }
    Ok(OverloadReport {
        scenario: "overload".into(),
        workers: format!(
            "{WORKERS} workers --kind parallel --parallel {PARALLEL} --service-ms {SERVICE_MS} ({:.0} calls/s on paper)",
            WORKERS as f64 * f64::from(PARALLEL) / (SERVICE_MS / 1e3)
        ),
        capacity_rps: capacity,
        capacity_from: format!(
            "closed loop of {CAPACITY_CLIENTS} clients through the unprotected gateway, {CAPACITY_SECONDS} s after 1 s of warm-up"
        ),
        step_s,
        deadline_ms: DEADLINE.as_secs_f64() * 1e3,
        mix: "10 % critical, 60 % standard, 30 % sheddable".into(),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        proxy_threads: threads,
        results,
    })
}

/// The configurations `names` chooses, in the bench's order (all without a choice); an error
/// names an unknown one and lists the known.
fn chosen_configs(names: Option<&[String]>) -> Result<Vec<&'static Config>, BenchError> {
    let Some(names) = names else { return Ok(CONFIGS.iter().collect()) };
    if let Some(unknown) = names.iter().find(|n| !CONFIGS.iter().any(|c| c.name == n.as_str())) {
        let known: Vec<&str> = CONFIGS.iter().map(|c| c.name).collect();
        return Err(BenchError::Invalid(format!(
            "--configs: no configuration {unknown:?}; known: {}",
            known.join(", ")
        )));
    }
    Ok(CONFIGS.iter().filter(|c| names.iter().any(|n| n == c.name)).collect())
}

/// Where the limit-over-time plot goes beside the JSON report `json`: `overload.json` →
/// `overload-limit.png`.
pub fn limit_plot_path(json: &Path) -> std::path::PathBuf {
    let stem = json.file_stem().map_or_else(|| "overload".into(), |s| s.to_string_lossy().into_owned());
    json.with_file_name(format!("{stem}-limit.png"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_limit_is_read_off_the_exposition() {
        let text = "# TYPE switchyard_pool_concurrency_limit gauge\n\
                    switchyard_pool_concurrency_limit_in_flight{pool=\"default\",layer=\"1\"} 3\n\
                    switchyard_pool_concurrency_limit{pool=\"default\",layer=\"1\"} 14\n";
        assert_eq!(pool_limit(text), Some(14));
        assert_eq!(pool_limit("switchyard_pool_concurrency_limit_in_flight{pool=\"d\"} 3\n"), None);
        assert_eq!(
            limit_plot_path(Path::new("reports/bench/o.json")),
            Path::new("reports/bench/o-limit.png")
        );
    }

    #[test]
    fn configs_are_chosen_by_name_in_the_bench_order_and_an_unknown_one_is_named() {
        let all = chosen_configs(None).unwrap();
        assert_eq!(all.len(), CONFIGS.len());
        let names = ["worker-shed".to_string(), "none".to_string()];
        let chosen: Vec<&str> = chosen_configs(Some(&names)).unwrap().iter().map(|c| c.name).collect();
        assert_eq!(chosen, ["none", "worker-shed"]);
        let err = chosen_configs(Some(&["shed+tcp".to_string()])).err().unwrap().to_string();
        assert!(err.contains("\"shed+tcp\"") && err.contains("shed+aimd"), "{err}");
    }

    #[test]
    fn the_mix_is_ten_sixty_thirty() {
        let mut counts = [0; 3];
        for i in 0..1000 {
            counts[class_of(i)] += 1;
        }
        assert_eq!(counts, [300, 600, 100]);
    }
}
