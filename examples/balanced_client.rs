//! An existing tonic client, balanced over several replicas by composing Switchyard's balancer
//! under it: the way a microservice that already talks to one model server adopts Switchyard.
//!
//! The generated client stays as it is; only the service it is built on changes, from one
//! `Channel` to a `Balance` over one `Channel` per replica (made `Shared`, so the client is
//! `Clone` and many tasks can share it). Each request goes to the replica the policy picks (least
//! response time by default), and the balancer's `LoadBoard` shows where they went.
//!
//! ```sh
//! # three in-process workers on 127.0.0.1, one of them four times slower than the others
//! cargo run --example balanced_client
//! # or replicas that are already running (`http://HOST:PORT` or `HOST:PORT`)
//! cargo run --example balanced_client -- 127.0.0.1:9001 127.0.0.1:9002
//! ```
//!
//! It exits non-zero when every request failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::loadgen::{infer_request, target_uri};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::sim::TraceRecord;
use switchyard::worker::{LocalWorker, WorkerArgs};
use switchyard_balance::{Backend, Balance, Shared};
use switchyard_core::Endpoint;
use tonic::transport::Channel;

/// Requests sent by the example.
pub(crate) const REQUESTS: u64 = 200;
/// Requests in flight at once. Were all 200 sent in the same instant, every replica would still
/// look alike (no latency sample yet, equal in-flight counts) and get a third; with a window, a
/// replica's answers come back before the next requests are placed, and the slow one's longer
/// latency and longer queue steer requests away from it.
const CONCURRENCY: usize = 32;
/// The in-process replicas' relative speeds: two H100-like ones and one four times slower. By
/// speed the slow one's share would be 1/9; in ten runs it got 6.5-14.5 % of the requests.
const SPEEDS: [f64; 3] = [1.0, 1.0, 0.25];

#[tokio::main]
async fn main() -> ExitCode {
    let targets: Vec<String> = std::env::args().skip(1).collect();
    match run(targets, REQUESTS).await {
        Ok(summary) if summary.ok == 0 => {
            eprintln!("error: all {} requests failed", summary.failed);
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a run measured: successes and failures as the calls returned them, and each replica's
/// figures from the balancer's board.
#[derive(Debug)]
#[allow(dead_code)] // `main` reads the counts; tests/examples.rs reads the rest
pub(crate) struct Summary {
    /// Calls that returned a response.
    pub(crate) ok: u64,
    /// Calls that returned an error status.
    pub(crate) failed: u64,
    /// The first error, as the client saw it.
    pub(crate) first_failure: Option<tonic::Status>,
    /// Per replica, in the board's order: id, requests it ended, of which failed.
    pub(crate) replicas: Vec<(String, u64, u64)>,
}

/// Sends `requests` calls, [`CONCURRENCY`] at a time, balanced over `targets` (`http://HOST:PORT`
/// or `HOST:PORT`), or over three in-process workers when `targets` is empty; prints the table.
pub(crate) async fn run(
    mut targets: Vec<String>,
    requests: u64,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let mut workers = Vec::new();
    if targets.is_empty() {
        for speed in SPEEDS {
            let worker = LocalWorker::start(WorkerArgs { speed, ..WorkerArgs::default() }).await?;
            println!("worker {} (speed {speed})", worker.uri());
            targets.push(worker.uri().to_string());
            workers.push(worker);
        }
    }

    // ---- Switchyard: one Channel per replica -> Balance -> Shared -> the usual tonic client ----
    let mut backends = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let uri = target_uri(target);
        let channel = Channel::from_shared(uri.clone())
            .map_err(|e| format!("bad replica address {target:?}: {e}"))?
            .connect_lazy();
        backends.push(Backend::new(Endpoint::new(format!("replica-{i}"), uri.as_str()), channel));
    }
    let balancer = Balance::from_backends(backends);
    let board = balancer.board();
    let client = GrpcInferenceServiceClient::new(Shared::new(balancer));
    // ---------------------------------------------------------------------------------------------

    let record =
        TraceRecord { at: Duration::ZERO, prompt_tokens: 256, output_tokens: 32, prefix: Default::default() };
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..requests)
        .map(|id| {
            let mut client = client.clone();
            let request = infer_request("sim-llm", id, &record);
            async move { client.model_infer(request).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut failures = results.into_iter().filter_map(Result::err);
    let first_failure = failures.next();
    let failed = u64::from(first_failure.is_some()) + failures.count() as u64;
    let ok = requests - failed;
    println!(
        "{requests} requests, {CONCURRENCY} at a time, in {:.2} s: {ok} ok, {failed} failed",
        started.elapsed().as_secs_f64(),
    );
    if let Some(status) = &first_failure {
        println!("first failure: {:?}: {}", status.code(), status.message());
    }

    // The board counts successes (`completed`) and failures (`failed`, `overloaded`) apart; a
    // replica's share is of all the requests it ended.
    let snapshot = board.snapshot();
    let ended = |load: &switchyard_core::Load| load.completed + load.failed + load.overloaded;
    let total: u64 = snapshot.iter().map(|e| ended(&e.load)).sum();
    println!(
        "{:<10} {:<24} {:>6} {:>6} {:>6} {:>13}",
        "replica", "address", "ok", "failed", "share", "latency ewma"
    );
    let mut replicas = Vec::new();
    for entry in &snapshot {
        let (requests, failed) = (ended(&entry.load), entry.load.failed + entry.load.overloaded);
        let share = 100.0 * requests as f64 / total.max(1) as f64;
        let latency =
            entry.load.latency_ewma.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3));
        println!(
            "{:<10} {:<24} {:>6} {:>6} {:>5.1}% {:>13}",
            entry.endpoint.id.as_str(),
            entry.endpoint.address,
            entry.load.completed,
            failed,
            share,
            latency
        );
        replicas.push((entry.endpoint.id.as_str().to_string(), requests, failed));
    }

    // The client's last handle closes the balancer and its channels; then the workers drain.
    drop(client);
    for worker in workers {
        if let Err(e) = worker.stop().await {
            eprintln!("{e}");
        }
    }
    Ok(Summary { ok, failed, first_failure, replicas })
}
