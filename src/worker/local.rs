//! A worker in this process, on an ephemeral loopback port: what the examples start when they
//! are given no replica address, and what a test or a program needs for a replica without a
//! child process.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use switchyard::worker::{LocalWorker, WorkerArgs};
//!
//! let worker = LocalWorker::start(WorkerArgs { speed: 2.0, ..WorkerArgs::default() }).await?;
//! println!("serving on {}", worker.uri());
//! worker.stop().await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{WorkerArgs, WorkerError, serve};

/// How long [`LocalWorker::stop`] waits for the worker to drain.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker serving on `127.0.0.1` at a port the system chose, in a task of this process.
#[derive(Debug)]
pub struct LocalWorker {
    uri: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), WorkerError>>,
}

/// Why a [`LocalWorker`] did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// The worker's server failed.
    #[error("worker {uri} failed: {source}")]
    Failed {
        /// The worker's address.
        uri: String,
        /// What failed.
        source: WorkerError,
    },
    /// The worker's task panicked or was cancelled.
    #[error("worker {uri} did not finish: {message}")]
    Task {
        /// The worker's address.
        uri: String,
        /// The task's error.
        message: String,
    },
    /// It was still draining after [`STOP_TIMEOUT`].
    #[error("worker {uri} did not drain within {STOP_TIMEOUT:?}")]
    Timeout {
        /// The worker's address.
        uri: String,
    },
}

impl LocalWorker {
    /// Binds a loopback port and serves `args`' engine on it (its `listen` is not used).
    pub async fn start(args: WorkerArgs) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let uri = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(args, listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self { uri, stop, task })
    }

    /// Its address, `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Shuts it down (it drains as on SIGTERM) and waits at most [`STOP_TIMEOUT`] for it.
    pub async fn stop(self) -> Result<(), StopError> {
        let _ = self.stop.send(());
        let uri = self.uri;
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(StopError::Failed { uri, source }),
            Ok(Err(e)) => Err(StopError::Task { uri, message: e.to_string() }),
            Err(_) => Err(StopError::Timeout { uri }),
        }
    }
}
