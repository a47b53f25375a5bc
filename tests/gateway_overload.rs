#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A gateway pool with the `shed` and `limit` layers over real loopback gRPC: past its limit and
//! its queue it refuses with `RESOURCE_EXHAUSTED` and a pushback; what it serves passes.

use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use tokio::net::TcpListener;
use tonic::transport::Channel;

#[tokio::test]
async fn a_pool_with_shed_and_limit_layers_refuses_what_it_cannot_hold() {
    let worker_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = worker_listener.local_addr().unwrap();
    let args = WorkerArgs { speed: 0.2, ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, worker_listener, std::future::pending()));

    let config = GatewayConfig::from_toml(&format!(
        r#"
        [[pool]]
        name = "llama"
        layers = [
          {{ name = "shed", max_queue = 1, target = "50ms", interval = "500ms" }},
          {{ name = "limit", algorithm = {{ name = "fixed", limit = 1 }} }},
        ]
        endpoints = [{{ address = "http://{worker_addr}" }}]
        "#
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _gateway = Gateway::start(config, listener, None).unwrap();

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut calls = Vec::new();
    for i in 0..5 {
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        let request = worker::request::text_request("sim-llm", "hello there", 24);
        calls.push(tokio::spawn(async move {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            client.model_infer(request).await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.metadata().get("grpc-retry-pushback-ms").is_some(), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (2, 3), "one served, one queued then served, three refused");
}

#[test]
fn bad_layer_parameters_name_the_layer_and_field() {
    for (layers, expected) in [
        (r#"{ name = "shed", max_queue = 0 }"#, "`max_queue` must be at least 1"),
        (r#"{ name = "shed", target = "soon" }"#, "`target`"),
        (r#"{ name = "shed", queue = 3 }"#, "unknown field `queue`"),
        (r#"{ name = "limit", algorithm = "tcp" }"#, "unknown limit algorithm"),
        (r#"{ name = "limit", algorithm = { name = "vegas", alpha = 3 } }"#, "unknown field `alpha`"),
    ] {
        let text = format!(
            "[[pool]]\nname = \"p\"\nlayers = [{layers}]\nendpoints = [{{ address = \"http://127.0.0.1:1\" }}]\n"
        );
        let err = GatewayConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("pool[0].layers[0]") && err.contains(expected), "{layers}: {err}");
    }
}
