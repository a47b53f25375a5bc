//! Scenario `soak`: steady load through the gateway for a long while (`--duration 600`), with its
//! workers restarted one after another, and the gateway process's resident memory, open file
//! descriptors and live tasks sampled throughout. What it shows: those figures stay flat once
//! warmed up (a leak climbs), and every call that failed is explained by a restart.
//!
//! [`WORKERS`] workers of the parallel kind ([`PARALLEL`] calls at once at [`SERVICE_MS`] each)
//! behind one gateway process (its default policy, the workers as a static pool retrying as
//! `bench faults`' pool does: [`pool_retry_lines`](super::faults::pool_retry_lines)). Unary `ModelInfer`
//! calls at `--rate` a second (Poisson arrivals, [`DEFAULT_RATE`] by default), each with a
//! deadline of [`DEADLINE`], over [`CONNECTIONS`] HTTP/2 connections. Every `--restart-every`
//! ([`DEFAULT_RESTART_EVERY`]) the next worker in turn is stopped with SIGTERM (it drains: its
//! calls in flight finish) and started again on the same port. A failed call is *explained* when
//! it was in flight at some moment between a restart's SIGTERM and [`SETTLE`] after the new
//! worker serves; any other failure is *unexplained*.
//!
//! Every [`SAMPLE_EVERY`] the gateway's `/metrics` is read: `process_resident_memory_bytes`,
//! `process_open_fds` and `switchyard_gateway_tasks`. A series is *flat* when the mean of the
//! last quarter of the samples after the warm-up (`--warmup`, at least a tenth of the run) is at
//! most [`FLAT_TOLERANCE`] above the mean of the first quarter. With `--json FILE` it writes the
//! markdown report beside it and the plot `FILE` with `.png` (the three series over time, the
//! restarts marked).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use switchyard_sim::{LengthSampler, Pattern, Synthetic};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::processes::ChildProcess;
use super::{BenchArgs, BenchError, START_TIMEOUT};
use crate::gateway::{GATEWAY_TASKS, PROCESS_OPEN_FDS, PROCESS_RESIDENT_MEMORY};
use crate::proto::code_name;
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::report::Table;

/// Workers behind the gateway.
pub const WORKERS: usize = 3;
/// Calls a worker serves at once.
pub const PARALLEL: u32 = 8;
/// Milliseconds a call takes.
pub const SERVICE_MS: f64 = 20.0;
/// Calls a second when `--rate` is not given (a sixth of the workers' capacity).
pub const DEFAULT_RATE: f64 = 200.0;
/// How often a worker is restarted when `--restart-every` is not given.
pub const DEFAULT_RESTART_EVERY: Duration = Duration::from_secs(30);
/// Every call's deadline.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// How often the gateway's figures are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// After a restarted worker serves again, failures this much later still count as the restart's.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How much a series' last quarter may sit above its first (after the warm-up) and be flat.
pub const FLAT_TOLERANCE: f64 = 0.10;
/// HTTP/2 connections the load generator spreads its calls over.
pub const CONNECTIONS: usize = 4;
/// Most calls in flight at once in the load generator; more are counted as not sent.
const MAX_IN_FLIGHT: usize = 4096;
/// A stopped worker's grace to drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The gateway's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: f64,
    /// `process_open_fds`.
    pub open_fds: f64,
    /// `switchyard_gateway_tasks`.
    pub tasks: f64,
    /// Calls the load generator had in flight.
    pub calls_in_flight: usize,
}

/// One worker restart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Restart {
    /// The worker restarted (0-based).
    pub worker: usize,
    /// Seconds since the load started at its SIGTERM.
    pub stopped_at_s: f64,
    /// Seconds since the load started when the new worker served.
    pub serving_at_s: f64,
    /// Whether the old worker exited cleanly within its grace (it drained).
    pub drained: bool,
}

/// How a series moved after the warm-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flatness {
    /// The series.
    pub series: String,
    /// Mean of the first quarter of the samples after the warm-up.
    pub first_quarter: f64,
    /// Mean of the last quarter.
    pub last_quarter: f64,
    /// Smallest sample after the warm-up.
    pub min: f64,
    /// Largest sample after the warm-up.
    pub max: f64,
    /// `last_quarter / first_quarter - 1`.
    pub growth: f64,
    /// `growth <= FLAT_TOLERANCE`.
    pub flat: bool,
}

