//! The running gateway: its listeners, their connections, and the drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::admin;
use super::config::{ConfigError, GatewayConfig};
use super::pool::Pool;
use super::proxy::Proxy;
use super::route::Router;

/// Streams one client connection may have open at once. hyper's default (200) would queue the
/// requests of a client that multiplexes everything over one connection, as tonic's `Channel`
/// does, behind the gateway rather than at the replicas.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// How long the admin listener waits for its own requests on shutdown.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// Why a gateway could not start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    stop: watch::Sender<bool>,
    proxy: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Validates `config`, starts a balancer per pool (connecting lazily to the endpoints) and
    /// serves gRPC (HTTP/2 without TLS, prior knowledge) on `listener` and the admin API on
    /// `admin`, if given. Logs `gateway serving on ADDR` and `admin serving on ADDR`. Must be
    /// called within a Tokio runtime.
    pub fn start(
        config: GatewayConfig,
        listener: TcpListener,
        admin: Option<TcpListener>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let pools: Arc<[Pool]> = config.pools.iter().map(Pool::start).collect::<Result<Vec<_>, _>>()?.into();
        let local_addr = listener.local_addr()?;
        let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        let (stop, stopped) = watch::channel(false);

        let proxy = Proxy::new(pools.clone(), Router::new(&config));
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new()).max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        let proxy =
            tokio::spawn(serve(listener, stopped.clone(), config.drain_timeout, "gateway", move |io| {
                http2.serve_connection(io, proxy.clone())
            }));
        tracing::info!(pools = pools.len(), "gateway serving on {local_addr}");

        let admin = admin.map(|listener| {
            let pools = pools.clone();
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1.timer(TokioTimer::new());
            tokio::spawn(serve(listener, stopped, ADMIN_DRAIN, "admin", move |io| {
                let pools = pools.clone();
                http1.serve_connection(
                    io,
                    hyper::service::service_fn(move |req| {
                        let pools = pools.clone();
                        async move { Ok::<_, std::convert::Infallible>(admin::handle(pools, req).await) }
                    }),
                )
            }))
        });
        if let Some(addr) = admin_addr {
            tracing::info!("admin serving on {addr}");
        }
        Ok(Self { local_addr, admin_addr, pools, stop, proxy, admin })
    }

    /// The address the gRPC proxy serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the admin API serves on, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The pools, in config order: each one's name, load board and policy.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name() == name)
    }

    /// Stops accepting connections, lets in-flight requests (streams included) finish, at most
    /// the config's drain timeout, then closes what remains and returns.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        let _ = self.stop.send(true);
        let proxy = self.proxy.await;
        if let Some(admin) = self.admin {
            admin.await?;
        }
        proxy?;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Accepts connections until `stop`, serving each with `serve_connection`; then drains them (at
/// most `drain`) and closes the rest.
async fn serve<F, C>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    what: &'static str,
    serve_connection: F,
) where
    F: Fn(TokioIo<TcpStream>) -> C,
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
                    let connection = graceful.watch(serve_connection(TokioIo::new(stream)));
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!("{what} connection ended: {e}");
                        }
                    });
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
