//! Generates the gRPC types and services from `proto/raftstream.proto` with a vendored protoc, so a
//! fresh machine needs no protoc install.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto/raftstream.proto");
    let mut prost_config = prost_build::Config::new();
    prost_config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("raftstream_descriptor.bin"))
        .compile_with_config(prost_config, &["proto/raftstream.proto"], &["proto"])?;
    Ok(())
}
