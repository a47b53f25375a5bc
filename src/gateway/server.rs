//! The running gateway: its listeners, its serving threads, their connections, and the drain on
//! shutdown.
//!
//! The proxy runs thread per core, as Envoy, nginx and HAProxy do: each serving thread has its own
//! single-threaded Tokio runtime, the client connections handed to it, and its own connection to
//! each endpoint (see `upstream`), so a request is read, balanced, forwarded and answered on one
//! thread, without waking another. One acceptor hands each new connection to the thread with the
//! fewest open. The pools' balancers (and their load boards) are shared by all threads, so every
//! pick sees the load of the whole gateway.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::admin;
use super::admin_auth::{self, AdminAccess};
use super::config::{ConfigError, GatewayConfig};
use super::downstream::{ConnectionError, ServeConnection};
use super::drain::{self, CallsInFlight, DrainGate, Draining};
use super::limits::{Refusal, Refusals};
use super::pool::Pool;
use super::process_metrics::ProcessMetrics;
use super::proxy::Proxy;
use super::route::Router;
use super::tls::{self, ListenerTls, TlsError};
use super::upstream;
use switchyard_telemetry::{BoardMetrics, EndpointObserver, MetricsRegistry, RpcLayer};

/// The gateway's telemetry: where its metrics go, and whether each call gets RPC metrics and a
/// span. The default: per-endpoint series only (read from the load boards at each scrape, so
/// requests pay nothing for them), no RPC metrics, no spans.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GatewayTelemetry {
    /// The registry `GET /metrics` renders.
    pub registry: MetricsRegistry,
    /// Whether each call is measured (`rpc_server_duration_seconds`, in flight, request and
    /// response bytes), and each endpoint's requests (`switchyard_endpoint_duration_seconds`, time
    /// to first byte, from the balancer's observer).
    pub rpc_metrics: bool,
    /// Whether each call gets a span (W3C trace context continued from the client's metadata
    /// and forwarded to the endpoint).
    pub tracing: bool,
}

impl GatewayTelemetry {
    /// Telemetry into `registry`, with RPC metrics and spans as given.
    pub fn new(registry: MetricsRegistry, rpc_metrics: bool, tracing: bool) -> Self {
        Self { registry, rpc_metrics, tracing }
    }
}

/// How long the admin listener waits for its own requests on shutdown.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// Accepted connections waiting for their serving thread to take them.
const HANDOFF_QUEUE: usize = 64;

/// Why a gateway could not start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS certificate, key or CA file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The admin API would be exposed without a token.
    #[error("{0}")]
    AdminExposed(String),
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A listener failed.
    #[error("gateway listener failed: {0}")]
    Io(#[from] std::io::Error),
    /// A serving task panicked.
    #[error("gateway task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A serving thread ended without draining (it panicked).
    #[error("gateway serving thread {0} failed")]
    Thread(usize),
}

/// A running gateway: the gRPC proxy on one listener, the admin API on another.
///
/// Dropping it without [`shutdown`](Self::shutdown) also stops it: the listeners close and the
/// connections drain in the background.
#[derive(Debug)]
pub struct Gateway {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    pools: Arc<[Pool]>,
    metrics: MetricsRegistry,
    threads: usize,
    /// Turns true when the drain begins: the proxy refuses new calls, then closes.
    stop: watch::Sender<bool>,
    /// Set with `stop`: read by every call, which it refuses once set.
    draining: Arc<AtomicBool>,
    /// Turns true when the proxy has drained: the admin API stops.
    admin_stop: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
    serving: Vec<oneshot::Receiver<()>>,
    admin: Option<JoinHandle<()>>,
}

/// The acceptor's side of a serving thread.
struct ServingThread {
    connections: mpsc::Sender<std::net::TcpStream>,
    open: Arc<AtomicUsize>,
}

