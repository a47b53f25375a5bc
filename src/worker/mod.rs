//! `switchyard worker`: a KServe v2 gRPC model server over one simulated LLM engine.
//!
//! The worker is the replica of the example cluster, the lab's real-process twin and the target
//! of the benchmarks. It serves:
//! - `inference.GRPCInferenceService` (KServe Open Inference Protocol v2) for one model, with
//!   Triton's `ModelStreamInfer` (one response per generated token) and `RepositoryIndex`;
//! - `grpc.health.v1.Health`, SERVING while the worker accepts work and NOT_SERVING from the
//!   moment it starts draining;
//! - gRPC server reflection (`v1` and `v1alpha`), so `grpcurl` and similar tools need no protos;
//! - on every response, the `endpoint-load-metrics-bin` trailer: an ORCA report of the engine's
//!   queue depth, running requests and KV-cache utilisation ([`LoadReportLayer`]); a
//!   `ModelStreamInfer` response carries one in its headers too, read once the stream's first
//!   request is admitted, so that a balancer hears the replica's load a round trip after it
//!   sent, not a generation later;
//! - `xds.service.orca.v3.OpenRcaService`: the same report streamed out of band, at the
//!   interval each subscriber asks for ([`oob`]), so that balancers hear of load they did not
//!   send between their own answers.
//!
//! A `ModelInfer` request carries its prompt in the BYTES tensor `text_input` and may set the
//! parameters `max_tokens` (output tokens, default 64) and, to replay a trace exactly,
//! `prompt_tokens` and `prefix_hashes` (comma-separated KV-block ids). The reply holds the
//! generated text in `text_output` and the engine's timings in its parameters (`queue_us`,
//! `ttft_us`, `total_us`, `cached_prompt_tokens`).
//!
//! A request whose caller has gone (cancelled, deadline passed, connection closed) leaves the
//! engine at once, whether queued, prefilling or decoding, and frees its KV reservation: the
//! server drops a unary call's future, and a stream's generations watch for the response being
//! dropped. A call's `grpc-timeout` also travels into the engine, which drops a request still
//! queued at its deadline before spending a prefill on it, and a `ModelStreamInfer` stream ends
//! with DEADLINE_EXCEEDED at its deadline (tonic applies `grpc-timeout` to response headers only).
//!
//! With `--register-etcd URL[,URL]` (a build with `--features etcd`) the worker registers its
//! endpoint in etcd under `--etcd-prefix` on a lease of `--etcd-ttl` that it keeps alive, so that
//! gateways with an etcd `[[pool.discovery]]` on that prefix add it (over TLS with `--etcd-ca`,
//! and `--etcd-cert`/`--etcd-key` for a server that asks for a client certificate); it
//! deregisters first thing on shutdown, and if it dies its key goes when the lease runs out.
//!
//! On shutdown (SIGTERM or Ctrl-C in the binary) the worker turns NOT_SERVING, refuses new
//! inference requests with UNAVAILABLE, lets in-flight ones finish (at most `--drain-timeout`:
//! those still running then end with UNAVAILABLE), and returns.

pub mod fault;
mod inference;
pub mod kv_events;
mod load_report;
mod local;
mod metrics;
pub mod oob;

pub use local::{LocalWorker, STOP_TIMEOUT, StopError};
mod registration;
pub mod request;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use inference::{InferenceService, token_text};
pub use load_report::{LoadReport, LoadReportBody, LoadReportLayer};
pub use metrics::{
    EngineMetrics, REPLICA_CACHED_PROMPT_TOKENS, REPLICA_KV_CACHE, REPLICA_PROMPT_TOKENS, REPLICA_QUEUE,
    REPLICA_RUNNING, serve_metrics,
};
use switchyard_core::StatusLayer;
use switchyard_shed::{QueueSignal, ServerShedLayer, ShedConfig};
use switchyard_sim::{EngineConfig, EngineHandle};
use switchyard_telemetry::{MetricsRegistry, RpcLayer};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The gRPC service name of the inference service, as health checks name it.
pub const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";

