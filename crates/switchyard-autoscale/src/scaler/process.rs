//! The local process scaler: replicas are `switchyard worker` processes on this machine.
//!
//! - **Scale up**: a worker is started on a free loopback port with `--cold-start` (its weight
//!   loading: the worker stays NOT_SERVING that long); a task watches its
//!   `grpc.health.v1.Health/Watch` and inserts it into the discovery [`Publisher`] only once it
//!   says SERVING. Until then it counts as current, not ready.
//! - **Scale down**: a replica still starting is stopped at once (it never took a request).
//!   A ready one drains: it is removed from discovery first (the balancer sends it nothing new),
//!   its requests in flight finish (read off the [`LoadBoard`], at most
//!   [`ProcessConfig::drain_timeout`]), then it gets SIGTERM (the worker drains what is left and
//!   exits), and SIGKILL if it has not exited after [`ProcessConfig::kill_after`]. The newest
//!   replicas go first.
//!
//! The free port is found by binding port 0 and releasing it, so another process could take it
//! in between; the worker then fails to bind, never becomes SERVING, and is stopped after
//! [`ProcessConfig::ready_timeout`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use switchyard_balance::LoadBoard;
use switchyard_core::{Endpoint, EndpointId};
use switchyard_discovery::Publisher;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::{ScaleError, Scaler};
use crate::PoolSize;

/// Settings of a [`ProcessScaler`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    /// The `switchyard` binary.
    pub binary: PathBuf,
    /// Flags given to every `switchyard worker` after `--listen` and `--cold-start`.
    pub worker_args: Vec<String>,
    /// The cold start each worker simulates (`--cold-start`).
    pub cold_start: Duration,
    /// The address workers listen on (loopback).
    pub host: IpAddr,
    /// Endpoint ids are this prefix and a sequence number.
    pub name_prefix: String,
    /// A worker not SERVING this long after it was started is stopped.
    pub ready_timeout: Duration,
    /// How long a removed replica's requests in flight may take before SIGTERM.
    pub drain_timeout: Duration,
    /// SIGKILL if a worker has not exited this long after SIGTERM.
    pub kill_after: Duration,
    /// Whether each worker serves its Prometheus `GET /metrics` (`--metrics-listen` on a free
    /// loopback port of its own); [`ProcessScaler::replica_metrics`] lists where.
    pub metrics: bool,
}

impl ProcessConfig {
    /// Workers from `binary`, with defaults: no cold start, loopback, ids `worker-N`, 60 s to
    /// become ready, 30 s to drain, SIGKILL 10 s after SIGTERM.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            worker_args: Vec::new(),
            cold_start: Duration::ZERO,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            name_prefix: "worker-".into(),
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            kill_after: Duration::from_secs(10),
            metrics: false,
        }
    }
}

#[derive(Debug)]
struct Replica {
    id: EndpointId,
    ready: bool,
    /// Where its worker serves `GET /metrics`, with [`ProcessConfig::metrics`].
    metrics: Option<SocketAddr>,
    /// The task that owns the process: starts it, watches its health, stops it.
    task: JoinHandle<()>,
    /// Tells the task to drain and stop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Scales a pool of local `switchyard worker` processes (see the [module docs](self)).
#[derive(Debug)]
pub struct ProcessScaler {
    config: Arc<ProcessConfig>,
    publisher: Publisher,
    board: LoadBoard,
    replicas: Arc<Mutex<Vec<Replica>>>,
    draining: Arc<Mutex<Vec<JoinHandle<()>>>>,
    next: u64,
    desired: u32,
}

impl ProcessScaler {
    /// Workers added to and removed from discovery through `publisher`; their load read off
    /// `board` (the board of the balancer the publisher feeds) while they drain.
    pub fn new(config: ProcessConfig, publisher: Publisher, board: LoadBoard) -> Self {
        Self {
            config: Arc::new(config),
            publisher,
            board,
            replicas: Arc::default(),
            draining: Arc::default(),
            next: 0,
            desired: 0,
        }
    }

    /// The ids of the replicas, ready or starting, oldest first.
    pub fn replica_ids(&self) -> Vec<EndpointId> {
        lock(&self.replicas).iter().map(|r| r.id.clone()).collect()
    }

    /// Where each replica's worker serves its Prometheus `GET /metrics` (with
    /// [`ProcessConfig::metrics`]), for the replicas ready or starting, oldest first. A replica
    /// leaves this list when it is told to drain: a reader that wants its last counts reads them
    /// before the next scale-down or keeps its last reading.
    pub fn replica_metrics(&self) -> Vec<(EndpointId, SocketAddr)> {
        lock(&self.replicas).iter().filter_map(|r| Some((r.id.clone(), r.metrics?))).collect()
    }

    /// Scales to zero and waits until every worker has drained and exited.
    pub async fn shutdown(mut self) {
        let _ = self.set_desired(0).await;
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.draining));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn start_one(&mut self) {
        let id = EndpointId::new(format!("{}{}", self.config.name_prefix, self.next));
        self.next += 1;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let metrics = match self.config.metrics.then(|| free_port(self.config.host)) {
            Some(Ok(addr)) => Some(addr),
            Some(Err(e)) => {
                tracing::warn!(replica = %id, "no free port for the worker's metrics: {e}");
                None
            }
            None => None,
        };
        let task = tokio::spawn(run_replica(
            id.clone(),
            metrics,
            self.config.clone(),
            self.publisher.clone(),
            self.board.clone(),
            self.replicas.clone(),
            stop_rx,
        ));
        lock(&self.replicas).push(Replica { id, ready: false, metrics, task, stop: Some(stop_tx) });
    }