/// What the calls did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Calls {
    /// Calls sent.
    pub sent: u64,
    /// Calls answered within their deadline.
    pub ok: u64,
    /// Calls that failed or expired.
    pub failed: u64,
    /// Calls not sent: the load generator had 4,096 (`MAX_IN_FLIGHT`) in flight.
    pub not_sent: u64,
    /// Failed calls by gRPC status (`DEADLINE_EXCEEDED` for the ones the client gave up on).
    pub failed_by_code: BTreeMap<String, u64>,
    /// Failed calls in flight during a restart (from its SIGTERM to [`SETTLE`] after the new
    /// worker served).
    pub failed_during_restarts: u64,
    /// Failed calls no restart explains.
    pub failed_unexplained: u64,
}

/// The report of scenario `soak`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoakReport {
    /// The scenario.
    pub scenario: String,
    /// The workers.
    pub workers: String,
    /// Calls a second offered.
    pub rate: f64,
    /// Seconds of load.
    pub duration_s: f64,
    /// Seconds after which the series are judged.
    pub warmup_s: f64,
    /// Seconds between worker restarts.
    pub restart_every_s: f64,
    /// Every call's deadline, in ms.
    pub deadline_ms: f64,
    /// The gateway's serving threads.
    pub proxy_threads: usize,
    /// The gateway pool's `retry` table.
    pub gateway_retry: String,
    /// The calls.
    pub calls: Calls,
    /// The restarts, in order.
    pub restarts: Vec<Restart>,
    /// Each series after the warm-up.
    pub flatness: Vec<Flatness>,
    /// The samples.
    pub samples: Vec<Sample>,
}

impl SoakReport {
    /// Whether every series is flat and no failure is unexplained.
    pub fn met(&self) -> bool {
        self.flatness.iter().all(|f| f.flat) && self.calls.failed_unexplained == 0
    }

    /// The series as a table.
    pub fn table(&self) -> Table {
        let mut table =
            Table::new(["series", "first quarter", "last quarter", "min", "max", "growth", "flat"]);
        for f in &self.flatness {
            table.row([
                f.series.clone(),
                format!("{:.1}", f.first_quarter),
                format!("{:.1}", f.last_quarter),
                format!("{:.1}", f.min),
                format!("{:.1}", f.max),
                format!("{:+.1} %", f.growth * 100.0),
                if f.flat { "yes" } else { "NO" }.to_string(),
            ]);
        }
        table
    }

    /// The printed summary.
    pub fn summary(&self) -> String {
        let c = &self.calls;
        format!(
            "bench soak: {}; {} calls/s for {} s (judged after {} s), a worker restarted every {} s \
             ({} restarts), deadline {} ms, gateway on {} threads, its pool's {}\n\n{}\ncalls: {} sent, {} ok, {} failed \
             ({}; {} during restarts, {} unexplained), {} not sent\ntarget: memory, descriptors and tasks \
             flat (last quarter within {:.0} % of the first) and every failure explained by a restart: {}\n",
            self.workers,
            self.rate,
            self.duration_s,
            self.warmup_s,
            self.restart_every_s,
            self.restarts.len(),
            self.deadline_ms,
            self.proxy_threads,
            self.gateway_retry,
            self.table(),
            c.sent,
            c.ok,
            c.failed,
            super::errors_text(&c.failed_by_code),
            c.failed_during_restarts,
            c.failed_unexplained,
            c.not_sent,
            FLAT_TOLERANCE * 100.0,
            if self.met() { "met" } else { "NOT met" },
        )
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let mut text = format!("# bench soak\n\n```\n{}```\n\n## Restarts\n\n```\n", self.summary());
        let mut restarts = Table::new(["worker", "SIGTERM at s", "serving again at s", "drained"]);
        for r in &self.restarts {
            restarts.row([
                r.worker.to_string(),
                format!("{:.1}", r.stopped_at_s),
                format!("{:.1}", r.serving_at_s),
                if r.drained { "yes" } else { "no" }.to_string(),
            ]);
        }
        text.push_str(&format!("{restarts}```\n"));
        text
    }
}