impl Gateway {
    /// Validates `config`, starts a balancer per pool (connecting lazily to the endpoints) and
    /// the serving threads (`config.threads`, one per CPU by default), and serves gRPC (HTTP/2
    /// without TLS, prior knowledge; over TLS with the config's `tls`) on `listener` and the admin API on `admin`, if given. Logs
    /// `gateway serving on ADDR` and `admin serving on ADDR`. Must be called within a Tokio
    /// runtime, which runs the acceptor and the admin API.
    pub fn start(
        config: GatewayConfig,
        listener: TcpListener,
        admin: Option<TcpListener>,
    ) -> Result<Self, GatewayError> {
        Self::start_with_sources(config, listener, admin, Vec::new())
    }

    /// [`start`](Self::start), with more discovery sources given in code: each `(pool, source)`
    /// adds the endpoints `source` announces to that pool, besides its configured ones (a pool
    /// fed this way needs no `endpoints` of its own). This is how a program (an autoscaler, a
    /// test) feeds a gateway pool through a [`switchyard_discovery::channel`].
    pub fn start_with_sources(
        config: GatewayConfig,
        listener: TcpListener,
        admin: Option<TcpListener>,
        sources: Vec<(String, switchyard_discovery::Source)>,
    ) -> Result<Self, GatewayError> {
        Self::start_with_sources_and_telemetry(config, listener, admin, sources, GatewayTelemetry::default())
    }

    /// [`start`](Self::start), with `telemetry`: RPC spans and metrics around every call (the
    /// per-endpoint series on the admin API's `/metrics` are there either way).
    pub fn start_with_telemetry(
        config: GatewayConfig,
        listener: TcpListener,
        admin: Option<TcpListener>,
        telemetry: GatewayTelemetry,
    ) -> Result<Self, GatewayError> {
        Self::start_with_sources_and_telemetry(config, listener, admin, Vec::new(), telemetry)
    }