/// Largest gRPC message the worker accepts or sends (64 MiB: long prompts as raw bytes).
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How a worker is set up: flags of `switchyard worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Address to serve gRPC on: `IP:PORT`, or `HOST:PORT` (resolved at startup).
    #[arg(long, default_value = "127.0.0.1:9001", value_parser = crate::listen::parse_listen_address)]
    pub listen: SocketAddr,
    /// Name of the model this worker serves.
    #[arg(long, default_value = "sim-llm")]
    pub model: String,
    /// Requests the engine runs at once (continuous batching; vLLM's max_num_seqs).
    #[arg(long, default_value_t = EngineConfig::default().max_batch)]
    pub max_batch: u32,
    /// KV-cache capacity in tokens.
    #[arg(long, default_value_t = EngineConfig::default().kv_capacity_tokens)]
    pub kv_capacity: u64,
    /// Requests that may wait for a batch slot; beyond this they get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = EngineConfig::default().max_queue)]
    pub max_queue: usize,
    /// Relative speed of the simulated GPU: 1 is an H100 serving Llama 3.1 8B, 0.5 about an A100.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Longest wait for in-flight requests on shutdown, e.g. `30s`, `500ms`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// On shutdown, how long the worker goes on serving after it reports NOT_SERVING on
    /// `grpc.health.v1`, before it refuses new requests and drains: time for health watchers
    /// (a gateway's `[pool.health]`) to stop sending to it, so no call races the refusal. One
    /// health update through `Watch` takes milliseconds; a watcher that polls `Check` needs its
    /// interval.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,
    /// What the simulated replica is: an LLM engine (`llm`), or a classic server (`parallel`)
    /// that runs `--parallel` requests at once in `--service-ms` each and queues the rest.
    #[arg(long, value_enum, default_value_t = ReplicaKindArg::Llm)]
    pub kind: ReplicaKindArg,
    /// `--kind parallel`: requests served at once (replaces `--max-batch`).
    #[arg(long, default_value_t = 8)]
    pub parallel: u32,
    /// `--kind parallel`: milliseconds one request takes at speed 1 (divided by `--speed`).
    #[arg(long, default_value_t = 10.0)]
    pub service_ms: f64,
    /// Shed requests at the door from the engine's own queue (`switchyard_shed::ServerShedLayer`)
    /// with this target queueing delay, e.g. `50ms`: once the wait a newcomer should expect has
    /// stayed above it for ten times as long, sheddable requests are refused first (above the
    /// target), then standard ones (above twice the target), critical ones only for their
    /// deadline; a burst never queues a sheddable or standard request longer than the service
    /// time the layer learns (at least twice the target); refusals are RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`, and a request
    /// whose deadline has passed never reaches the engine. Off when absent.
    #[arg(long, value_name = "TARGET", value_parser = humantime::parse_duration)]
    pub shed: Option<Duration>,
    /// Serve Prometheus metrics (`GET /metrics`: RPC metrics and the engine's load) on this
    /// address, `IP:PORT` or `HOST:PORT`.
    #[arg(long, value_parser = crate::listen::parse_listen_address)]
    pub metrics_listen: Option<SocketAddr>,
    /// Whether each call gets a span (set when an exporter is configured, see
    /// `switchyard_telemetry::init`).
    #[arg(skip)]
    pub tracing: bool,
    /// The registry `/metrics` renders (`switchyard_telemetry::init`'s); a new one if `None`.
    #[arg(skip)]
    pub registry: Option<MetricsRegistry>,
    /// etcd servers (comma-separated URLs) to register this worker in, under a lease kept alive,
    /// so that gateways watching `--etcd-prefix` find it. Needs a build with `--features etcd`.
    #[arg(long, value_delimiter = ',')]
    pub register_etcd: Vec<String>,
    /// The key prefix the worker registers under (its key: the prefix and `HOST:PORT`).
    #[arg(long, default_value = "/switchyard/endpoints/")]
    pub etcd_prefix: String,
    /// The TTL of the registration's lease: how long a worker that dies stays registered.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub etcd_ttl: Duration,
    /// The CA (PEM) the etcd servers' certificates chain to: registers over TLS (the servers
    /// `https://`).
    #[arg(long)]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// The client certificate (PEM) to present to etcd (with `--etcd-key`, and `--etcd-ca`).
    #[arg(long, requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// The address to register, `http://HOST:PORT` (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Stay NOT_SERVING (health) and refuse inference for this long after binding, e.g. `30s`:
    /// models a replica loading its weights (the autoscaler's cold start).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,
    /// Inject a fault into every inference call: `unavailable` (answer UNAVAILABLE), `slow=FACTOR`
    /// (take FACTOR times as long) or `reset` (reset the stream after its first DATA frame); see
    /// [`fault`]. For fault tests and `switchyard bench faults`.
    #[arg(long, value_name = "FAULT")]
    pub fault: Option<fault::Fault>,
    /// With `--fault`: keep the fault off until the process gets SIGUSR1 (SIGUSR2 turns it off
    /// again), to inject it at a chosen moment.
    #[arg(long, requires = "fault")]
    pub fault_on_signal: bool,
    /// Serve gRPC over TLS (ALPN h2) with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require client certificates signed by a CA of this PEM file (mutual TLS; with --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

