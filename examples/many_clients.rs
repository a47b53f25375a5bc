//! Many balancers, one fleet: clients that each balance on their own over the same replicas,
//! against the same load through one balancer they share.
//!
//! As a library, Switchyard runs inside every client process, so N clients are N balancers over
//! one fleet, with no state shared between them. Each sees only its own requests in flight; what
//! it learns of the others' load comes back from the replicas, in each answer's latency and in the
//! ORCA load report every worker response carries in its trailers (and a stream's in its headers,
//! as the worker admits the request). Balancers that each pick "the
//! least loaded replica" from what they see may pile onto the same one while another idles.
//!
//! The example starts three equal in-process workers and runs the same open-loop load twice, each
//! of `clients` tasks (8 by default) sending streaming `ModelStreamInfer` calls at its own Poisson
//! rate (1/`clients` of the total):
//!
//! 1. each task with a `Balance` of its own (the default policy) over channels of its own;
//! 2. every task through one `Balance` they share.
//!
//! For each it prints how many calls each replica served and its share, and the p99 time to first
//! token and latency. In three runs on 2026-12-04 (debug build, a 2-core machine, the workers
//! reporting a stream's load in its headers as well as its trailers) each replica served 30-37 %
//! of the calls with eight balancers and 31-36 % with one shared balancer; the p99 TTFT was
//! 48-58 ms against 38-41 ms, the p99 latency 205-225 ms against 178-187 ms. (Six runs on
//! 2026-12-03, with reports in the trailers only: 25-45 % against 27-37 %, p99 TTFT 52-65 ms
//! against 36-42 ms.) Eight balancers that each count only their own calls spread them less
//! evenly than one that counts them all, and the tail shows it.
//!
//! ```sh
//! # three in-process workers on 127.0.0.1; about 8 s
//! cargo run --example many_clients
//! # or replicas that are already running (`http://HOST:PORT` or `HOST:PORT`)
//! cargo run --example many_clients -- 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! ```
//!
//! It exits non-zero when a call failed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use switchyard::loadgen::{infer_request, target_uri};
use switchyard::proto::inference::ModelInferRequest;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::report::Percentiles;
use switchyard::sim::{LengthSampler, Pattern, Synthetic, TraceRecord, paced};
use switchyard::worker::{LocalWorker, WorkerArgs};
use switchyard_balance::{Backend, Balance, LoadBoard, Shared};
use switchyard_core::Endpoint;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

/// A tonic client over a balancer (its own or a shared one).
type Client = GrpcInferenceServiceClient<Shared<Balance<Channel, http::Request<tonic::body::Body>>>>;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Replicas, `http://HOST:PORT` or `HOST:PORT`; three in-process workers when empty.
    pub(crate) targets: Vec<String>,
    /// Client tasks, each with its own balancer in the first setup.
    pub(crate) clients: usize,
    /// Calls per second, all clients together.
    pub(crate) rate: f64,
    /// Seconds of load per setup.
    pub(crate) seconds: f64,
}

impl Default for Options {
    fn default() -> Self {
        // A worker at speed 1 answers these calls (512 prompt tokens, 16 output tokens) in about
        // 118 ms when idle (TTFT 20 ms); 60 calls/s over three puts about three at once on each,
        // batched (p50 latency about 145 ms): busy, far from saturated.
        Self { targets: Vec::new(), clients: 8, rate: 60.0, seconds: 3.0 }
    }
}

/// Prompt and output tokens of every call.
const PROMPT_TOKENS: u32 = 512;
const OUTPUT_TOKENS: u32 = 16;

/// What one setup measured.
#[derive(Debug)]
#[allow(dead_code)] // `main` reads the failures; tests/examples.rs reads the rest
pub(crate) struct Setup {
    /// `"8 balancers"` or `"1 shared balancer"`.
    pub(crate) name: String,
    /// Calls that succeeded.
    pub(crate) ok: u64,
    /// Calls that failed, by gRPC code.
    pub(crate) failed: BTreeMap<String, u64>,
    /// Calls each replica ended (by id, from the balancers' boards, summed).
    pub(crate) served: BTreeMap<String, u64>,
    /// Time to first token of the successful calls, in milliseconds.
    pub(crate) ttft_ms: Percentiles,
    /// Latency of the successful calls, in milliseconds.
    pub(crate) latency_ms: Percentiles,
}