    /// [`start_with_sources`](Self::start_with_sources) and
    /// [`start_with_telemetry`](Self::start_with_telemetry) at once.
    pub fn start_with_sources_and_telemetry(
        config: GatewayConfig,
        listener: TcpListener,
        admin: Option<TcpListener>,
        sources: Vec<(String, switchyard_discovery::Source)>,
        telemetry: GatewayTelemetry,
    ) -> Result<Self, GatewayError> {
        let fed: Vec<&str> = sources.iter().map(|(pool, _)| pool.as_str()).collect();
        config.validate_fed(&fed)?;
        if let Some((pool, _)) =
            sources.iter().find(|(pool, _)| !config.pools.iter().any(|p| &p.name == pool))
        {
            return Err(crate::gateway::ConfigError {
                file: None,
                line: None,
                field: None,
                message: format!(
                    "a discovery source is given for pool {pool:?}, which the config does not have"
                ),
            }
            .into());
        }
        let threads =
            config.threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, NonZeroUsize::get);
        let rpc = RpcLayer::server()
            .with_metrics(telemetry.rpc_metrics.then_some(&telemetry.registry))
            .with_tracing(telemetry.tracing);
        // With RPC metrics, each pool's balancer also reports every request's end, per endpoint.
        let observer = telemetry.rpc_metrics.then(|| {
            Arc::new(EndpointObserver::new(telemetry.registry.clone()))
                as Arc<dyn switchyard_balance::Observer>
        });
        let mut sources = sources;
        let pools: Arc<[Pool]> = config
            .pools
            .iter()
            .map(|p| {
                let (mine, rest) = sources.drain(..).partition(|(pool, _)| pool == &p.name);
                sources = rest;
                let mine = mine.into_iter().map(|(_, source)| source).collect();
                Pool::start(p, threads, rpc.is_tracing(), observer.clone(), mine)
            })
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let metrics = telemetry.registry;
        let refusals = Arc::new(Refusals::default());
        metrics.add_source(refusals.clone());
        for pool in pools.iter() {
            metrics.add_source(Arc::new(BoardMetrics::new(
                pool.name(),
                pool.board().clone(),
                Some(pool.policy().clone()),
            )));
            for source in pool.layer_metrics() {
                metrics.add_source(source.clone());
            }
        }
        let local_addr = listener.local_addr()?;
        let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        if let Some(addr) = admin_addr {
            admin_auth::check_exposure(addr, config.admin_token.as_ref())
                .map_err(GatewayError::AdminExposed)?;
        }
        let listener_tls = config.tls.as_ref().map(ListenerTls::new).transpose()?;
        let (stop, stopped) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));

        let proxy = Proxy::new(pools.clone(), Router::new(&config), config.keys_config(), rpc);
        let mut handoff = Vec::with_capacity(threads);
        let mut serving = Vec::with_capacity(threads);
        let mut runtimes: Vec<tokio::runtime::Handle> =
            tokio::runtime::Handle::try_current().into_iter().collect();
        let gate = Arc::new(DrainGate::new(threads));
        for index in 0..threads {
            let (connections, incoming) = mpsc::channel(HANDOFF_QUEUE);
            let open = Arc::new(AtomicUsize::new(0));
            let (done, finished) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtimes.push(runtime.handle().clone());
            let (stopped, drain, proxy, count, draining) =
                (stopped.clone(), config.drain_timeout, proxy.for_thread(), open.clone(), draining.clone());
            let (calls, gate) = (Arc::new(CallsInFlight::default()), gate.clone());
            let (limits, refusals) = (config.limits, refusals.clone());
            let acceptor = listener_tls.as_ref().map(ListenerTls::acceptors);
            std::thread::Builder::new().name(format!("gateway-{index}")).spawn(move || {
                upstream::set_thread_index(index);
                let thread_calls = calls.clone();
                let drain = Drain { timeout: drain, calls, gate };
                let proxy =
                    move || Draining::new(proxy.for_connection(), thread_calls.clone(), draining.clone());
                // Plain connections are served over the bare TcpStream; TLS ones handshake first,
                // on their own task (the connection's future), within `tls::HANDSHAKE_TIMEOUT`.
                match acceptor {
                    None => runtime.block_on(serve_thread(incoming, stopped, drain, count, move |io| {
                        ServeConnection::new(io, proxy(), &limits, refusals.clone())
                    })),
                    Some(acceptor) => {
                        runtime.block_on(serve_thread(incoming, stopped, drain, count, move |io| {
                            ServeConnection::after(
                                tls::handshake(acceptor.clone(), io),
                                proxy(),
                                &limits,
                                refusals.clone(),
                            )
                        }))
                    }
                }
                let _ = done.send(());
            })?;
            handoff.push(ServingThread { connections, open });
            serving.push(finished);
        }
        metrics.add_source(Arc::new(ProcessMetrics::new(runtimes, &metrics)));
        let acceptor = tokio::spawn(accept(
            listener,
            stopped.clone(),
            handoff,
            ConnectionLimit { max: config.limits.max_connections, refusals },
        ));
        if let Some(tls) = listener_tls {
            tokio::spawn(tls.reload_until(stopped.clone()));
        }
        let tls = config.tls.is_some();
        tracing::info!(pools = pools.len(), threads, tls, "gateway serving on {local_addr}");

        // The admin API answers through the drain (it shows the draining state) and stops after.
        let (admin_stop, admin_stopped) = watch::channel(false);
        let admin = admin.zip(admin_addr).map(|(listener, addr)| {
            let access = AdminAccess::new(addr, config.admin_token.clone());
            let (pools, metrics) = (pools.clone(), metrics.clone());
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1.timer(TokioTimer::new());
            tokio::spawn(serve(listener, admin_stopped, ADMIN_DRAIN, "admin", move |io| {
                let (pools, metrics, draining) = (pools.clone(), metrics.clone(), stopped.clone());
                let access = access.clone();
                http1.serve_connection(
                    TokioIo::new(io),
                    hyper::service::service_fn(move |req| {
                        let (pools, metrics, draining) = (pools.clone(), metrics.clone(), *draining.borrow());
                        let refused = access.refuse(&req);
                        async move {
                            Ok::<_, std::convert::Infallible>(match refused {
                                Some(refused) => refused,
                                None => admin::handle(pools, metrics, draining, req).await,
                            })
                        }
                    }),
                )
            }))
        });
        if let Some(addr) = admin_addr {
            tracing::info!("admin serving on {addr}");
        }
        Ok(Self {
            local_addr,
            admin_addr,
            pools,
            metrics,
            threads,
            stop,
            draining,
            admin_stop,
            acceptor,
            serving,
            admin,
        })
    }

    /// The address the gRPC proxy serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the admin API serves on, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gateway's metrics, as the admin API's `GET /metrics` renders them.
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.metrics
    }

    /// How many threads serve the proxy.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The pools, in config order: each one's name, load board and policy.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name() == name)
    }

    /// Stops accepting connections, refuses new calls on the open ones with `UNAVAILABLE` (safe
    /// to retry elsewhere), lets in-flight requests (streams included) finish, at most the
    /// config's drain timeout, then closes the connections (HTTP/2 GOAWAY) and returns. The admin
    /// API answers until the end, showing `"state": "draining"`. See `drain` for why calls are
    /// refused before the GOAWAY rather than after it.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        self.draining.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let acceptor = self.acceptor.await;
        // Wait for every thread (and the admin API) before reporting the first failure.
        let mut failed = None;
        for (index, finished) in self.serving.into_iter().enumerate() {
            if finished.await.is_err() {
                failed.get_or_insert(GatewayError::Thread(index));
            }
        }
        let _ = self.admin_stop.send(true);
        let admin = match self.admin {
            Some(admin) => admin.await,
            None => Ok(()),
        };
        if let Some(error) = failed {
            return Err(error);
        }
        acceptor?;
        admin?;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// The most client connections open at once, and where the refused ones are counted.
