#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `init` exports spans over OTLP/gRPC to a collector: here, a receiver speaking the OTLP trace
//! collector protocol served by the test on a loopback port.

use std::sync::{Arc, Mutex};

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
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            other => format!("{other:?}"),
        };
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

async fn receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let received = receiver.received.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), received)
}

/// One RPC through a server-side layer with tracing, under a subscriber with `telemetry`'s
/// layer.
async fn one_traced_call(telemetry: &switchyard_telemetry::Telemetry) {
    let subscriber = tracing_subscriber::registry().with(telemetry.tracing_layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let service = ServiceBuilder::new()
        .layer(RpcLayer::server().with_tracing(telemetry.is_tracing()))
        .service_fn(|_req: http::Request<String>| async {
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
    let (_endpoint, received) = receiver().await;
    let telemetry = init("switchyard-test", &TelemetryConfig::from_vars(Vec::<(String, String)>::new()));
    assert!(!telemetry.is_tracing());
    one_traced_call(&telemetry).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
    // Nothing was set up that could send, and the shutdown has flushed whatever was: the
    // receiver has nothing.
    assert!(received.lock().unwrap().is_empty());
}
