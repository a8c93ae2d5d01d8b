//! # Tally's replication
//!
//! The pieces that turn the pure ledger of `tally-state-machine` into a replicated, durable one.
//!
//! # Layout
//! From the bottom up: each module uses only those above it, so none imports another in a circle.
//! - [`types`]: the log payload, apply response, peers and the consensus record, and their encoding.
//! - [`blocking`]: running synchronous storage work without stalling heartbeats.
//! - [`clock`]: wall-clock time, and each peer's clock offset from this replica's.
//! - [`direct_io`]: writing around the page cache: a redb backend for the log's large pages, and
//!   the snapshot file writer.
//! - [`ledger_store`]: the ledger's `Storage` on redb: the overlay of deferred batches, commits
//!   written off the apply path, checkpoints, the account index; read views for queries and
//!   snapshots.
//! - [`snapshot`]: snapshot files, and a snapshot's data as openraft handles it.
//! - [`type_config`]: the Raft type configuration, naming the snapshot data type.
//! - [`log_store`]: the Raft log and vote on redb, fsynced before openraft acts on them.
//! - [`peer_identity`]: who is at the other end of a peer connection; incarnations, so that a
//!   replica that lost its data never takes part under its old id.
//! - [`network`]: openraft's RPCs over framed TCP on the replica's gRPC port, client and server.
//! - [`raft_state_machine`]: the ledger as openraft's state machine: the commit pipeline
//!   (deferred, writing, written, committed, durable), checkpoints, and installing snapshots.

pub mod blocking;
pub mod clock;
pub mod direct_io;
pub mod ledger_store;
pub mod log_store;
pub mod network;
pub mod peer_identity;
pub mod raft_state_machine;
pub mod signed_entry;
pub mod snapshot;
pub mod type_config;
pub mod types;
pub mod write_request;

pub use ledger_store::{CACHE_BYTES_DEFAULT, LedgerReadView, LedgerStoreError, RedbLedgerStore};