/// `--kind` of `switchyard worker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplicaKindArg {
    /// An LLM engine: continuous batching, prefill and decode costs, KV cache.
    Llm,
    /// A classic server: `--parallel` slots at `--service-ms` each, FIFO queue for the rest.
    Parallel,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        let engine = EngineConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            model: "sim-llm".into(),
            max_batch: engine.max_batch,
            kv_capacity: engine.kv_capacity_tokens,
            max_queue: engine.max_queue,
            speed: 1.0,
            drain_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_millis(500),
            kind: ReplicaKindArg::Llm,
            parallel: 8,
            service_ms: 10.0,
            shed: None,
            metrics_listen: None,
            tracing: false,
            registry: None,
            register_etcd: Vec::new(),
            etcd_prefix: "/switchyard/endpoints/".into(),
            etcd_ttl: Duration::from_secs(10),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            advertise: None,
            cold_start: Duration::ZERO,
            fault: None,
            fault_on_signal: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl WorkerArgs {
    /// The engine configuration these flags describe (a parallel kind's bad `--service-ms`
    /// is refused by [`EngineConfig::validate`] as a zero service time).
    pub fn engine_config(&self) -> EngineConfig {
        let config = EngineConfig {
            max_batch: self.max_batch,
            kv_capacity_tokens: self.kv_capacity,
            max_queue: self.max_queue,
            speed: self.speed,
            ..EngineConfig::default()
        };
        match self.kind {
            ReplicaKindArg::Llm => config,
            ReplicaKindArg::Parallel => {
                let service_time =
                    Duration::try_from_secs_f64(self.service_ms / 1e3).unwrap_or(Duration::ZERO);
                EngineConfig {
                    max_batch: self.parallel,
                    kind: switchyard_sim::ReplicaKind::Parallel { service_time },
                    ..config
                }
            }
        }
    }
}

/// Why a worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A flag's value is out of range.
    #[error("invalid engine setting: {0}")]
    Config(#[from] switchyard_sim::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    /// Reflection could not be set up (the embedded descriptors are broken).
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// `--register-etcd` failed.
    #[error("registration failed: {0}")]
    Registration(String),
    /// A `--tls-*` file cannot be read.
    #[error("cannot read {flag} {}: {source}", path.display())]
    Tls {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl WorkerArgs {
    /// The server's TLS settings from `--tls-cert`, `--tls-key` and `--tls-client-ca`, if given
    /// (tonic's rustls support: ALPN h2, client certificates verified against the CA).
    pub fn tls_config(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, WorkerError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |flag: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| WorkerError::Tls { flag, path: path.to_owned(), source })
        };
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        Ok(Some(tls))
    }
}