    fn stop_one(&mut self) {
        let mut replicas = lock(&self.replicas);
        // A replica still starting first (it has no traffic), else the newest ready one.
        let index = replicas.iter().rposition(|r| !r.ready).or_else(|| replicas.len().checked_sub(1));
        if let Some(mut replica) = index.map(|i| replicas.remove(i)) {
            if let Some(stop) = replica.stop.take() {
                let _ = stop.send(());
            }
            lock(&self.draining).push(replica.task);
        }
    }
}

impl Scaler for ProcessScaler {
    async fn set_desired(&mut self, replicas: u32) -> Result<(), ScaleError> {
        self.desired = replicas;
        lock(&self.draining).retain(|t| !t.is_finished());
        let mut current = lock(&self.replicas).len() as u32;
        while current < replicas {
            self.start_one();
            current += 1;
        }
        while current > replicas {
            self.stop_one();
            current -= 1;
        }
        Ok(())
    }

    fn size(&self) -> PoolSize {
        let replicas = lock(&self.replicas);
        PoolSize {
            desired: self.desired,
            current: replicas.len() as u32,
            ready: replicas.iter().filter(|r| r.ready).count() as u32,
        }
    }
}

impl Drop for ProcessScaler {
    fn drop(&mut self) {
        // The tasks own the children (killed on drop); end them.
        for replica in lock(&self.replicas).iter() {
            replica.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn free_port(host: IpAddr) -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(SocketAddr::new(host, 0))?.local_addr()
}

/// One replica's life: start, wait for SERVING, publish; on stop, drain and end the process.
async fn run_replica(
    id: EndpointId,
    metrics: Option<SocketAddr>,
    config: Arc<ProcessConfig>,
    publisher: Publisher,
    board: LoadBoard,
    replicas: Arc<Mutex<Vec<Replica>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let addr = match free_port(config.host) {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(replica = %id, "no free port: {e}");
            return;
        }
    };
    let cold = humantime::format_duration(config.cold_start).to_string();
    let spawned = Command::new(&config.binary)
        .arg("worker")
        .args(["--listen", &addr.to_string(), "--cold-start", &cold])
        .args(metrics.iter().flat_map(|m| ["--metrics-listen".to_string(), m.to_string()]))
        .args(&config.worker_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            tracing::error!(replica = %id, binary = %config.binary.display(), "cannot start a worker: {e}");
            return;
        }
    };
    let started = Instant::now();
    tracing::info!(replica = %id, %addr, cold_start = %cold, "autoscale: worker started");
    let address = format!("http://{addr}");
    let serving = tokio::select! {
        ok = until_serving(&address, config.ready_timeout) => ok,
        _ = &mut stop => {
            tracing::info!(replica = %id, "autoscale: stopped while starting");
            stop_child(&mut child, config.kill_after).await;
            return;
        }
    };
    if !serving {
        tracing::warn!(replica = %id, "autoscale: worker not SERVING within {:?}; stopping it", config.ready_timeout);
        stop_child(&mut child, config.kill_after).await;
        lock(&replicas).retain(|r| r.id != id);
        return;
    }
    if publisher.insert(Endpoint::new(id.clone(), address)).await.is_err() {
        stop_child(&mut child, config.kill_after).await;
        return;
    }
    if let Some(r) = lock(&replicas).iter_mut().find(|r| r.id == id) {
        r.ready = true;
    }
    tracing::info!(replica = %id, after_ms = started.elapsed().as_millis() as u64, "autoscale: replica SERVING, added to discovery");
    let _ = (&mut stop).await;
    // Drain: out of discovery, in-flight requests finish, then SIGTERM.
    let _ = publisher.remove(id.clone()).await;
    let deadline = Instant::now() + config.drain_timeout;
    loop {
        // The removal reaches the board through the balancer's discovery task: until the entry
        // shows it (draining, or gone), the balancer may still pick the replica, so an idle
        // moment before then proves nothing.
        let (removed, in_flight) = match board.get(&id) {
            Some(e) => (e.draining, e.load.in_flight),
            None => (true, 0),
        };
        if (removed && in_flight == 0) || Instant::now() >= deadline {
            tracing::info!(replica = %id, in_flight, "autoscale: drained, stopping the worker");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the board while draining
    }
    stop_child(&mut child, config.kill_after).await;
}

/// Watches `address`'s health until SERVING (true) or `timeout` (false).
async fn until_serving(address: &str, timeout: Duration) -> bool {
    let watch = async {
        loop {
            if let Ok(endpoint) = tonic::transport::Endpoint::from_shared(address.to_string())
                && let Ok(channel) = endpoint.connect_timeout(Duration::from_secs(1)).connect().await
            {
                let mut client = HealthClient::new(channel);
                if let Ok(response) = client.watch(HealthCheckRequest { service: String::new() }).await {
                    let mut statuses = response.into_inner();
                    while let Ok(Some(status)) = statuses.message().await {
                        if status.status == ServingStatus::Serving as i32 {
                            return;
                        }
                    }
                }
            }
            // Not listening yet: try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(timeout, watch).await.is_ok()
}

/// SIGTERM, then SIGKILL after `kill_after`.
async fn stop_child(child: &mut Child, kill_after: Duration) {
    terminate(child);
    if tokio::time::timeout(kill_after, child.wait()).await.is_err() {
        tracing::warn!("autoscale: worker still running {kill_after:?} after SIGTERM: SIGKILL");
        let _ = child.kill().await;
    }
}

#[cfg(unix)]
fn terminate(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process};
    match child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw) {
        Some(pid) => {
            if let Err(e) = kill_process(pid, Signal::TERM) {
                tracing::warn!("cannot send SIGTERM to {pid:?}: {e}");
            }
        }
        None => {
            let _ = child.start_kill();
        }
    }
}

#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.start_kill();
}
