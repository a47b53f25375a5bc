//! Many balancers, one fleet, over real processes: two `switchyard gateway`s, each with its own
//! balancer and nothing shared between them but the replicas' answers (their latencies and the
//! ORCA load reports in the trailers), over the same three `switchyard worker`s.
//!
//! Each gateway sees only its own requests in flight, so two of them that each pick "the least
//! loaded replica" may pile onto the same one while another idles (the lab's `herd` scenario
//! measures this in simulation). Here the same load is run twice over the same workers: all of it
//! through one gateway, then split in two halves sent at once through two gateways. The two
//! gateways must spread the calls about as well, and keep the tail about as short, as the one.
//!
//! The workers are classic servers (`--kind parallel`): `SLOTS` requests at once, each in
//! `SERVICE_MS`, the rest queued. So a worker's capacity is exact (40 calls/s), and so is the
//! offered load: 60 % of the three workers' 120 calls/s. A worker sent more than its share queues
//! at once, and the p99 shows it. The gateways run one thread each, with the default policy.
//!
//! Five runs on a 2-core machine (debug build, other builds running): each worker served
//! 23-40 % of the calls through two gateways and 28-39 % through one (fair: 33 %, bounds 17-50 %);
//! the p99 latency through two was 0.86-1.11 times that through one (138-151 ms; bound 1.5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard::loadgen::{self, LoadgenArgs, Outcome, RequestSample};
use switchyard::report::Percentiles;
use switchyard::sim::{LengthSampler, Pattern, Synthetic, TraceRecord};
use tokio::process::Child;

/// Equal-speed workers.
const WORKERS: usize = 3;
/// Requests each worker serves at once.
const SLOTS: u32 = 4;
/// Time of one request on a worker, in milliseconds: capacity `SLOTS / SERVICE_MS` = 40 calls/s.
const SERVICE_MS: u32 = 100;
/// Calls per second of each half of the load (Poisson): 2 × 36 = 72/s, 60 % of 3 × 40.
const HALF_RATE: f64 = 36.0;
/// Seconds of load per run: about 580 calls.
const LOAD_SECONDS: u64 = 8;
/// Each worker's share of the calls, as a multiple of its fair share (1/3), must be within these:
/// loose enough for Poisson arrivals over a few hundred calls on a noisy machine, tight enough
/// that a worker left idle or one taking half of everything fails.
const SHARE_BOUNDS: (f64, f64) = (0.5, 1.5);
/// The p99 latency through two gateways may be at most this multiple of the p99 through one
/// carrying the same load. Service alone is 100 ms; a herd that sends one worker half the calls
/// (90 % of its capacity) queues them for several service times.
const MAX_P99_RATIO: f64 = 1.5;

/// What one run measured.
#[derive(Debug)]
struct Run {
    /// Calls sent.
    calls: usize,
    /// Calls that failed, by gRPC code.
    failed: BTreeMap<&'static str, u64>,
    /// Calls ended per worker (by address), summed over the run's gateways' admin APIs.
    served: BTreeMap<String, u64>,
    /// Latency of the successful calls, in milliseconds.
    latency_ms: Percentiles,
}

impl Run {
    fn share(&self, worker: &str) -> f64 {
        let total: u64 = self.served.values().sum();
        self.served.get(worker).copied().unwrap_or(0) as f64 / total.max(1) as f64
    }

    fn line(&self, name: &str, workers: &[String]) -> String {
        let shares: Vec<String> = workers.iter().map(|w| format!("{:.1} %", 100.0 * self.share(w))).collect();
        format!(
            "{name}: {} calls, failed {:?}, shares [{}], latency p50 {:.1} ms, p99 {:.1} ms",
            self.calls,
            self.failed,
            shares.join(", "),
            self.latency_ms.p50,
            self.latency_ms.p99
        )
    }
}

/// A `--kind parallel` worker of `SLOTS` slots and `SERVICE_MS` per call: its child and address.
async fn worker() -> (Child, String) {
    let (slots, service_ms) = (SLOTS.to_string(), SERVICE_MS.to_string());
    let args = ["worker", "--listen", "127.0.0.1:0", "--kind", "parallel"];
    let args = [&args[..], &["--parallel", &slots, "--service-ms", &service_ms]].concat();
    common::spawn_until(&args, "worker serving on ").await
}

/// A one-thread gateway over `workers` with the default policy: its child, gRPC and admin
/// addresses.
async fn gateway(workers: &[String]) -> (Child, SocketAddr, SocketAddr) {
    let mut args = vec!["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--threads", "1"];
    for w in workers {
        args.extend(["--backend", w.as_str()]);
    }
    let (child, addrs) = common::spawn_until_all(&args, &["gateway serving on ", "admin serving on "]).await;
    (child, addrs[0].parse().unwrap(), addrs[1].parse().unwrap())
}