/// The server-side shed layer of `--shed TARGET` over `engine`'s own queue signals (its queue
/// length and the wait of its oldest queued request): CoDel's interval ten times the target,
/// at most `max_queue` waiting before non-critical requests are refused; judges inference
/// calls only (health checks and reflection pass).
pub fn engine_shed(engine: &EngineHandle, target: Duration, max_queue: usize) -> ServerShedLayer {
    let engine = engine.clone();
    let config = ShedConfig { max_queue, target, interval: target.saturating_mul(10), pool: None };
    ServerShedLayer::new(config, move || {
        let load = engine.load();
        QueueSignal {
            waiting: load.queue_depth,
            head_wait: load.oldest_queued_at.map_or(Duration::ZERO, |at| at.elapsed()),
            running: Some(load.running),
        }
    })
    .with_path_prefix(format!("/{INFERENCE_SERVICE}/"))
}

/// Binds `args.listen` and serves until `shutdown` completes, then drains.
pub async fn run(args: WorkerArgs, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| WorkerError::Bind { addr: args.listen, source })?;
    serve(args, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0) until `shutdown` completes, then
/// drains: NOT_SERVING while still serving for `args.drain_grace`, then new inference refused,
/// in-flight requests finish (at most `args.drain_timeout`). Metrics are served on `args.metrics_listen`, if set.
pub async fn serve(
    args: WorkerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let metrics = match args.metrics_listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.map_err(|source| WorkerError::Bind { addr, source })?)
        }
        None => None,
    };
    serve_with_metrics(args, listener, metrics, shutdown).await
}

