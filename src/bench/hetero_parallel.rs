//! Scenario `hetero-parallel`: four classic servers (the worker's parallel kind), one four times
//! slower, loaded with unary calls at Poisson arrivals at 65 % of their capacity, through the
//! gateway with each policy and through nginx and HAProxy with each of their two balancing
//! methods: the real-process twin of lab `hetero-parallel`.
//!
//! Each worker runs `--kind parallel --parallel 8 --service-ms 20`: 8 calls at once at 20 ms each
//! (80 ms on the slow one), the rest queued. That is 400 calls/s per full-speed worker, 1,300 in
//! all, and 845 calls/s offered: half the lab's rates (10 ms there), so that the load generator,
//! the proxy and four workers share a 2-core machine without the CPU setting the tail. A call's
//! time to first byte is its latency here: the reply comes whole.

use std::path::Path;
use std::time::Duration;

use super::hetero::{HeteroReport, HeteroResult};
use super::processes::ChildProcess;
use super::{BenchArgs, BenchError, START_TIMEOUT};
use crate::loadgen::{self, LoadgenArgs};

/// The workers' speeds: three at 1, one four times slower.
pub const SPEEDS: [f64; 4] = [1.0, 1.0, 1.0, 0.25];
/// Calls a worker serves at once.
pub const PARALLEL: u32 = 8;
/// Milliseconds a call takes on a full-speed worker.
pub const SERVICE_MS: f64 = 20.0;
/// The load, as a share of the workers' capacity.
pub const LOAD: f64 = 0.65;

/// The workers' capacity in calls per second: `PARALLEL / SERVICE_MS × speed`, summed.
pub fn capacity_rps() -> f64 {
    f64::from(PARALLEL) / (SERVICE_MS / 1e3) * SPEEDS.iter().sum::<f64>()
}

async fn start_worker(exe: &Path, i: usize, speed: f64) -> Result<(ChildProcess, String), BenchError> {
    let mut args: Vec<String> = ["worker", "--listen", "127.0.0.1:0"].map(String::from).into();
    args.extend(super::parallel_worker_args(PARALLEL, SERVICE_MS));
    args.extend(["--speed".to_string(), speed.to_string()]);
    let (child, mut addresses) =
        ChildProcess::start(&format!("worker-{i}"), exe, &args, &["worker serving on "], START_TIMEOUT)
            .await?;
    Ok((child, addresses.remove(0)))
}

/// Runs the scenario with its processes under `dir`.
pub(crate) async fn run(
    args: &BenchArgs,
    exe: &Path,
    nginx_exe: &Path,
    haproxy_exe: &Path,
    dir: &Path,
) -> Result<HeteroReport, BenchError> {
    let rate = LOAD * capacity_rps();
    let mut workers = Vec::new();
    for (i, speed) in SPEEDS.iter().enumerate() {
        workers.push(start_worker(exe, i, *speed).await?);
    }
    let addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
    eprintln!("bench: parallel workers {SPEEDS:?} on {}; {rate:.1} req/s offered", addresses.join(" "));
    let results = super::targets::compare_balancers(
        exe,
        args,
        workers,
        (nginx_exe, haproxy_exe),
        dir,
        async |target: &str, address: &str| replay(target, address, args.duration, rate).await,
    )
    .await?;
    Ok(HeteroReport {
        scenario: "hetero-parallel".into(),
        speeds: SPEEDS.to_vec(),
        duration_s: args.duration,
        time_scale: 1.0,
        offered_rps: rate,
        load: LOAD,
        proxy_threads: args.proxy_threads(),
        results,
    })
}

async fn replay(target: &str, address: &str, duration: f64, rate: f64) -> Result<HeteroResult, BenchError> {
    eprintln!("bench: {target}");
    let loadgen_args = LoadgenArgs {
        target: format!("http://{address}"),
        pattern: Some(format!("poisson:{rate}")),
        duration: Some(duration),
        stream: false,
        ..LoadgenArgs::default()
    };
    let report =
        loadgen::run(&loadgen_args).await.map_err(|e| BenchError::Setup(format!("{target}: {e}")))?;
    // Let the workers' queues drain before the next target.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(HeteroResult {
        target: target.to_string(),
        requests: report.requests,
        ok: report.ok,
        ttft_ms: report.ttft_ms,
        latency_ms: report.latency_ms,
    })
}
