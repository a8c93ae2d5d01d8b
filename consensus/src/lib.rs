//! # Tally's replication
//!
//! The pieces that turn the pure ledger of `tally-state-machine` into a replicated, durable one.
//!
//! # Layout
//! - [`ledger_store`]: the ledger's `Storage` on redb, committing each batch in one transaction with
//!   the consensus record that says which log entry it applied; read views for snapshots.

pub mod ledger_store;

pub use ledger_store::{CACHE_BYTES_DEFAULT, LedgerReadView, LedgerStoreError, RedbLedgerStore};