/// How one call went: when it was sent and ended (seconds since the load started), and its
/// failure's code if it failed.
struct Ended {
    sent_s: f64,
    ended_s: f64,
    failure: Option<String>,
}

/// Runs the scenario.
pub async fn run(args: &BenchArgs, exe: &Path, dir: &Path) -> Result<SoakReport, BenchError> {
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    if !(rate.is_finite() && rate > 0.0) {
        return Err(BenchError::Invalid(format!("--rate {rate}: must be above zero")));
    }
    let restart_every = args.restart_every.unwrap_or(DEFAULT_RESTART_EVERY);
    if restart_every < Duration::from_secs(1) {
        return Err(BenchError::Invalid("--restart-every must be at least 1s".into()));
    }
    let duration = Duration::from_secs_f64(args.duration);
    let warmup_s = args.warmup_s().max(args.duration / 10.0);
    let threads = args.proxy_threads();

    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        workers.push(start_worker(exe, i, "127.0.0.1:0").await?);
    }
    let addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
    let config = dir.join("gateway-soak.toml");
    std::fs::write(&config, gateway_config(&addresses, threads))
        .map_err(|e| BenchError::Io(format!("write {}", config.display()), e))?;
    let gateway_args: Vec<String> = vec![
        "gateway".into(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let (gateway, mut logged) = ChildProcess::start(
        "gateway",
        exe,
        &gateway_args,
        &["gateway serving on ", "admin serving on "],
        START_TIMEOUT,
    )
    .await?;
    let admin = logged.remove(1);
    let target = logged.remove(0);
    let channels =
        super::load::connect(std::slice::from_ref(&target), CONNECTIONS).await.map_err(BenchError::Setup)?;

    let start = Instant::now();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let (ended_tx, ended_rx) = mpsc::channel::<Ended>(MAX_IN_FLIGHT);
    let load = tokio::spawn(offer(channels, rate, duration, start, in_flight.clone(), ended_tx));
    let sampler = tokio::spawn(sample(admin, start, duration, in_flight));
    let tally = tokio::spawn(collect(ended_rx));

    let mut restarts = Vec::new();
    let mut next = 0usize;
    let mut restart_at = start + restart_every;
    while restart_at + SETTLE < start + duration {
        tokio::time::sleep_until(restart_at).await;
        let (old, address) = workers.remove(next);
        let stopped_at_s = start.elapsed().as_secs_f64();
        let drained = match old.stop(STOP_GRACE).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("bench soak: warning: {e}");
                false
            }
        };
        let restarted = start_worker(exe, next, &address).await?;
        restarts.push(Restart {
            worker: next,
            stopped_at_s,
            serving_at_s: start.elapsed().as_secs_f64(),
            drained,
        });
        workers.insert(next, restarted);
        next = (next + 1) % WORKERS;
        restart_at = Instant::now().max(restart_at + restart_every);
    }

    let not_sent = load.await.map_err(|e| BenchError::Setup(format!("load generator: {e}")))?;
    let samples = sampler.await.map_err(|e| BenchError::Setup(format!("sampler: {e}")))?;
    let ended = tally.await.map_err(|e| BenchError::Setup(format!("tally: {e}")))?;
    super::stop_children(std::iter::once(gateway).chain(workers.into_iter().map(|(w, _)| w))).await;

    let calls = count(&ended, not_sent, &restarts);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let flatness = vec![
        flatness("resident memory (MiB)", after.iter().map(|s| s.rss_bytes / (1024.0 * 1024.0))),
        flatness("open file descriptors", after.iter().map(|s| s.open_fds)),
        flatness("tasks", after.iter().map(|s| s.tasks)),
    ];
    let report = SoakReport {
        scenario: "soak".into(),
        workers: format!(
            "{WORKERS} workers of the parallel kind ({PARALLEL} calls at once at {SERVICE_MS} ms each)"
        ),
        rate,
        duration_s: args.duration,
        warmup_s,
        restart_every_s: restart_every.as_secs_f64(),
        deadline_ms: DEADLINE.as_secs_f64() * 1000.0,
        proxy_threads: threads,
        gateway_retry: retry_table(),
        calls,
        restarts,
        flatness,
        samples,
    };
    if let Some(json) = &args.json {
        let png = json.with_extension("png");
        super::soak_plot::plot(&png, &report).map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    Ok(report)
}

