//! # Tally's wire API
//!
//! Generated from the `.proto` files in `proto/tally/v1/` (package `tally.v1`). This crate depends
//! on no other crate of Tally's: clients build on it alone.
//!
//! # Layout
//! - [`v1`]: the messages and the `LedgerService` and `AdminService` services (clients and servers).
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors, for gRPC server reflection.
//! - [`METHOD_PATHS`]: every method's HTTP/2 path, for metrics labels.
//! - [`amount`]: the wire's grammar for amounts, parsed exactly (never rounded).

pub mod amount;

#[allow(clippy::all, clippy::pedantic, missing_debug_implementations, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("tally.v1");
}

/// The encoded `FileDescriptorSet` of every Tally service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");

include!(concat!(env!("OUT_DIR"), "/result_code_descriptions.rs"));
include!(concat!(env!("OUT_DIR"), "/method_paths.rs"));

impl v1::ResultCode {
    /// `Ok` and `Exists` (a safe retry of an applied event) are successes; every other code is a
    /// failure that changed nothing.
    pub fn is_success(self) -> bool {
        matches!(self, v1::ResultCode::Ok | v1::ResultCode::Exists)
    }

    /// The code's name in lower case without its prefix, as in RESULT_CODES.md: `exceeds_credits`.
    pub fn name(self) -> String {
        self.as_str_name().trim_start_matches("RESULT_CODE_").to_ascii_lowercase()
    }
}
