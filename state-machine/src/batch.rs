//! Batches: the unit the log orders and the ledger applies.

use crate::model::{NewAccount, NewLedger, NewTransfer};
use crate::result::ResultCode;

/// One log entry's worth of work: events of one kind, stamped with cluster time by the log.
/// Event `i` is applied at `timestamp + i`.
///
/// A batch may join several client requests (the leader's group commit does). Each keeps its
/// boundary: a linked chain closes at the end of its request, so a chain left open by one request
/// fails alone (`linked_event_chain_open`) and never runs into the next request's events. Every
/// request's results are therefore those it would get applied alone at its position in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Nanoseconds since the Unix epoch, strictly above every timestamp already applied.
    pub timestamp: u64,
    pub operation: Operation,
    /// The number of events of each request the batch joins, in order; they add up to the event
    /// count. Empty for an expiry batch, which no client sent.
    pub request_sizes: Vec<u32>,
}

impl Batch {
    /// A batch of one request holding all of `operation`'s events.
    pub fn new(timestamp: u64, operation: Operation) -> Batch {
        let request_sizes = match operation.event_count() {
            0 if matches!(operation, Operation::ExpirePendingTransfers) => Vec::new(),
            count => vec![u32::try_from(count).expect("a batch holds under 2^32 events")],
        };
        Batch { timestamp, operation, request_sizes }
    }

    /// A batch joining requests of `request_sizes` events each, in order, into `operation`.
    pub fn joined(timestamp: u64, operation: Operation, request_sizes: Vec<u32>) -> Batch {
        Batch { timestamp, operation, request_sizes }
    }
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
    #[error("batch of {count} events declares requests of {declared} events, or an empty request")]
    RequestSizes { count: usize, declared: u64 },
    #[error("an unsigned batch of {operation} on a secured cluster: every client request must be signed")]
    Unsigned { operation: &'static str },
    #[error("a signed entry on a cluster without a genesis, which has no registry to check it against")]
    Unsecured,
    #[error("a signed entry of {count} requests; an entry holds 1 to {max}")]
    RequestCount { count: usize, max: usize },
}
