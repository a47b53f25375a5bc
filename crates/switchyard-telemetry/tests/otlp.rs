#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `init` exports spans and metrics over OTLP/gRPC to a collector: here, a receiver speaking the OTLP
//! trace and metrics collector protocol, served by the test on a loopback port.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use switchyard_telemetry::{RpcLayer, TelemetryConfig, init};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

/// The spans received: (service.name, span name, attributes as text).
type Received = Arc<Mutex<Vec<(String, String, Vec<(String, String)>)>>>;

#[derive(Clone, Default)]
struct Receiver {
    received: Received,
    metrics: ReceivedMetrics,
    exports: Exports,
}

/// The exports received, in order: each one's series as (metric name, attributes).
type Exports = Arc<Mutex<Vec<Vec<(String, Vec<(String, String)>)>>>>;

/// The metrics received: (service.name, metric name, attributes, sum or count of its point).
type ReceivedMetrics = Arc<Mutex<Vec<(String, String, Vec<(String, String)>, f64)>>>;

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn pairs(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Vec<(String, String)> {
    attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
        let number = |v: &Option<Number>| match v {
            Some(Number::AsDouble(d)) => *d,
            Some(Number::AsInt(i)) => *i as f64,
            None => f64::NAN,
        };
        let mut received = self.metrics.lock().unwrap();
        let mut export = Vec::new();
        for resource in request.into_inner().resource_metrics {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let points: Vec<(Vec<(String, String)>, f64)> = match &metric.data {
                    Some(Data::Histogram(h)) => {
                        h.data_points.iter().map(|p| (pairs(&p.attributes), p.count as f64)).collect()
                    }
                    Some(Data::Sum(s)) => {
                        s.data_points.iter().map(|p| (pairs(&p.attributes), number(&p.value))).collect()
                    }
                    Some(Data::Gauge(g)) => {
                        g.data_points.iter().map(|p| (pairs(&p.attributes), number(&p.value))).collect()
                    }
                    _ => Vec::new(),
                };
                for (attributes, value) in points {
                    export.push((metric.name.clone(), attributes.clone()));
                    received.push((service.clone(), metric.name.clone(), attributes, value));
                }
            }
        }
        self.exports.lock().unwrap().push(export);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.received.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes =
                        span.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect();
                    received.push((service.clone(), span.name, attributes));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A collector on a loopback port: its endpoint and what it receives.
async fn collector() -> (String, Receiver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), receiver)
}

