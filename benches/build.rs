//! Compiles the subset of etcd's KV API that `etcd-load` calls (protox: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/etcd/kv_put.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}