#[tokio::main]
async fn main() -> ExitCode {
    let targets: Vec<String> = std::env::args().skip(1).collect();
    match run(Options { targets, ..Options::default() }).await {
        Ok(setups) if setups.iter().all(|s| s.failed.is_empty()) => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("error: some calls failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs both setups over `options.targets` (or three in-process workers) and prints them.
pub(crate) async fn run(mut options: Options) -> Result<Vec<Setup>, Box<dyn std::error::Error>> {
    let mut workers = Vec::new();
    if options.targets.is_empty() {
        for _ in 0..3 {
            // No health watcher to warn before draining: stop at once.
            let worker =
                LocalWorker::start(WorkerArgs { drain_grace: Duration::ZERO, ..WorkerArgs::default() })
                    .await?;
            println!("worker {}", worker.uri());
            options.targets.push(worker.uri().to_string());
            workers.push(worker);
        }
    }
    let clients = options.clients.max(1);
    // Client k's arrivals, the same in both setups.
    let schedules: Vec<Vec<TraceRecord>> = (0..clients)
        .map(|k| {
            let pattern = Pattern::Poisson { rate: options.rate / clients as f64 };
            let lengths = LengthSampler::fixed(PROMPT_TOKENS, OUTPUT_TOKENS);
            Synthetic::new(pattern, lengths, Duration::from_secs_f64(options.seconds), k as u64 + 1).collect()
        })
        .collect();
    println!(
        "{clients} clients, {:.0} calls/s in all for {:.1} s, streaming ({PROMPT_TOKENS} prompt tokens, \
         {OUTPUT_TOKENS} output tokens)",
        options.rate, options.seconds
    );

    // ---- Setup 1: a balancer per client, each with channels of its own ----
    let (mut own, mut boards) = (Vec::new(), Vec::new());
    for _ in 0..clients {
        let (client, board) = balanced_client(&options.targets)?;
        own.push(client);
        boards.push(board);
    }
    let first = run_setup(format!("{clients} balancers"), own, &boards, &schedules).await;

    // ---- Setup 2: one balancer, shared by every client (a `Shared` client is `Clone`) ----
    let (client, board) = balanced_client(&options.targets)?;
    let shared = vec![client; clients];
    let second = run_setup("1 shared balancer".into(), shared, &[board], &schedules).await;

    let setups = vec![first, second];
    print(&setups);
    for worker in workers {
        if let Err(e) = worker.stop().await {
            eprintln!("{e}");
        }
    }
    Ok(setups)
}

/// A tonic client over a `Balance` (default policy) of one lazily connected channel per target,
/// and the balancer's board.
fn balanced_client(targets: &[String]) -> Result<(Client, LoadBoard), String> {
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
    Ok((GrpcInferenceServiceClient::new(Shared::new(balancer)), board))
}

/// Each client sends its schedule's calls, open loop; then the setup's balancers' `boards` tell
/// which replica served them.
async fn run_setup(
    name: String,
    clients: Vec<Client>,
    boards: &[LoadBoard],
    schedules: &[Vec<TraceRecord>],
) -> Setup {
    // A balancer takes its endpoints off its board when its last client goes: hold them until
    // the board is read.
    let held = clients.clone();
    let mut tasks = JoinSet::new();
    for (client, schedule) in clients.into_iter().zip(schedules) {
        let schedule = schedule.clone();
        tasks.spawn(async move {
            let mut calls = JoinSet::new();
            let mut arrivals = std::pin::pin!(paced(schedule, 1.0));
            let mut id = 0;
            while let Some(record) = arrivals.next().await {
                id += 1;
                calls.spawn(stream_call(client.clone(), infer_request("sim-llm", id, &record)));
            }
            calls.join_all().await
        });
    }
    let results: Vec<_> = tasks.join_all().await.into_iter().flatten().collect();

    let (mut ttfts, mut latencies, mut failed) = (Vec::new(), Vec::new(), BTreeMap::new());
    for result in results {
        match result {
            Ok((ttft, latency)) => {
                ttfts.push(ttft.as_secs_f64() * 1e3);
                latencies.push(latency.as_secs_f64() * 1e3);
            }
            Err(status) => *failed.entry(format!("{:?}", status.code())).or_insert(0) += 1,
        }
    }
    let mut served = BTreeMap::new();
    for board in boards {
        for entry in board.snapshot() {
            let load = &entry.load;
            *served.entry(entry.endpoint.id.as_str().to_string()).or_insert(0) +=
                load.completed + load.failed + load.overloaded + load.cancelled;
        }
    }
    drop(held);
    Setup {
        name,
        ok: ttfts.len() as u64,
        failed,
        served,
        ttft_ms: Percentiles::of(&mut ttfts),
        latency_ms: Percentiles::of(&mut latencies),
    }
}

/// One streaming call with one request, read to its end (the trailers): time to the first
/// token's message and to the end.
async fn stream_call(
    mut client: Client,
    request: ModelInferRequest,
) -> Result<(Duration, Duration), tonic::Status> {
    let start = Instant::now();
    let mut responses = client.model_stream_infer(futures::stream::iter([request])).await?.into_inner();
    let mut ttft = None;
    while let Some(message) = responses.next().await {
        let message = message?;
        if !message.error_message.is_empty() {
            return Err(tonic::Status::unknown(message.error_message));
        }
        ttft.get_or_insert_with(|| start.elapsed());
    }
    let ttft = ttft.ok_or_else(|| tonic::Status::unknown("the stream ended without a token"))?;
    Ok((ttft, start.elapsed()))
}

fn print(setups: &[Setup]) {
    for setup in setups {
        let total: u64 = setup.served.values().sum();
        let failed: u64 = setup.failed.values().sum();
        println!("\n{}: {} ok, {failed} failed {:?}", setup.name, setup.ok, setup.failed);
        for (id, n) in &setup.served {
            println!("  {id:<10} {n:>5} calls  {:>5.1} %", 100.0 * *n as f64 / total.max(1) as f64);
        }
        println!(
            "  p99 ttft {:.1} ms, p99 latency {:.1} ms (p50 {:.1} / {:.1} ms)",
            setup.ttft_ms.p99, setup.latency_ms.p99, setup.ttft_ms.p50, setup.latency_ms.p50
        );
    }
}
