//! A tonic model server protected from overload by adding layers to its `Server::builder()`.
//!
//! The server is the repo's KServe v2 worker service over a simulated LLM engine. Four layers, outermost first, make
//! it refuse what it cannot serve in time instead of queueing it without end:
//!
//! - `LoadReportLayer` (the worker's): an ORCA load report in every response's trailers, refusals
//!   included, so that a Switchyard balancer in front sees the engine's queue, running requests
//!   and KV-cache use;
//! - `StatusLayer` (switchyard-core): a refusal reaches the client as its gRPC status,
//!   `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`, or `DEADLINE_EXCEEDED`;
//! - `ShedLayer` (switchyard-shed): a bounded queue by priority (`x-priority`) and deadline
//!   (`grpc-timeout`), CoDel-style;
//! - `LimitLayer` (switchyard-limit): an adaptive concurrency limit (Vegas here), each request
//!   counted until its response's trailers.
//!
//! ```sh
//! cargo run --example protected_server -- 127.0.0.1:9001
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use switchyard::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use switchyard::sim::{EngineConfig, EngineHandle};
use switchyard::worker::{InferenceService, LoadReportLayer};
use switchyard_core::StatusLayer;
use switchyard_limit::{LimitLayer, Vegas};
use switchyard_shed::{ShedConfig, ShedLayer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// The protection of a server: its queue and its limit (clones share their state, so a caller
/// keeps one to read the figures).
#[derive(Debug, Clone)]
pub(crate) struct Protection {
    /// The admission queue.
    pub(crate) shed: ShedLayer,
    /// The concurrency limit.
    pub(crate) limit: LimitLayer,
}

impl Default for Protection {
    fn default() -> Self {
        Self { shed: ShedLayer::new(ShedConfig::default()), limit: LimitLayer::new(Vegas::default()) }
    }
}

/// Serves model `model` on `listener` with an engine set up by `engine`, protected by
/// `protection`, until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    model: &str,
    engine: EngineConfig,
    protection: Protection,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let engine = EngineHandle::spawn(engine)?;
    let reporter = engine.clone();
    let inference = InferenceService::new(model, engine, Arc::new(AtomicBool::new(true)));
    tonic::transport::Server::builder()
        .layer(LoadReportLayer::new(move || reporter.reported_load()))
        .layer(StatusLayer)
        .layer(protection.shed)
        .layer(protection.limit)
        .add_service(GrpcInferenceServiceServer::new(inference))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr: SocketAddr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into()).parse()?;
    let listener = TcpListener::bind(addr).await?;
    println!("protected model server on {addr}: shed queue, Vegas limit, ORCA load reports");
    serve(listener, "sim-llm", EngineConfig::default(), Protection::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
