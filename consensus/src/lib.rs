//! # Tally's replication
//!
//! The pieces that turn the pure ledger of `tally-state-machine` into a replicated, durable one.
//!
//! # Layout
//! - [`blocking`]: running synchronous storage work without stalling heartbeats.
//! - [`clock`]: wall-clock time, and each peer's clock offset from this replica's.
//! - [`direct_io`]: writing around the page cache: a redb backend for the log's large pages, and
//!   the snapshot file writer.
//! - [`ledger_store`]: the ledger's `Storage` on redb, committing each batch in one transaction with
//!   the consensus record that says which log entry it applied; read views for snapshots.
//! - [`log_store`]: the Raft log and vote on redb, fsynced before openraft acts on them.
//! - [`raft_state_machine`]: the ledger as openraft's state machine: checkpoints, and snapshot
//!   files written when a peer needs one.
//! - [`snapshot_data`]: a snapshot's bytes for openraft, written from a ledger view when first read.
//! - [`network`]: openraft's RPCs over framed TCP on the replica's gRPC port, client and server.
//! - [`peer_identity`]: who is at the other end of a peer connection; incarnations, so that a
//!   replica that lost its data never takes part under its old id.
//! - [`types`]: the Raft type configuration, log payload, apply response and their encoding.

pub mod blocking;
pub mod clock;
pub mod direct_io;
pub mod ledger_store;
pub mod log_store;
pub mod network;
pub mod peer_identity;
pub mod raft_state_machine;
pub mod snapshot_data;
pub mod types;

pub use ledger_store::{CACHE_BYTES_DEFAULT, LedgerReadView, LedgerStoreError, RedbLedgerStore};
