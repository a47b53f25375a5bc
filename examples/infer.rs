//! One KServe v2 `ModelInfer` call with the generated tonic client, and the replica's ORCA load
//! report read from the response trailer.
//!
//! ```sh
//! cargo run --release -- worker &
//! cargo run --example infer -- http://127.0.0.1:9001 "Why is the sky blue?"
//! ```

use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::request::text_request;
use switchyard_core::orca;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "http://127.0.0.1:9001".into());
    let prompt = args.next().unwrap_or_else(|| "Why is the sky blue?".into());

    let mut client = GrpcInferenceServiceClient::connect(target).await?;
    let request = text_request("sim-llm", &prompt, 16);
    let response = client.model_infer(request).await?;
    // tonic merges a unary response's trailers into its metadata.
    if let Some(value) = response.metadata().get_bin(orca::TRAILER_NAME) {
        println!("replica load: {:?}", orca::decode(&value.to_bytes()?)?);
    }
    let response = response.into_inner();
    for output in &response.outputs {
        if let Some(contents) = &output.contents {
            for text in &contents.bytes_contents {
                println!("{}: {}", output.name, String::from_utf8_lossy(text));
            }
        }
    }
    Ok(())
}