/// Calls ended per endpoint of the gateway's `default` pool, whatever their outcome.
async fn ended(admin: SocketAddr) -> BTreeMap<String, u64> {
    let (status, body) = common::prometheus::get(admin, "/endpoints").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let endpoints = view["pools"][0]["endpoints"].as_array().unwrap();
    endpoints
        .iter()
        .map(|e| {
            let load = &e["load"];
            let n = ["completed", "failed", "overloaded", "cancelled"]
                .iter()
                .map(|k| load[k].as_u64().unwrap())
                .sum();
            (e["endpoint"]["id"].as_str().unwrap().to_string(), n)
        })
        .collect()
}

/// Streaming calls on `records`' schedule through the gateway at `addr`.
async fn drive(addr: SocketAddr, records: Vec<TraceRecord>) -> Vec<RequestSample> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let args = LoadgenArgs {
        target: addr.to_string(),
        stream: true,
        timeout: Duration::from_secs(20),
        ..LoadgenArgs::default()
    };
    let (report, samples) = loadgen::drive_sampled(channel, records, "poisson".into(), &args).await;
    assert_eq!(report.dropped, 0, "{report:?}");
    samples
}

/// Runs `halves` at once, half `i` through gateway `i` (or all through the one gateway given),
/// and sums what the gateways' admin APIs counted.
async fn run(gateways: &[(SocketAddr, SocketAddr)], halves: [Vec<TraceRecord>; 2]) -> Run {
    let calls = halves.iter().map(Vec::len).sum::<usize>();
    let samples: Vec<RequestSample> = if let [(one, _)] = gateways {
        let mut all: Vec<TraceRecord> = halves.into_iter().flatten().collect();
        all.sort_by_key(|r| r.at);
        drive(*one, all).await
    } else {
        let [a, b] = halves;
        let (a, b) = tokio::join!(drive(gateways[0].0, a), drive(gateways[1].0, b));
        a.into_iter().chain(b).collect()
    };
    assert_eq!(samples.len(), calls);
    let mut failed = BTreeMap::new();
    let mut latencies = Vec::new();
    for sample in &samples {
        match &sample.outcome {
            Outcome::Ok { latency, .. } => latencies.push(latency.as_secs_f64() * 1e3),
            Outcome::Failed(code) => *failed.entry(*code).or_insert(0) += 1,
        }
    }
    // A gateway counts a call when its response ends, a moment after the client has the trailers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let served = loop {
        let mut served = BTreeMap::new();
        for (_, admin) in gateways {
            for (id, n) in ended(*admin).await {
                *served.entry(id).or_insert(0) += n;
            }
        }
        if served.values().sum::<u64>() as usize >= calls || tokio::time::Instant::now() > deadline {
            break served;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling interval
    };
    Run { calls, failed, served, latency_ms: Percentiles::of(&mut latencies) }
}

fn half(seed: u64) -> Vec<TraceRecord> {
    let pattern = Pattern::Poisson { rate: HALF_RATE };
    Synthetic::new(pattern, LengthSampler::fixed(64, 4), Duration::from_secs(LOAD_SECONDS), seed).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_over_one_fleet_spread_the_load_and_keep_the_tail_of_one() {
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(worker().await);
    }
    let addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
    let (_solo, solo_addr, solo_admin) = gateway(&addresses).await;
    let (_first, first_addr, first_admin) = gateway(&addresses).await;
    let (_second, second_addr, second_admin) = gateway(&addresses).await;

    let one = run(&[(solo_addr, solo_admin)], [half(1), half(2)]).await;
    let two = run(&[(first_addr, first_admin), (second_addr, second_admin)], [half(1), half(2)]).await;
    println!("{}", one.line("one gateway ", &addresses));
    println!("{}", two.line("two gateways", &addresses));

    for (name, run) in [("one gateway", &one), ("two gateways", &two)] {
        assert!(run.failed.is_empty(), "{name}: every call succeeds: {run:?}");
        assert_eq!(
            run.served.values().sum::<u64>() as usize,
            run.calls,
            "{name}: the gateways counted every call once: {run:?}"
        );
        assert_eq!(run.served.len(), WORKERS, "{name}: {run:?}");
        for w in &addresses {
            let ratio = run.share(w) * WORKERS as f64;
            assert!(
                (SHARE_BOUNDS.0..=SHARE_BOUNDS.1).contains(&ratio),
                "{name}: worker {w} got {ratio:.2}x its fair share, outside {SHARE_BOUNDS:?}: {run:?}"
            );
        }
        assert!(
            run.latency_ms.p50 >= f64::from(SERVICE_MS) * 0.95,
            "{name}: a call takes at least its service time: {run:?}"
        );
    }
    assert!(
        two.latency_ms.p99 <= MAX_P99_RATIO * one.latency_ms.p99,
        "p99 through two gateways {:.1} ms > {MAX_P99_RATIO} x {:.1} ms through one",
        two.latency_ms.p99,
        one.latency_ms.p99
    );
}