async fn receiver() -> (String, Received) {
    let (endpoint, receiver) = collector().await;
    (endpoint, receiver.received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_reach_the_collector_over_otlp_with_the_scrape_sources_published() {
    let (endpoint, receiver) = collector().await;
    let config = TelemetryConfig::from_vars([
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint.as_str()),
        // Exported once, at the shutdown.
        ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
    ]);
    let telemetry = init("switchyard-test", &config);
    assert!(telemetry.is_exporting_metrics() && !telemetry.is_tracing(), "{telemetry:?}");
    let board = switchyard_balance::LoadBoard::new();
    telemetry
        .registry()
        .add_source(Arc::new(switchyard_telemetry::BoardMetrics::new("default", board, None)));
    let service = ServiceBuilder::new()
        .layer(RpcLayer::server().with_metrics(Some(telemetry.registry())))
        .service_fn(|_req: http::Request<switchyard_telemetry::RpcRequestBody<String>>| async {
            let mut response = http::Response::new(String::new());
            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
            Ok::<_, std::convert::Infallible>(response)
        });
    for _ in 0..3 {
        let request = http::Request::builder()
            .uri("/inference.GRPCInferenceService/ModelInfer")
            .body(String::new())
            .unwrap();
        drop(service.clone().oneshot(request).await.unwrap());
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let metrics = receiver.metrics.lock().unwrap().clone();
    let find =
        |name: &str| metrics.iter().find(|m| m.1 == name).unwrap_or_else(|| panic!("{name} in {metrics:#?}"));
    let (service, _, attributes, count) = find("rpc_server_duration_seconds");
    assert_eq!((service.as_str(), *count), ("switchyard-test", 3.0));
    for (key, value) in [("rpc_method", "ModelInfer"), ("rpc_grpc_status_code", "0"), ("rpc_system", "grpc")]
    {
        assert!(attributes.iter().any(|(k, v)| k == key && v == value), "{key}={value} in {attributes:?}");
    }
    let (_, _, attributes, endpoints) = find("switchyard_pool_endpoints");
    assert_eq!(
        (attributes.as_slice(), *endpoints),
        (&[("pool".to_string(), "default".to_string())][..], 0.0)
    );
}

/// One RPC through a server-side layer with tracing, under a subscriber with `telemetry`'s
/// layer.
async fn one_traced_call(telemetry: &switchyard_telemetry::Telemetry) {
    let subscriber = tracing_subscriber::registry().with(telemetry.tracing_layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let service = ServiceBuilder::new()
        .layer(
            RpcLayer::server().with_tracing(telemetry.is_tracing()).with_metrics(Some(telemetry.registry())),
        )
        .service_fn(|_req: http::Request<switchyard_telemetry::RpcRequestBody<String>>| async {
            let mut response = http::Response::new(String::new());
            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
            Ok::<_, std::convert::Infallible>(response)
        });
    let request = http::Request::builder()
        .uri("http://replica:9001/inference.GRPCInferenceService/ModelInfer")
        .body(String::new())
        .unwrap();
    drop(service.oneshot(request).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_export_reaches_the_collector_with_the_service_name_and_rpc_attributes() {
    let (endpoint, received) = receiver().await;
    let config = TelemetryConfig::from_vars([("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
    let telemetry = init("switchyard-test", &config);
    assert!(telemetry.is_tracing() && telemetry.warnings().is_empty(), "{telemetry:?}");
    one_traced_call(&telemetry).await;
    // Shutting down exports what the batch holds (blocking: off the runtime's threads).
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let spans = received.lock().unwrap().clone();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (service, name, attributes) = &spans[0];
    assert_eq!(
        (service.as_str(), name.as_str()),
        ("switchyard-test", "inference.GRPCInferenceService/ModelInfer")
    );
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "inference.GRPCInferenceService"),
        ("rpc.method", "ModelInfer"),
        ("rpc.grpc.status_code", "0"),
        ("server.address", "replica"),
        ("server.port", "9001"),
    ] {
        assert!(attributes.iter().any(|(k, v)| k == key && v == value), "{key}={value} in {attributes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_configured_nothing_is_exported() {
    let (_endpoint, receiver) = collector().await;
    let telemetry = init("switchyard-test", &TelemetryConfig::from_vars(Vec::<(String, String)>::new()));
    assert!(!telemetry.is_tracing() && !telemetry.is_exporting_metrics());
    one_traced_call(&telemetry).await;
    let registry = telemetry.registry().clone();
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
    // Nothing was set up that could send, and the shutdown has flushed whatever was: the
    // collector has nothing; the metrics stay on `/metrics`.
    assert!(receiver.received.lock().unwrap().is_empty());
    assert!(receiver.metrics.lock().unwrap().is_empty());
    let text = registry.render();
    assert!(text.contains("rpc_server_duration_seconds_count"), "{text}");
}

/// Waits (polling, up to 30 s of wall clock: the SDK's reader runs on its own thread) until
/// `done`.
async fn until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The endpoints an export's per-endpoint series name.
fn endpoints_in(export: &[(String, Vec<(String, String)>)]) -> std::collections::BTreeSet<String> {
    export
        .iter()
        .flat_map(|(_, attributes)| {
            attributes.iter().filter(|(k, _)| k == "endpoint").map(|(_, v)| v.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_removed_from_its_pool_leaves_the_otlp_export_while_the_live_one_stays() {
    use futures::SinkExt as _;
    use switchyard_balance::{Backend, Balance};
    use switchyard_core::{Endpoint, EndpointId};
    use tower::discover::Change;

    let (endpoint, receiver) = collector().await;
    let config = TelemetryConfig::from_vars([
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ]);
    let telemetry = init("switchyard-test", &config);
    assert!(telemetry.is_exporting_metrics(), "{telemetry:?}");

    type Svc = tower::util::BoxCloneService<http::Request<()>, http::Response<String>, tower::BoxError>;
    let answer: Svc = tower::util::BoxCloneService::new(tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, tower::BoxError>(http::Response::new(String::new()))
    }));
    let (mut discovery, changes) = futures::channel::mpsc::channel::<
        Result<Change<EndpointId, Backend<Svc>>, std::convert::Infallible>,
    >(8);
    let balancer: Balance<Svc, http::Request<()>> = Balance::new(changes);
    let board = balancer.board();
    telemetry.registry().add_source(Arc::new(switchyard_telemetry::BoardMetrics::new(
        "default",
        board.clone(),
        None,
    )));
    for id in ["a", "b"] {
        let backend = Backend::new(Endpoint::new(id, format!("http://{id}:9001")), answer.clone());
        discovery.send(Ok(Change::Insert(EndpointId::new(id), backend))).await.unwrap();
    }
    until(|| board.len() == 2, "both endpoints join the board").await;
    let both: std::collections::BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
    let exports = receiver.exports.clone();
    until(
        || exports.lock().unwrap().last().is_some_and(|e| endpoints_in(e) == both),
        "an export with both endpoints' series",
    )
    .await;

    discovery.send(Ok(Change::Remove(EndpointId::new("b")))).await.unwrap();
    until(|| board.len() == 1, "b leaves the board").await;
    let removed_at = exports.lock().unwrap().len();
    // Within an interval or two (the board is read every second), an export without b.
    let only_a: std::collections::BTreeSet<String> = ["a".to_string()].into();
    until(
        || exports.lock().unwrap()[removed_at..].iter().any(|e| endpoints_in(e) == only_a),
        "an export with a's series and none of b's",
    )
    .await;
    let first_without_b = removed_at
        + exports.lock().unwrap()[removed_at..].iter().position(|e| endpoints_in(e) == only_a).unwrap();
    // b stays out of every later export, and a stays in.
    until(|| exports.lock().unwrap().len() >= first_without_b + 4, "three more exports").await;
    for (n, export) in exports.lock().unwrap()[first_without_b..].iter().enumerate() {
        assert_eq!(endpoints_in(export), only_a, "export {n} after b left: {export:?}");
        assert!(
            export.iter().any(|(name, attributes)| name == "switchyard_endpoint_picks_total"
                && attributes.iter().any(|(k, v)| k == "endpoint" && v == "a")),
            "a's picks in export {n}: {export:?}"
        );
    }
    drop(balancer);
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
}
