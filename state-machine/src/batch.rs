//! Batches: the unit the log orders and the ledger applies.

use crate::model::{NewAccount, NewLedger, NewTransfer};
use crate::result::ResultCode;

/// One log entry's worth of work: events of one kind, stamped with cluster time by the log.
/// Event `i` is applied at `timestamp + i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Nanoseconds since the Unix epoch, strictly above every timestamp already applied.
    pub timestamp: u64,
    pub operation: Operation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    CreateLedgers(Vec<NewLedger>),
    CreateAccounts(Vec<NewAccount>),
    CreateTransfers(Vec<NewTransfer>),
    /// Release the pending transfers whose deadline is at or before the batch timestamp (at most
    /// `EXPIRIES_PER_BATCH_MAX` of them). The log proposes it when `StateMachine::expiry_next`
    /// says one is due, so every replica expires the same transfers at the same log position.
    ExpirePendingTransfers,
}

impl Operation {
    /// The number of events the batch carries (0 for expiry, whose events are found in the ledger).
    pub fn event_count(&self) -> usize {
        match self {
            Operation::CreateLedgers(events) => events.len(),
            Operation::CreateAccounts(events) => events.len(),
            Operation::CreateTransfers(events) => events.len(),
            Operation::ExpirePendingTransfers => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Operation::CreateLedgers(_) => "create_ledgers",
            Operation::CreateAccounts(_) => "create_accounts",
            Operation::CreateTransfers(_) => "create_transfers",
            Operation::ExpirePendingTransfers => "expire_pending_transfers",
        }
    }
}

/// What applying a batch produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// One code per event, in order.
    Created(Vec<ResultCode>),
    /// The ids of the pending transfers released, in the order they expired.
    Expired(Vec<u128>),
}

impl BatchOutcome {
    /// The per-event codes of a create batch; panics for an expiry batch (a caller bug).
    pub fn results(&self) -> &[ResultCode] {
        match self {
            BatchOutcome::Created(results) => results,
            BatchOutcome::Expired(_) => panic!("an expiry batch has no per-event results"),
        }
    }
}

/// Why a whole batch was refused. Refusal is deterministic, so every replica refuses the same batch
/// and none of them changes state or digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {operation} has no events")]
    Empty { operation: &'static str },
    #[error("batch has {count} events, above the limit of {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error("batch timestamp {timestamp} is not above the last applied timestamp {timestamp_last}")]
    TimestampNotIncreasing { timestamp: u64, timestamp_last: u64 },
    #[error("batch timestamp {timestamp} leaves no room for {count} event timestamps")]
    TimestampOverflow { timestamp: u64, count: usize },
}
