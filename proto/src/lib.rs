//! # Tally's wire API
//!
//! Generated from the `.proto` files in `proto/tally/v1/` (package `tally.v1`). This crate depends
//! on no other crate of Tally's: clients build on it alone.
//!
//! # Layout
//! - [`v1`]: the messages and the `LedgerService`, `AdminService` and `RaftService` services (clients and servers).
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors, for gRPC server reflection.

#[allow(clippy::all, clippy::pedantic, missing_debug_implementations, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("tally.v1");
}

/// The encoded `FileDescriptorSet` of every Tally service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");
