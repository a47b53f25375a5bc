//! `switchyard demo`: one simulated replica and the load generator in one process, replaying the
//! bundled Azure conversation trace. The quickest way to see the sim and the tools work; the
//! example cluster with the gateway builds on the same parts.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::loadgen::{self, LoadgenArgs, LoadgenError, LoadgenReport};
use crate::worker::{self, WorkerArgs, WorkerError};

/// Flags of `switchyard demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds of load to send.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Multiplies the trace's arrival times: 0.35 replays it about three times faster, some 10 requests/s, about half of what one simulated H100 sustains on this trace.
    #[arg(long, default_value_t = 0.35)]
    pub time_scale: f64,
    /// Relative speed of the simulated GPU (1 = H100).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Use unary `ModelInfer` calls instead of streaming ones.
    #[arg(long)]
    pub unary: bool,
    /// Write the load generator's summary to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self { duration: 60.0, time_scale: 0.35, speed: 1.0, unary: false, json: None }
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The worker failed.
    #[error("worker: {0}")]
    Worker(#[from] WorkerError),
    /// The load generator failed.
    #[error("loadgen: {0}")]
    Loadgen(#[from] LoadgenError),
    /// No loopback port could be bound.
    #[error("cannot bind a loopback port: {0}")]
    Bind(std::io::Error),
}

/// Starts a worker on a free loopback port, drives it with the load generator, stops it, and
/// returns the load generator's summary.
pub async fn run(args: &DemoArgs) -> Result<LoadgenReport, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(DemoError::Bind)?;
    let addr = listener.local_addr().map_err(DemoError::Bind)?;
    let worker_args = WorkerArgs {
        listen: addr,
        speed: args.speed,
        drain_timeout: Duration::from_secs(5),
        ..WorkerArgs::default()
    };
    worker_args.engine_config().validate().map_err(WorkerError::from)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(worker::serve(worker_args, listener, async move {
        let _ = stop_rx.await;
    }));
    eprintln!("demo: worker (simulated Llama 3.1 8B on one H100 × speed {}) on {addr}", args.speed);
    let loadgen_args = LoadgenArgs {
        target: format!("http://{addr}"),
        time_scale: args.time_scale,
        duration: Some(args.duration),
        stream: !args.unary,
        json: args.json.clone(),
        ..LoadgenArgs::default()
    };
    let report = loadgen::run(&loadgen_args).await;
    let _ = stop_tx.send(());
    match server.await {
        Ok(result) => result?,
        Err(e) => tracing::warn!("worker task ended abnormally: {e}"),
    }
    Ok(report?)
}
