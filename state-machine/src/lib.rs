//! # Tally's ledger state machine
//!
//! A pure, deterministic double-entry ledger. Every replica applies the same ordered log of
//! [`Batch`]es to its own [`StateMachine`] and ends in the same state with the same digest. The
//! state machine never reads a clock, a random number, the network or the file system: time
//! arrives as each batch's timestamp, ids arrive in the events, and storage sits behind the
//! [`Storage`] trait.
//!
//! # Layout
//! - [`constants`]: every limit, named once.
//! - [`amount`]: exact decimal amounts and the integer minor units the ledger counts in.
//! - [`currency`]: ISO 4217 currency codes.
//! - [`flags`]: account and transfer flags.
//! - [`model`]: the records, as submitted (`New*`) and as stored.
//! - [`batch`]: batches, operations and what applying one produces.
//! - [`result`]: the result code of every event, with the documentation table.
//! - `writer`: every write an event makes, paired with its undo while a linked chain is open.
//! - `apply`: one file per operation (ledgers, accounts, transfers, expiry): checks, then writes
//!   through the writer.
//! - [`state_machine`]: applying batches and requests, and where linked chains begin and end.
//! - [`query`]: lookups and bounded, paged listings.
//! - [`registry`]: the key registry of a secured cluster: operators, principals, keys, roles.
//! - [`signed`]: signed requests and registry changes, the checks every replica makes at apply,
//!   and the window of seen request ids that refuses replays.
//! - [`digest`]: the blake3 hash chain over applied batches.
//! - [`codec`]: the canonical binary encoding of batches and records.
//! - [`snapshot`]: the versioned, streamed, self-checking snapshot format.
//! - [`storage`]: the storage interface, the in-memory store, and the suite every store must pass.
//!
//! The rules the ledger enforces follow (they are the crate's README, and its example runs as a test).
#![doc = include_str!("../README.md")]

pub mod amount;
mod apply;
pub mod batch;
pub mod codec;
pub mod constants;
pub mod currency;
pub mod digest;
pub mod flags;
pub mod model;
mod permission;
pub mod query;
pub mod registry;
pub mod result;
pub mod signed;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
mod writer;

pub use amount::{AmountError, Units};
pub use batch::{Batch, BatchError, BatchOutcome, Operation};
pub use currency::Currency;
pub use flags::{AccountFlags, TransferFlags};
pub use model::{
    Account, AccountBalance, Ledger, NewAccount, NewLedger, NewTransfer, PendingStatus, StateMeta, Transfer,
    TransferFailure,
};
pub use query::{AccountTransfersFilter, FieldFilter, LedgerQueries, Page, QueryError, Window};
pub use result::ResultCode;
/// The decimal type of amounts in `NewTransfer`, re-exported so callers use the same version.
pub use rust_decimal::Decimal;
pub use snapshot::{SnapshotError, SnapshotSummary};
pub use state_machine::StateMachine;
pub use storage::memory::MemoryStorage;
pub use storage::{Direction, Storage, StorageRead, TimestampRange};
