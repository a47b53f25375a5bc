//! Compiles `proto/` into Rust with protox (pure Rust, so no system `protoc` is needed) and
//! tonic-prost-build, and writes the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "inference/grpc_service.proto",
    "xds/data/orca/v3/orca_load_report.proto",
    "xds/service/orca/v3/orca.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("switchyard_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // One Rust definition of the ORCA report in the workspace: switchyard-core's.
        .extern_path(".xds.data.orca.v3.OrcaLoadReport", "::switchyard_core::orca::OrcaLoadReport")
        .compile_fds(fds)?;
    Ok(())
}