/// [`serve`], with `GET /metrics` on `metrics` if given (instead of `args.metrics_listen`): RPC
/// metrics of every call (`rpc_server_duration_seconds`, ...) and the engine's load.
pub async fn serve_with_metrics(
    args: WorkerArgs,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let engine = EngineHandle::spawn(args.engine_config())?;
    let registry = metrics.as_ref().map(|_| args.registry.clone().unwrap_or_default());
    let rpc = RpcLayer::server().with_metrics(registry.as_ref()).with_tracing(args.tracing);
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match (metrics, &registry) {
        (Some(listener), Some(registry)) => {
            registry.add_source(Arc::new(EngineMetrics::new(engine.clone(), registry)));
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("metrics serving on {addr} (GET /metrics)");
            }
            Some(tokio::spawn(serve_metrics(listener, registry.clone(), async {
                let _ = metrics_stopped.await;
            })))
        }
        _ => None,
    };
    let cold = !args.cold_start.is_zero();
    let ready = Arc::new(AtomicBool::new(!cold));
    // Set when draining begins: health NOT_SERVING and KServe readiness false together.
    let draining = Arc::new(AtomicBool::new(false));
    let inference =
        InferenceService::new(&args.model, engine.clone(), ready.clone()).with_draining(draining.clone());
    let (kv_stop, kv_stopped) = tokio::sync::watch::channel(false);
    let oob_reports = oob::OobReportService::new(engine.clone(), kv_stopped.clone());
    let kv_events = kv_events::KvEventsService::new(engine.clone(), kv_events::new_instance(), kv_stopped);

    let (mut health, health_service) = tonic_health::server::health_reporter();
    let status = if cold { ServingStatus::NotServing } else { ServingStatus::Serving };
    health.set_service_status("", status).await;
    health.set_service_status(INFERENCE_SERVICE, status).await;
    // The cold start: SERVING once it has passed, unless the worker started draining meanwhile.
    let warm_up = cold.then(|| {
        let (health, ready, draining, delay) =
            (health.clone(), ready.clone(), draining.clone(), args.cold_start);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if !draining.load(Ordering::Acquire) {
                ready.store(true, Ordering::Release);
                health.set_service_status("", ServingStatus::Serving).await;
                health.set_service_status(INFERENCE_SERVICE, ServingStatus::Serving).await;
                tracing::info!("cold start over: SERVING");
            }
        })
    });

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(switchyard_hash::precise::proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(switchyard_hash::precise::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        tracing::info!(model = %args.model, "worker serving on {addr}");
    }

    let registered = registration::register(&args, local).await?;
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_grace = args.drain_grace;
    let signal = async move {
        shutdown.await;
        if let Some(registered) = registered {
            registered.deregister().await;
        }
        // NOT_SERVING first, while still serving: a gateway watching health stops sending
        // before anything is refused (refusing first would fail the calls it sends meanwhile).
        tracing::info!("draining: NOT_SERVING, serving on for {drain_grace:?}");
        draining.store(true, Ordering::Release);
        if let Some(warm_up) = warm_up {
            warm_up.abort();
        }
        health.set_service_status("", ServingStatus::NotServing).await;
        health.set_service_status(INFERENCE_SERVICE, ServingStatus::NotServing).await;
        tokio::time::sleep(drain_grace).await;
        tracing::info!("draining: refusing new requests");
        ready.store(false, Ordering::Release);
        // Dropping the statuses ends open Watch streams after they deliver NOT_SERVING, so that
        // health watchers do not hold the connections open through the drain.
        health.clear_service_status("").await;
        health.clear_service_status(INFERENCE_SERVICE).await;
        // KV-event and out-of-band load-report streams end too (their subscribers fall back
        // until a worker answers again).
        kv_stop.send_replace(true);
        let _ = drain_tx.send(());
    };

    let fault_layer = args.fault.map_or_else(fault::FaultLayer::none, |f| {
        let on = Arc::new(AtomicBool::new(!args.fault_on_signal));
        if args.fault_on_signal {
            fault::switch_on_signals(on.clone(), f);
        } else {
            tracing::warn!("injecting fault {f} into every inference call");
        }
        fault::FaultLayer::new(f, on)
    });
    let reporter = engine.clone();
    let shed = args.shed.map(|target| (StatusLayer, engine_shed(&engine, target, args.max_queue)));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = args.tls_config()? {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .layer(rpc)
        .layer(
            LoadReportLayer::new(move || reporter.reported_load())
                .with_head_report(|path| path == switchyard_keys::MODEL_STREAM_INFER),
        )
        .layer(tower::util::option_layer(shed))
        // Either's two sides fail with one type: the shed side's BoxError.
        .layer(tower::util::MapErrLayer::new(
            |e: std::convert::Infallible| -> switchyard_core::error::BoxError { match e {} },
        ))
        .layer(fault_layer)
        .add_service(
            GrpcInferenceServiceServer::new(inference)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(kv_events::KvEventsServer::new(kv_events))
        .add_service(oob::OpenRcaServiceServer::new(oob_reports))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming(listener), signal);

    let drain_timeout = args.drain_timeout;
    let deadline = async move {
        if drain_rx.await.is_ok() {
            tokio::time::sleep(drain_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result?,
        () = deadline => {
            let load = engine.load();
            tracing::warn!(running = load.running, queued = load.queue_depth, "drain timeout: stopping with requests in flight");
            // The server's connections outlive its future: end their generations here, so that
            // no call runs on after `serve` returns (in a process that goes on, as tests do).
            engine.shutdown();
        }
    }
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// The worker's connections from `listener`, with TCP_NODELAY: without it a reply's frames wait
/// for the peer's delayed ACK (Nagle's algorithm), and on a lightly used connection a 20 ms call
/// took 60 ms one time in ten (`reports/bench/hetero-parallel.md`).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_delayed_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let mut connections = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = connections.next().await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"), "Nagle's algorithm is off");
    }
}
