//! Compiles `proto/tally/v1/*.proto` with protox (pure Rust), so building Tally needs no system
//! `protoc`, and keeps the file descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/tally/v1/ledger.proto", "proto/tally/v1/admin.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_directory = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_directory.join("tally_descriptor.bin"), descriptors.encode_to_vec())?;
    std::fs::write(out_directory.join("result_code_descriptions.rs"), result_code_descriptions(&descriptors)?)?;
    std::fs::write(out_directory.join("method_paths.rs"), method_paths(&descriptors))?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

/// A `match` from each `ResultCode` to the comment above it in `ledger.proto`, so that clients can
/// explain a code without a table kept by hand beside the proto.
fn result_code_descriptions(descriptors: &prost_types::FileDescriptorSet) -> Result<String, String> {
    // Paths in source info: 5 = a file's enum types, 2 = an enum's values.
    const ENUM_TYPE: i32 = 5;
    const ENUM_VALUE: i32 = 2;
    let file = descriptors
        .file
        .iter()
        .find(|file| file.name() == "tally/v1/ledger.proto")
        .ok_or("ledger.proto is missing from the descriptors")?;
    let enum_index = file
        .enum_type
        .iter()
        .position(|enumeration| enumeration.name() == "ResultCode")
        .ok_or("ledger.proto has no ResultCode enum")?;
    let locations = &file.source_code_info.as_ref().ok_or("the descriptors carry no source info")?.location;
    let mut arms = String::new();
    for (value_index, value) in file.enum_type[enum_index].value.iter().enumerate() {
        let path = [ENUM_TYPE, i32::try_from(enum_index).unwrap(), ENUM_VALUE, i32::try_from(value_index).unwrap()];
        let comment = locations
            .iter()
            .find(|location| location.path == path)
            .and_then(|location| location.leading_comments.as_deref())
            .map(|comment| comment.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|comment| !comment.is_empty())
            .ok_or_else(|| format!("ResultCode value {} has no comment in ledger.proto", value.name()))?;
        arms.push_str(&format!("            {} => {comment:?},\n", value.number()));
    }
    Ok(format!(
        "impl v1::ResultCode {{\n    /// What the code means, from its comment in `ledger.proto`.\n    \
         pub fn description(self) -> &'static str {{\n        match self as i32 {{\n{arms}            \
         _ => unreachable!(\"every ResultCode value has a description\"),\n        }}\n    }}\n}}\n"
    ))
}

/// Every method's HTTP/2 path (`/tally.v1.LedgerService/CreateTransfers`), for metrics labels
/// that come from the API's own list rather than from whatever path a client sends.
fn method_paths(descriptors: &prost_types::FileDescriptorSet) -> String {
    let mut paths = String::new();
    for file in &descriptors.file {
        for service in &file.service {
            for method in &service.method {
                paths.push_str(&format!("    \"/{}.{}/{}\",\n", file.package(), service.name(), method.name()));
            }
        }
    }
    format!(
        "/// Every method of Tally's services, as the HTTP/2 path a call uses.\npub const METHOD_PATHS: &[&str] = &[\n{paths}];\n"
    )
}
