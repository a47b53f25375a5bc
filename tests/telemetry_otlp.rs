#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The binary follows the standard `OTEL_*` variables: a worker started with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` sends its spans, named after the RPC and with its default
//! `service.name`, to a collector (here a receiver of the OTLP trace protocol served by the test).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// (service.name, span name) of every span received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push((service.clone(), span.name));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test]
async fn a_worker_with_an_otlp_endpoint_exports_its_rpc_spans_as_switchyard_worker() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = Collector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["worker", "--listen", "127.0.0.1:0", "--speed", "20"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env_remove("OTEL_SERVICE_NAME")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the worker logs within 30 s")
            .unwrap()
            .expect("the worker runs");
        if let Some((_, rest)) = line.split_once("worker serving on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
    client.model_infer(switchyard::worker::request::text_request("sim-llm", "Trace me.", 2)).await.unwrap();

    // The batch goes out within the SDK's schedule (5 s) or at the worker's exit; ask for it by
    // stopping the worker (SIGTERM: it drains and flushes).
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = collector.0.lock().unwrap().clone();
        if spans.iter().any(|(service, name)| {
            service == "switchyard-worker" && name == "inference.GRPCInferenceService/ModelInfer"
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no ModelInfer span from switchyard-worker: {spans:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling interval
    }
}
