//! A tonic client with Switchyard's telemetry layer: every call gets a span after the
//! OpenTelemetry RPC conventions, its W3C trace context travels in the gRPC metadata (so the
//! gateway's and the replica's spans join the same trace), and RPC metrics
//! (`rpc_client_duration_seconds`, ...) are recorded. Spans go where the standard variables say.
//!
//! ```sh
//! # a gateway (or a worker) to call, exporting its own spans to the same collector
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 switchyard worker --listen 127.0.0.1:9001 &
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 switchyard gateway --backend 127.0.0.1:9001 &
//! # five calls through it, traced end to end
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 cargo run --example traced_client -- http://127.0.0.1:8080
//! ```
//!
//! With no `OTEL_EXPORTER_OTLP_ENDPOINT` nothing is exported; the client still prints its own
//! metrics, in the Prometheus text format, at the end.

use std::process::ExitCode;

use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::request::text_request;
use switchyard_telemetry::{RpcLayer, TelemetryConfig};
use tonic::transport::Channel;
use tower::ServiceBuilder;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Calls sent.
const CALLS: usize = 5;

#[tokio::main]
async fn main() -> ExitCode {
    let target = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let telemetry = switchyard_telemetry::init("switchyard-traced-client", &TelemetryConfig::from_env());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
        )
        .with(telemetry.tracing_layer())
        .init();
    for warning in telemetry.warnings() {
        tracing::warn!("telemetry: {warning}");
    }

    let uri: http::Uri = match target.parse() {
        Ok(uri) => uri,
        Err(e) => {
            eprintln!("traced_client: {target:?} is not a URI: {e}");
            return ExitCode::FAILURE;
        }
    };
    let channel = match Channel::builder(uri.clone()).connect().await {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("traced_client: cannot connect to {target}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The layer: spans when an exporter is configured, metrics into the telemetry's registry.
    let mut layer =
        RpcLayer::client().with_tracing(telemetry.is_tracing()).with_metrics(Some(telemetry.registry()));
    if let Some(authority) = uri.authority() {
        layer = layer.with_server_address(authority.clone());
    }
    // `for_channel`: the layer counts the request's bytes in a body of its own, boxed back into
    // tonic's body for the `Channel`.
    let mut client =
        GrpcInferenceServiceClient::new(ServiceBuilder::new().layer(layer.for_channel()).service(channel));

    let mut failed = 0;
    for i in 0..CALLS {
        match client.model_infer(text_request("sim-llm", &format!("Tell me story number {i}."), 16)).await {
            Ok(_) => println!("call {i}: ok"),
            Err(status) => {
                failed += 1;
                println!("call {i}: {:?} {}", status.code(), status.message());
            }
        }
    }
    println!("\n{}", telemetry.registry().render());
    // Exports the spans still batched (blocking: off the runtime's threads).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    if failed == CALLS { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
