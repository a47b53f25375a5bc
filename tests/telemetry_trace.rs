#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One trace across client → gateway → worker: each hop's RPC layer makes a span after the
//! OpenTelemetry RPC conventions and passes the W3C trace context on in the gRPC metadata.
//! The spans go to an in-memory exporter (this test binary's global subscriber).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use switchyard::balance::PolicyKind;
use switchyard::gateway::{Gateway, GatewayConfig, GatewayTelemetry};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_telemetry::{MetricsRegistry, RpcLayer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tower::ServiceBuilder;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv: &&KeyValue| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key).map(|v| v.as_str().into_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_client_gateway_and_worker_is_one_trace_with_rpc_attributes() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    // As `switchyard_telemetry::init`'s layer: info spans (ours), not h2's trace-level ones.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let args = WorkerArgs { speed: 20.0, tracing: true, ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, listener, async move {
        let _ = stopped.await;
    }));

    let config = GatewayConfig::single_pool(&[format!("http://{worker_addr}")], PolicyKind::DEFAULT).unwrap();
    let gateway = Gateway::start_with_telemetry(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        None,
        GatewayTelemetry::new(MetricsRegistry::new(), false, true),
    )
    .unwrap();

    let channel =
        Channel::from_shared(format!("http://{}", gateway.local_addr())).unwrap().connect().await.unwrap();
    let server = gateway.local_addr().to_string().parse().unwrap();
    let layer = RpcLayer::client().with_tracing(true).with_server_address(server);
    let traced = ServiceBuilder::new().layer(layer.for_channel()).service(channel);
    let mut client = GrpcInferenceServiceClient::new(traced);
    client.model_infer(worker::request::text_request("sim-llm", "Tell me a story.", 4)).await.unwrap();

    // Each hop ends its span as its response ends; wait until all three have.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = exporter.get_finished_spans().unwrap();
        if spans.len() >= 3 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling interval
    };
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let kind = |k: opentelemetry::trace::SpanKind| spans.iter().find(|s| s.span_kind == k).cloned();
    let client_span = kind(opentelemetry::trace::SpanKind::Client).expect("the client's span");
    let mut servers: Vec<SpanData> =
        spans.iter().filter(|s| s.span_kind == opentelemetry::trace::SpanKind::Server).cloned().collect();
    assert_eq!(servers.len(), 2, "{spans:#?}");
    // The gateway's span is the client's child, the worker's the gateway's.
    servers.sort_by_key(|s| s.parent_span_id != client_span.span_context.span_id());
    let (gateway_span, worker_span) = (&servers[0], &servers[1]);

    let trace_id = client_span.span_context.trace_id();
    for span in [&client_span, gateway_span, worker_span] {
        assert_eq!(span.span_context.trace_id(), trace_id, "one trace: {spans:#?}");
        assert_eq!(span.name, "inference.GRPCInferenceService/ModelInfer");
        assert_eq!(text(span, "rpc.system"), "grpc");
        assert_eq!(text(span, "rpc.service"), "inference.GRPCInferenceService");
        assert_eq!(text(span, "rpc.method"), "ModelInfer");
        assert_eq!(attribute(span, "rpc.grpc.status_code"), Some(&Value::I64(0)), "{span:#?}");
    }
    assert_eq!(client_span.parent_span_id, SpanId::INVALID, "the client's span starts the trace");
    assert_eq!(gateway_span.parent_span_id, client_span.span_context.span_id());
    assert_eq!(
        worker_span.parent_span_id,
        gateway_span.span_context.span_id(),
        "the gateway forwards its own span"
    );

    let gateway_addr = gateway.local_addr();
    assert_eq!(text(&client_span, "server.address"), gateway_addr.ip().to_string());
    assert_eq!(attribute(&client_span, "server.port"), Some(&Value::I64(i64::from(gateway_addr.port()))));
    assert_eq!(text(gateway_span, "switchyard.pool"), "default");
    assert_eq!(text(gateway_span, "switchyard.endpoint"), worker_addr.to_string());
    assert_eq!(attribute(worker_span, "server.port"), Some(&Value::I64(i64::from(worker_addr.port()))));

    gateway.shutdown().await.unwrap();
    let _ = stop.send(());
}
