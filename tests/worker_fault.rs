//! `switchyard worker --fault` over real loopback gRPC: what a client of a faulty replica sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use futures::StreamExt;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::proto::inference::*;
use switchyard::worker::WorkerArgs;
use switchyard::worker::fault::Fault;
use switchyard::worker::request::text_request;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A worker at speed 1, whose tokens come a decode step apart (milliseconds), with `fault` on.
async fn faulty(fault: Fault) -> (common::worker::Worker, Channel) {
    let args = WorkerArgs { fault: Some(fault), ..WorkerArgs::default() };
    let worker = common::worker::in_process(args).await;
    let channel = Channel::from_shared(format!("http://{}", worker.addr)).unwrap().connect().await.unwrap();
    (worker, channel)
}

async fn serving(channel: Channel) -> ServingStatus {
    let mut health = HealthClient::new(channel);
    let answer = health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    answer.into_inner().status()
}

#[tokio::test]
async fn an_unavailable_replica_answers_every_inference_call_unavailable_and_stays_healthy() {
    let (_worker, channel) = faulty(Fault::Unavailable).await;
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let infer = client.model_infer(text_request("sim-llm", "hello", 4)).await.unwrap_err();
    assert_eq!(infer.code(), Code::Unavailable, "{infer:?}");
    let metadata = client
        .model_metadata(ModelMetadataRequest { name: "sim-llm".into(), version: String::new() })
        .await
        .unwrap_err();
    assert_eq!(metadata.code(), Code::Unavailable, "{metadata:?}");
    assert_eq!(serving(channel).await, ServingStatus::Serving, "health is not an inference call");
}

#[tokio::test]
async fn a_resetting_replica_cuts_each_response_after_its_first_data_frame() {
    let (_worker, channel) = faulty(Fault::Reset).await;
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let request = futures::stream::iter([text_request("sim-llm", "hello", 32)]);
    let mut responses = client.model_stream_infer(request).await.unwrap().into_inner();
    // The first DATA frame holds the first message (or the few ready at once), then the reset.
    let mut messages = 0;
    let cut = loop {
        match responses.next().await.expect("the stream ends in an error, not cleanly") {
            Ok(message) => {
                assert!(message.error_message.is_empty(), "{message:?}");
                messages += 1;
            }
            Err(status) => break status,
        }
    };
    assert!((1..32).contains(&messages), "{messages} of 32 tokens came before the reset");
    assert_ne!(cut.code(), Code::Ok, "{cut:?}");

    let unary = client.model_infer(text_request("sim-llm", "hello", 4)).await.unwrap_err();
    assert_ne!(unary.code(), Code::Ok, "{unary:?}");
    assert_eq!(serving(channel).await, ServingStatus::Serving);
}
