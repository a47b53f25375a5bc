//! The bench's load: a closed loop of clients, each sending its next call as soon as the last
//! one answered, over a few shared HTTP/2 connections, the same for every target.
//!
//! The call is `ServerLive` (unary, an empty message each way): the worker answers it without
//! touching its simulated engine, so what the clients measure is the network path and the proxy,
//! not the model server.

use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::proto::inference::ServerLiveRequest;
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

/// What one closed-loop run measured in its window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    /// Latencies (ms) of the calls sent and answered inside the window.
    pub(crate) latencies_ms: Vec<f64>,
    /// Calls inside the window that failed.
    pub(crate) errors: u64,
}

/// Connects `connections` HTTP/2 channels, connection `j` to `targets[j % targets.len()]`.
pub(crate) async fn connect(targets: &[String], connections: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(connections);
    for j in 0..connections {
        let target = &targets[j % targets.len()];
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| format!("bad target {target}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2));
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {target}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs `clients` closed-loop clients over `channels` (client `i` on channel `i % len`) from
/// now until `end`, and keeps the calls that started at or after `start` and ended by `end`.
pub(crate) async fn closed_loop(
    channels: &[Channel],
    clients: usize,
    start: Instant,
    end: Instant,
) -> Measured {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone());
            tokio::spawn(client_loop(client, start, end))
        })
        .collect();
    let mut total = Measured::default();
    for task in tasks {
        if let Ok(m) = task.await {
            total.latencies_ms.extend(m.latencies_ms);
            total.errors += m.errors;
        }
    }
    total
}

async fn client_loop(
    mut client: GrpcInferenceServiceClient<Channel>,
    start: Instant,
    end: Instant,
) -> Measured {
    let mut measured = Measured::default();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let mut request = tonic::Request::new(ServerLiveRequest {});
        request.set_timeout(Duration::from_secs(10));
        let result = client.server_live(request).await;
        let done = Instant::now();
        if sent < start || done > end {
            continue;
        }
        match result {
            Ok(_) => measured.latencies_ms.push(done.duration_since(sent).as_secs_f64() * 1e3),
            Err(_) => {
                measured.errors += 1;
                // A target that fails fast must not spin a core the proxies need.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    measured
}
