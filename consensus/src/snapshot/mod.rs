//! Snapshots: what openraft sends a lagging or new peer, a replica's ledger written out whole.
//!
//! A snapshot is made only from a checkpoint (a durable commit that names the state it holds), and
//! written to a file only when a peer needs it.
//!
//! # Layout
//! - [`file`]: the snapshot file's format, and the folder of them.
//! - [`data`]: a snapshot's bytes as openraft handles them: a file, or a read view written to one
//!   when first read.
//!
//! `data` depends on `file`, and neither on the state machine that makes and installs them.

pub mod data;
pub mod file;

pub use data::SnapshotData;
