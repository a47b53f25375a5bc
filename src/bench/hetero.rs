//! Scenario `hetero`: four workers, one five times slower, loaded with the bundled Azure
//! conversation trace (streaming calls, through [`crate::loadgen`]) at about 64 % of their
//! capacity, through the gateway with each policy and through nginx and HAProxy with each of
//! their two balancing methods. What matters here is the tail of the time to first token: a
//! balancer that does not notice the slow worker queues a quarter of the calls behind it.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{BenchArgs, BenchError, start_worker};
use crate::cluster::{REPLICA_CAPACITY_RPS, time_scale_for_window, window_rate};
use crate::loadgen::{self, LoadgenArgs};
use crate::report::{Percentiles, Table};

/// The workers' speeds: three at 1, one five times slower.
pub const SPEEDS: [f64; 4] = [1.0, 1.0, 1.0, 0.2];

/// The load, as a share of the workers' capacity.
pub const LOAD: f64 = 0.64;

/// What one target measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeteroResult {
    /// `switchyard:<policy>`, `nginx:round-robin`, `haproxy:leastconn`, ...
    pub target: String,
    /// Calls sent.
    pub requests: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Time to first token of the successful calls, in milliseconds.
    pub ttft_ms: Percentiles,
    /// Latency of the successful calls, in milliseconds.
    pub latency_ms: Percentiles,
}

/// The report of scenario `hetero`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeteroReport {
    /// `hetero`.
    pub scenario: String,
    /// The workers' speeds.
    pub speeds: Vec<f64>,
    /// Seconds of trace replayed per target.
    pub duration_s: f64,
    /// The trace's time scale.
    pub time_scale: f64,
    /// Offered requests/s.
    pub offered_rps: f64,
    /// Offered load over capacity.
    pub load: f64,
    /// Threads (nginx: worker processes) of each proxy.
    pub proxy_threads: usize,
    /// One entry per target, in the order run.
    pub results: Vec<HeteroResult>,
}

impl HeteroReport {
    /// The results as a table, p99 TTFT first.
    pub fn table(&self) -> Table {
        let mut table =
            Table::new(["target", "p99 TTFT ms", "p50 TTFT ms", "p99 latency ms", "ok", "requests"]);
        for r in &self.results {
            table.row([
                r.target.clone(),
                format!("{:.0}", r.ttft_ms.p99),
                format!("{:.0}", r.ttft_ms.p50),
                format!("{:.0}", r.latency_ms.p99),
                r.ok.to_string(),
                r.requests.to_string(),
            ]);
        }
        table
    }

    /// A heading and the table.
    pub fn summary(&self) -> String {
        format!(
            "bench {}: workers {:?}, {:.1} req/s offered ({:.0}% of capacity), {} s per target\n\n{}",
            self.scenario,
            self.speeds,
            self.offered_rps,
            self.load * 100.0,
            self.duration_s,
            self.table()
        )
    }
}

/// Runs the scenario with its processes under `dir`.
pub(crate) async fn run(
    args: &BenchArgs,
    exe: &Path,
    nginx_exe: &Path,
    haproxy_exe: &Path,
    dir: &Path,
) -> Result<HeteroReport, BenchError> {
    let records =
        crate::traces::azure_conv().map_err(|e| BenchError::Setup(format!("bundled trace: {e}")))?;
    let (time_scale, _) = time_scale_for_window(&records, args.duration, &SPEEDS, LOAD);
    let rate = window_rate(&records, args.duration / time_scale) / time_scale;
    drop(records);
    if !(time_scale.is_finite() && time_scale > 0.0 && rate > 0.0) {
        return Err(BenchError::Setup("cannot compute a time scale for the bundled trace".into()));
    }
    let capacity = REPLICA_CAPACITY_RPS * SPEEDS.iter().sum::<f64>();
    let mut workers = Vec::new();
    for (i, speed) in SPEEDS.iter().enumerate() {
        workers.push(start_worker(exe, i, *speed).await?);
    }
    let addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
    eprintln!("bench: workers {SPEEDS:?} on {}; {rate:.1} req/s offered", addresses.join(" "));
    let results = super::targets::compare_balancers(
        exe,
        args,
        workers,
        (nginx_exe, haproxy_exe),
        dir,
        async |target: &str, address: &str| replay(target, address, args.duration, time_scale).await,
    )
    .await?;
    Ok(HeteroReport {
        scenario: "hetero".into(),
        speeds: SPEEDS.to_vec(),
        duration_s: args.duration,
        time_scale,
        offered_rps: rate,
        load: rate / capacity,
        proxy_threads: args.proxy_threads(),
        results,
    })
}

async fn replay(
    target: &str,
    address: &str,
    duration: f64,
    time_scale: f64,
) -> Result<HeteroResult, BenchError> {
    eprintln!("bench: {target}");
    let loadgen_args = LoadgenArgs {
        target: format!("http://{address}"),
        time_scale,
        duration: Some(duration),
        stream: true,
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
