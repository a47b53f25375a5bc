//! Telemetry for gRPC model serving: OpenTelemetry spans and RPC metrics for every call, on
//! servers, clients and the gateway alike, and the balancer's per-endpoint state as Prometheus
//! series.
//!
//! - [`RpcLayer`]: a tower layer giving each RPC a span after the OpenTelemetry RPC conventions,
//!   with the W3C trace context carried through gRPC metadata, and RED metrics
//!   (`rpc_server_duration_seconds`, request and response bytes, ...). Off unless asked: a
//!   layer with neither costs a branch.
//! - [`MetricsRegistry`]: a `metrics` recorder rendered in the Prometheus text format (what a
//!   `/metrics` endpoint serves), with [`ScrapeSource`]s read at each scrape. Its duration and
//!   size histograms count per thread shard, so that recording shares no cache line between
//!   cores.
//! - [`BoardMetrics`]: a pool's endpoints as the balancer's [`LoadBoard`](switchyard_balance::LoadBoard)
//!   tracks them (picks, outcomes, in flight, latency EWMA, reported queue and KV-cache use,
//!   ejections) and its policy, read at scrape time: no request pays for them and nothing is
//!   counted twice.
//! - [`EndpointObserver`]: the balancer's [`Observer`](switchyard_balance::Observer), told once
//!   per request: per-endpoint duration and time-to-first-byte histograms, with no body wrapped a
//!   second time.
//! - [`LimitMetrics`] and [`ShedMetrics`]: a pool's overload protection (the limit in force, the
//!   shed queue's waiting requests and refusals by reason and class), read from the layers' own
//!   figures at scrape time.
//! - [`init`]: the exporters the standard `OTEL_*` variables ask for: spans and metrics over
//!   OTLP/gRPC, nothing when none is set. Over OTLP the registry's counters and gauges are
//!   observable instruments reporting the series that exist at each collection, so a retired
//!   series (an endpoint gone from its pool) leaves the export as it leaves `/metrics`;
//!   histograms are kept by the SDK under cumulative temporality (see
//!   `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
//! - [`names`]: every metric name, after the OpenTelemetry RPC conventions mapped to Prometheus.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use switchyard_telemetry::{MetricsRegistry, RpcLayer, RpcRequestBody};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = MetricsRegistry::new();
//! let service = ServiceBuilder::new()
//!     .layer(RpcLayer::server().with_metrics(Some(&registry)))
//!     .service_fn(|_req: http::Request<RpcRequestBody<String>>| async {
//!         let mut response = http::Response::new(String::new());
//!         response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
//!         Ok::<_, Infallible>(response)
//!     });
//! let request = http::Request::builder().uri("/inference.GRPCInferenceService/ModelInfer").body(String::new()).unwrap();
//! drop(service.oneshot(request).await.unwrap()); // the call ends with its response
//! let text = registry.render();
//! assert!(text.contains(r#"rpc_server_duration_seconds_count{rpc_system="grpc",rpc_service="inference.GRPCInferenceService",rpc_method="ModelInfer",rpc_grpc_status_code="0"} 1"#));
//! assert!(text.contains(r#"rpc_server_request_size_bytes_count{rpc_system="grpc",rpc_service="inference.GRPCInferenceService",rpc_method="ModelInfer"} 1"#));
//! # }
//! ```
#![warn(missing_docs)]

mod board;
mod histogram;
mod init;
pub mod names;
mod observer;
mod otlp_metrics;
mod overload;
mod registry;
mod retry;
pub mod rpc;
mod scraped;

pub use board::BoardMetrics;
pub use init::{DEFAULT_METRICS_INTERVAL, SamplerConfig, Telemetry, TelemetryConfig, init};
pub use observer::EndpointObserver;
pub use overload::{LimitMetrics, ShedMetrics};
pub use registry::{CONTENT_TYPE, DURATION_BUCKETS, LayerState, MetricsRegistry, SIZE_BUCKETS, ScrapeSource};
pub use retry::RetryMetrics;
pub use rpc::{ChannelRpcLayer, RpcBody, RpcLayer, RpcRequestBody, Side};