struct ConnectionLimit {
    max: usize,
    refusals: Arc<Refusals>,
}

/// Accepts connections until `stop` and hands each to the serving thread with the fewest open;
/// closes at once those past `limit` (the serving threads' open connections, summed).
async fn accept(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    mut threads: Vec<ServingThread>,
    limit: ConnectionLimit,
) {
    loop {
        let stream = tokio::select! {
            // A dropped `Gateway` stops too.
            () = async { drop(stop.wait_for(|stop| *stop).await) } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!("gateway: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let open: usize = threads.iter().map(|t| t.open.load(Ordering::Relaxed)).sum();
        if open >= limit.max {
            tracing::debug!(open, "gateway: refusing a connection past max_connections");
            limit.refusals.count(Refusal::ConnectionLimit);
            // Closed now, before any byte is read.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        // Leave this runtime's reactor; the serving thread registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("gateway: cannot hand a connection over: {e}");
                continue;
            }
        };
        if !hand_over(&mut threads, stream).await {
            tracing::error!("gateway: every serving thread has stopped; no longer accepting");
            break;
        }
    }
}

/// Hands `stream` to the serving thread with the fewest open connections whose queue has room
/// (or waits for room at the least loaded one when every queue is full). Threads that have
/// stopped (one panicked) are dropped from `threads`; false once none is left.
async fn hand_over(threads: &mut Vec<ServingThread>, mut stream: std::net::TcpStream) -> bool {
    loop {
        threads.sort_by_key(|t| t.open.load(Ordering::Relaxed));
        let mut stopped = None;
        for (i, thread) in threads.iter().enumerate() {
            match thread.connections.try_send(stream) {
                Ok(()) => {
                    thread.open.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(mpsc::error::TrySendError::Full(back)) => stream = back,
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    stream = back;
                    stopped = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = stopped {
            tracing::error!("gateway: a serving thread has stopped");
            threads.remove(i);
            continue;
        }
        let Some(least) = threads.first() else { return false };
        match least.connections.send(stream).await {
            Ok(()) => {
                least.open.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(mpsc::error::SendError(back)) => stream = back,
        }
    }
}

/// How a serving thread drains.
struct Drain {
    /// The longest the drain may take.
    timeout: Duration,
    /// The thread's calls in flight.
    calls: Arc<CallsInFlight>,
    /// Where the thread reports that its calls have ended, and learns that all threads' have.
    gate: Arc<DrainGate>,
}

/// A serving thread: serves the connections it is handed until `stop`, then drains them (see
/// `drain`: new calls refused, calls in flight finished, then GOAWAY), at most `drain.timeout`,
/// and closes the rest. `open` counts its open connections, for the acceptor.
async fn serve_thread<F, S, I>(
    mut incoming: mpsc::Receiver<std::net::TcpStream>,
    stop: watch::Receiver<bool>,
    drain: Drain,
    open: Arc<AtomicUsize>,
    serve_connection: F,
) where
    F: Fn(TcpStream) -> ServeConnection<S, I>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    ServeConnection<S, I>: Future<Output = Result<(), ConnectionError>> + Unpin + Send + 'static,
{
    let mut connections = JoinSet::new();
    let serve = |connections: &mut JoinSet<()>, stream: TcpStream| {
        let (connection, gate, stop) = (serve_connection(stream), drain.gate.clone(), stop.clone());
        connections.spawn(async move {
            if let Err(e) = drain::serve_connection(connection, gate, stop).await {
                tracing::debug!("gateway connection ended: {e}");
            }
        });
    };
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            () = async { drop(stopped.wait_for(|stop| *stop).await) } => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                open.fetch_sub(1, Ordering::Relaxed);
            }
            received = incoming.recv() => {
                let Some(stream) = received else { break };
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve(&mut connections, stream),
                    Err(e) => {
                        open.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!("gateway: cannot serve a connection: {e}");
                    }
                }
            }
        }
    }
    // Connections accepted but not yet served get served, refusing their calls, and closed
    // rather than dropped.
    incoming.close();
    while let Ok(stream) = incoming.try_recv() {
        if let Ok(stream) = TcpStream::from_std(stream) {
            serve(&mut connections, stream);
        }
    }
    if !connections.is_empty() {
        tracing::info!(connections = connections.len(), "gateway draining");
    }
    let drained = async {
        let report = async {
            drain.calls.idle().await;
            drain.gate.thread_drained();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            // First, so that a thread without connections still reports.
            biased;
            () = report => {}
            () = async { while connections.join_next().await.is_some() {} } => {}
        }
    };
    if tokio::time::timeout(drain.timeout, drained).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "gateway: drain timeout, closing connections with requests in flight"
        );
    }
    connections.shutdown().await;
}

