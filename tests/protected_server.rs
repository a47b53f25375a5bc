#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! `examples/protected_server.rs` over real gRPC: past its limit and its queue, it refuses with
//! `RESOURCE_EXHAUSTED` and a pushback, and what it serves carries its ORCA load report.

#[path = "../examples/protected_server.rs"]
mod protected_server;

use protected_server::Protection;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::sim::EngineConfig;
use switchyard::worker;
use switchyard_core::{Outcome, Priority, orca};
use switchyard_limit::{Fixed, LimitLayer};
use switchyard_shed::{Reason, ShedConfig, ShedLayer};
use tokio::net::TcpListener;
use tonic::transport::Channel;

#[tokio::test]
async fn the_protected_server_refuses_past_its_limit_and_queue_with_resource_exhausted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // One request at a time, one waiting: a slow engine makes the rest arrive while it is full.
    let protection = Protection {
        shed: ShedLayer::new(ShedConfig { max_queue: 1, ..ShedConfig::default() }),
        limit: LimitLayer::new(Fixed::new(1)),
    };
    let engine = EngineConfig { speed: 0.2, ..EngineConfig::default() };
    tokio::spawn(protected_server::serve(
        listener,
        "sim-llm",
        engine,
        protection.clone(),
        std::future::pending(),
    ));

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut calls = Vec::new();
    for i in 0..6 {
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        let mut request = tonic::Request::new(worker::request::text_request("sim-llm", "hello there", 24));
        request.metadata_mut().insert("x-priority", "standard".parse().unwrap());
        calls.push(tokio::spawn(async move {
            // The first goes alone, so that it is the one running.
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
            Ok(response) => {
                ok += 1;
                let report = response.metadata().get_bin(orca::TRAILER_NAME).expect("an ORCA load report");
                orca::decode(&report.to_bytes().unwrap()).unwrap();
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert_eq!(status.message(), "request shed to protect the others");
                let pushback = status.metadata().get("grpc-retry-pushback-ms").expect("a pushback");
                let mut headers = http::HeaderMap::new();
                headers.insert("grpc-status", http::HeaderValue::from_static("8"));
                headers.insert("grpc-retry-pushback-ms", pushback.to_str().unwrap().parse().unwrap());
                assert!(matches!(
                    Outcome::from_trailers(&headers),
                    Some(Outcome::Overloaded { pushback: Some(_) })
                ));
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (2, 4), "one served, one queued then served, four refused");
    let stats = protection.shed.stats();
    assert_eq!(stats.refused(Reason::QueueFull, Priority::Standard), 4, "{stats:?}");
    assert_eq!(protection.limit.limiter().stats().in_flight, 0);
    assert_eq!(protection.limit.limiter().stats().samples, 2);
}
