//! Compiles the KV-event protocol (`proto/switchyard/kv/v1/kv_events.proto` of the workspace)
//! with protox (pure Rust, no system `protoc`) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "switchyard/kv/v1/kv_events.proto";
    println!("cargo:rerun-if-changed=../../proto/{PROTO}");
    let fds = protox::compile([PROTO], ["../../proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("kv_events_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