/// Accepts connections until `stop`, serving each with `serve_connection` on this runtime; then
/// drains them (at most `drain`) and closes the rest.
async fn serve<F, C>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    what: &'static str,
    serve_connection: F,
) where
    F: Fn(TcpStream) -> C,
    C: GracefulConnection + Send + 'static,
    C::Error: std::fmt::Display,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A dropped `Gateway` stops too.
            () = async { drop(stop.wait_for(|stop| *stop).await) } => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    serve_watched(&graceful, &mut connections, serve_connection(stream), what);
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drain_connections(graceful, connections, drain, what).await;
}

/// Serves `connection` as a task of `connections`, watched by `graceful` for the drain.
fn serve_watched<C>(
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
    connection: C,
    what: &'static str,
) where
    C: GracefulConnection + Send + 'static,
    C::Error: std::fmt::Display,
{
    let connection = graceful.watch(connection);
    connections.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("{what} connection ended: {e}");
        }
    });
}

/// Tells the connections to finish (HTTP/2 GOAWAY), waits for their requests at most `drain`,
/// then closes what remains.
async fn drain_connections(
    graceful: GracefulShutdown,
    mut connections: JoinSet<()>,
    drain: Duration,
    what: &'static str,
) {
    if !connections.is_empty() {
        tracing::info!(connections = connections.len(), "{what} draining");
    }
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "{what}: drain timeout, closing connections with requests in flight"
        );
    }
    connections.shutdown().await;
}