/// The gateway's configuration: the workers as one static pool on the default policy, retrying
/// as `bench faults`' pool does, the admin listener on an ephemeral port.
fn gateway_config(workers: &[String], threads: usize) -> String {
    let endpoints: Vec<String> = workers.iter().map(|a| format!("{{ address = \"http://{a}\" }}")).collect();
    let mut text = format!(
        "admin = \"127.0.0.1:0\"\nthreads = {threads}\n\n[[pool]]\nname = \"default\"\nendpoints = [{}]\n",
        endpoints.join(", ")
    );
    #[cfg(unix)]
    for line in super::faults::pool_retry_lines() {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The pool's `retry` table as the report shows it.
#[cfg(unix)]
fn retry_table() -> String {
    super::faults::pool_retry_lines().join("; ")
}

/// No retry table where `bench faults`' is not built.
#[cfg(not(unix))]
fn retry_table() -> String {
    "none".into()
}

/// Starts worker `index` listening on `listen`; the child and its address.
async fn start_worker(exe: &Path, index: usize, listen: &str) -> Result<(ChildProcess, String), BenchError> {
    let mut args: Vec<String> = ["worker", "--listen", listen].map(String::from).into();
    args.extend(super::parallel_worker_args(PARALLEL, SERVICE_MS));
    let (child, mut addresses) =
        ChildProcess::start(&format!("worker-{index}"), exe, &args, &["worker serving on "], START_TIMEOUT)
            .await?;
    Ok((child, addresses.remove(0)))
}

/// Sends calls at Poisson arrivals of `rate` a second for `duration`; each call's end goes to
/// `ended`. Returns the calls not sent (too many in flight).
async fn offer(
    channels: Vec<Channel>,
    rate: f64,
    duration: Duration,
    start: Instant,
    permits: Arc<tokio::sync::Semaphore>,
    ended: mpsc::Sender<Ended>,
) -> u64 {
    let arrivals = Synthetic::new(Pattern::Poisson { rate }, LengthSampler::fixed(16, 4), duration, 7);
    let mut not_sent = 0;
    for (i, arrival) in arrivals.enumerate() {
        tokio::time::sleep_until(start + arrival.at).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let mut client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone());
        let ended = ended.clone();
        tokio::spawn(async move {
            let sent_s = start.elapsed().as_secs_f64();
            let mut request = tonic::Request::new(crate::worker::request::text_request("sim-llm", "soak", 4));
            request.set_timeout(DEADLINE);
            let failure = match tokio::time::timeout(DEADLINE, client.model_infer(request)).await {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(code_name(status.code()).to_string()),
                Err(_) => Some(code_name(tonic::Code::DeadlineExceeded).to_string()),
            };
            // The channel holds as many ends as there are permits: this never waits.
            let _ = ended.send(Ended { sent_s, ended_s: start.elapsed().as_secs_f64(), failure }).await;
            drop(permit);
        });
    }
    not_sent
}

/// Reads the gateway's figures every [`SAMPLE_EVERY`] until `duration` has passed.
async fn sample(
    admin: String,
    start: Instant,
    duration: Duration,
    permits: Arc<tokio::sync::Semaphore>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(start, SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() <= duration {
        tick.tick().await;
        let Ok(text) = crate::cluster::fetch_metrics(&admin).await else { continue };
        let value = |name| crate::cluster::metric_values(&text, name).next();
        if let (Some(rss_bytes), Some(open_fds), Some(tasks)) =
            (value(PROCESS_RESIDENT_MEMORY), value(PROCESS_OPEN_FDS), value(GATEWAY_TASKS))
        {
            samples.push(Sample {
                t_s: start.elapsed().as_secs_f64(),
                rss_bytes,
                open_fds,
                tasks,
                calls_in_flight: MAX_IN_FLIGHT - permits.available_permits(),
            });
        }
    }
    samples
}

/// Gathers every call's end until the load generator and its calls are done.
async fn collect(mut ended: mpsc::Receiver<Ended>) -> Vec<Ended> {
    let mut all = Vec::new();
    while let Some(end) = ended.recv().await {
        all.push(end);
    }
    all
}

/// The calls' tally: a failure is explained when the call was in flight during a restart.
fn count(ended: &[Ended], not_sent: u64, restarts: &[Restart]) -> Calls {
    let settle = SETTLE.as_secs_f64();
    let mut calls = Calls { sent: ended.len() as u64, not_sent, ..Calls::default() };
    for end in ended {
        let Some(code) = &end.failure else {
            calls.ok += 1;
            continue;
        };
        calls.failed += 1;
        *calls.failed_by_code.entry(code.clone()).or_default() += 1;
        let explained =
            restarts.iter().any(|r| end.sent_s <= r.serving_at_s + settle && end.ended_s >= r.stopped_at_s);
        if explained {
            calls.failed_during_restarts += 1;
        } else {
            calls.failed_unexplained += 1;
        }
    }
    calls
}

/// How `values` (in time order) moved: first quarter against last quarter.
fn flatness(series: &str, values: impl Iterator<Item = f64>) -> Flatness {
    let values: Vec<f64> = values.collect();
    let quarter = (values.len() / 4).max(1);
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let first_quarter = mean(&values[..quarter.min(values.len())]);
    let last_quarter = mean(&values[values.len().saturating_sub(quarter)..]);
    let growth = if first_quarter > 0.0 { last_quarter / first_quarter - 1.0 } else { 0.0 };
    Flatness {
        series: series.to_string(),
        first_quarter,
        last_quarter,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        growth,
        flat: !values.is_empty() && growth <= FLAT_TOLERANCE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_runs_the_workers_as_one_static_pool_that_retries() {
        let workers = ["127.0.0.1:9001".to_string(), "127.0.0.1:9002".to_string()];
        let text = gateway_config(&workers, 2);
        let config = crate::gateway::GatewayConfig::from_toml(&text).unwrap();
        assert_eq!(config.pools.len(), 1, "{text}");
        let pool = &config.pools[0];
        assert_eq!(pool.endpoints.len(), 2, "{text}");
        assert!(pool.retry.is_some(), "the soak's pool retries: {text}");
    }

    #[test]
    fn a_series_that_climbs_is_not_flat_and_one_that_wobbles_is() {
        let climbing = flatness("rss", (0..40).map(|i| 100.0 + f64::from(i)));
        assert!(!climbing.flat, "{climbing:?}");
        assert!(climbing.growth > 0.25, "{climbing:?}");
        let wobbling = flatness("tasks", (0..40).map(|i| if i % 2 == 0 { 20.0 } else { 23.0 }));
        assert!(wobbling.flat, "{wobbling:?}");
        assert_eq!((wobbling.min, wobbling.max), (20.0, 23.0));
        assert!(!flatness("none", std::iter::empty()).flat);
    }

    #[test]
    fn a_failure_is_explained_only_when_in_flight_during_a_restart() {
        let restarts = [Restart { worker: 0, stopped_at_s: 10.0, serving_at_s: 11.0, drained: true }];
        let end = |sent_s, ended_s, failed: bool| Ended {
            sent_s,
            ended_s,
            failure: failed.then(|| "UNAVAILABLE".to_string()),
        };
        let ended = [
            end(9.0, 9.5, true),   // before the SIGTERM: unexplained
            end(9.8, 10.2, true),  // in flight at the SIGTERM
            end(12.5, 12.6, true), // within the settling time
            end(13.5, 13.6, true), // after it: unexplained
            end(10.5, 10.6, false),
        ];
        let calls = count(&ended, 3, &restarts);
        assert_eq!((calls.sent, calls.ok, calls.failed, calls.not_sent), (5, 1, 4, 3));
        assert_eq!((calls.failed_during_restarts, calls.failed_unexplained), (2, 2));
        assert_eq!(calls.failed_by_code.get("UNAVAILABLE"), Some(&4));
    }
}
