#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The response cache over real loopback gRPC: in a gateway pool (from its config), on a tonic
//! client, and on a tonic server, in front of real workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use switchyard::proto::inference::infer_parameter::ParameterChoice;
use switchyard::proto::inference::*;
use switchyard::worker::{self, InferenceService, WorkerArgs};
use switchyard_cache::{CacheConfig, CacheLayer, CacheRule};
use switchyard_core::orca;
use switchyard_sim::{EngineConfig, EngineHandle};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

async fn worker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, listener, std::future::pending()));
    addr
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// A request with one parameter (`max_tokens`): encoded the same way every time.
fn plain(text: &str) -> ModelInferRequest {
    worker::request::text_request("sim-llm", text, 8)
}

/// A request with two parameters: their order on the wire varies from one call to the next.
fn infer(text: &str, temperature: f64) -> ModelInferRequest {
    let mut req = worker::request::text_request("sim-llm", text, 8);
    req.parameters.insert(
        "temperature".into(),
        InferParameter { parameter_choice: Some(ParameterChoice::DoubleParam(temperature)) },
    );
    req
}

fn text(resp: &ModelInferResponse) -> Vec<u8> {
    resp.outputs[0].contents.as_ref().unwrap().bytes_contents[0].clone()
}

/// Requests the pool's endpoints have ended, whatever their outcome: the upstream calls.
fn upstream_calls(gateway: &Gateway) -> u64 {
    let snapshot = gateway.pool("llm").unwrap().board().snapshot();
    snapshot.iter().map(|e| e.load.completed + e.load.failed + e.load.overloaded + e.load.cancelled).sum()
}

async fn until_upstream_calls(gateway: &Gateway, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while upstream_calls(gateway) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(upstream_calls(gateway), n, "upstream calls");
}

#[tokio::test]
async fn a_gateway_pool_answers_repeated_greedy_requests_from_its_cache() {
    let worker = worker().await;
    let config = format!(
        r#"
[[pool]]
name = "llm"
layers = [{{ name = "cache", ttl = "60s", methods = [{{ method = "{MODEL_INFER}", when = "temperature-zero" }}] }}]
endpoints = [{{ address = "http://{worker}" }}]
"#
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::start(GatewayConfig::from_toml(&config).unwrap(), listener, None).unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel(gateway.local_addr()).await);

    let first = client.model_infer(infer("the same prompt", 0.0)).await.unwrap();
    assert!(
        first.metadata().get_bin(orca::TRAILER_NAME).is_some(),
        "the caller that reached the worker gets its report"
    );
    until_upstream_calls(&gateway, 1).await;
    for _ in 0..3 {
        let again = client.model_infer(infer("the same prompt", 0.0)).await.unwrap();
        assert!(
            again.metadata().get_bin(orca::TRAILER_NAME).is_none(),
            "a stored answer carries no load report"
        );
        assert_eq!(text(again.get_ref()), text(first.get_ref()));
    }
    let concurrent: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client.model_infer(infer("another prompt", 0.0)).await.unwrap().into_inner()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in concurrent {
        answers.push(text(&task.await.unwrap()));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    until_upstream_calls(&gateway, 2).await;
    assert_eq!(upstream_calls(&gateway), 2, "three repeats and eight identical requests: one call each");

    for _ in 0..2 {
        client.model_infer(infer("the same prompt", 0.7)).await.unwrap();
    }
    until_upstream_calls(&gateway, 4).await;
}

#[tokio::test]
async fn the_cache_layer_goes_on_a_tonic_client_and_a_tonic_server() {
    let rules = || CacheConfig::new([CacheRule::method(MODEL_INFER)]);

    // A tonic client: the layer over a Channel.
    let addr = worker().await;
    let layer = CacheLayer::new(rules());
    let service = tower::ServiceBuilder::new().layer(layer.clone()).service(channel(addr).await);
    let mut client = GrpcInferenceServiceClient::new(service);
    let first = client.model_infer(plain("client side")).await.unwrap().into_inner();
    let second = client.model_infer(plain("client side")).await.unwrap().into_inner();
    assert_eq!(text(&first), text(&second));
    assert_eq!((layer.stats().misses, layer.stats().hits), (1, 1));

    // A tonic server: the layer on `Server::builder()`, in front of a model server.
    let engine = EngineHandle::spawn(EngineConfig { speed: 20.0, ..EngineConfig::default() }).unwrap();
    let inference = InferenceService::new("sim-llm", engine.clone(), Arc::new(AtomicBool::new(true)));
    let server_layer = CacheLayer::new(rules());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .layer(server_layer.clone())
        .add_service(GrpcInferenceServiceServer::new(inference));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    let mut client = GrpcInferenceServiceClient::new(channel(server_addr).await);
    for _ in 0..3 {
        client.model_infer(plain("server side")).await.unwrap();
    }
    assert_eq!(engine.load().completed, 1, "the engine ran the request once");
    assert_eq!((server_layer.stats().misses, server_layer.stats().hits), (1, 2));
}
