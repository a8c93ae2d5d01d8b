//! Compiles `proto/tally/v1/*.proto` with protox (pure Rust), so building Tally needs no system
//! `protoc`, and keeps the file descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/tally/v1/ledger.proto", "proto/tally/v1/admin.proto", "proto/tally/v1/raft.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_directory = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_directory.join("tally_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".tally.v1.RaftMessage.payload").compile_fds(descriptors)?;
    Ok(())
}
