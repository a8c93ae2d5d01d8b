//! The state machine: applies batches to a [`Storage`], one event after another, in log order.

use crate::apply::Event;
use crate::batch::{Batch, BatchError, BatchOutcome, Operation};
use crate::codec::put_batch_header;
use crate::constants::{EVENTS_PER_BATCH_MAX, EXPIRIES_PER_BATCH_MAX};
use crate::model::StateMeta;
use crate::result::ResultCode;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;
use crate::writer::LedgerWriter;

/// The deterministic ledger. It owns its storage; everything it does is a function of the batches
/// it was given, never of a clock, a random number, I/O or hash-map order.
#[derive(Debug)]
pub struct StateMachine<S: Storage> {
    writer: LedgerWriter<S>,
    meta: StateMeta,
}

impl StateMachine<MemoryStorage> {
    /// An empty ledger in memory.
    pub fn new() -> StateMachine<MemoryStorage> {
        StateMachine::open(MemoryStorage::new())
    }
}

impl Default for StateMachine<MemoryStorage> {
    fn default() -> Self {
        StateMachine::new()
    }
}

impl<S: Storage> StateMachine<S> {
    /// Opens the ledger held by `storage` (empty or previously written by a state machine).
    pub fn open(storage: S) -> StateMachine<S> {
        let meta = storage.meta_get();
        StateMachine { writer: LedgerWriter::new(storage), meta }
    }

    pub fn storage(&self) -> &S {
        &self.writer.storage
    }

    /// The store itself, for store-specific work between batches (a durable store staging the
    /// consensus record it commits with the next batch, say). Ledger data must only ever change
    /// through [`StateMachine::apply`]; writing it here would bypass every rule of the ledger.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.writer.storage
    }

    pub fn into_storage(self) -> S {
        self.writer.storage
    }

    /// The running digest after the last applied batch.
    pub fn digest(&self) -> [u8; 32] {
        self.meta.digest
    }

    /// The timestamp of the last applied event; the next batch must be stamped above it.
    pub fn timestamp_last(&self) -> u64 {
        self.meta.timestamp_last
    }

    pub fn batches_applied(&self) -> u64 {
        self.meta.batches_applied
    }

    pub fn meta(&self) -> StateMeta {
        self.meta
    }

    /// The earliest deadline of a pending transfer still reserved. Once cluster time reaches it,
    /// the log should carry an `ExpirePendingTransfers` batch.
    pub fn expiry_next(&self) -> Option<u64> {
        crate::query::LedgerQueries::expiry_next(&self.writer.storage)
    }

    /// Applies one batch. A refused batch (see [`BatchError`]) changes nothing; an accepted one
    /// yields a result per event (or the expired ids) and advances the digest and the timestamp.
    pub fn apply(&mut self, batch: &Batch) -> Result<BatchOutcome, BatchError> {
        self.check_batch(batch)?;
        self.writer.digest.begin(&self.meta.digest);
        put_batch_header(self.writer.digest.buffer(), batch);
        let (outcome, timestamps_used) = match &batch.operation {
            Operation::CreateLedgers(events) => {
                (BatchOutcome::Created(self.apply_events(events, &batch.request_sizes, batch.timestamp)), events.len())
            }
            Operation::CreateAccounts(events) => {
                (BatchOutcome::Created(self.apply_events(events, &batch.request_sizes, batch.timestamp)), events.len())
            }
            Operation::CreateTransfers(events) => {
                (BatchOutcome::Created(self.apply_events(events, &batch.request_sizes, batch.timestamp)), events.len())
            }
            Operation::ExpirePendingTransfers => {
                let expired = self.writer.expire_pending_transfers(batch.timestamp);
                let count = expired.len();
                (BatchOutcome::Expired(expired), count)
            }
        };
        let results: &[ResultCode] = match &outcome {
            BatchOutcome::Created(results) => results,
            BatchOutcome::Expired(_) => &[],
        };
        // A batch always uses at least its own timestamp, even an expiry batch that found nothing.
        let timestamp_last = batch.timestamp + timestamps_used.max(1) as u64 - 1;
        assert!(timestamp_last >= batch.timestamp && timestamp_last > self.meta.timestamp_last);
        self.meta = StateMeta {
            timestamp_last,
            batches_applied: self.meta.batches_applied + 1,
            digest: self.writer.digest.finish(results),
        };
        self.writer.storage.meta_put(&self.meta);
        Ok(outcome)
    }

    fn check_batch(&self, batch: &Batch) -> Result<(), BatchError> {
        let count = batch.operation.event_count();
        let timestamps_needed = match batch.operation {
            Operation::ExpirePendingTransfers => EXPIRIES_PER_BATCH_MAX,
            _ if count == 0 => {
                return Err(BatchError::Empty { operation: batch.operation.name() });
            }
            _ if count > EVENTS_PER_BATCH_MAX => {
                return Err(BatchError::TooManyEvents { count, max: EVENTS_PER_BATCH_MAX });
            }
            _ => count,
        };
        let declared: u64 = batch.request_sizes.iter().map(|&size| u64::from(size)).sum();
        let expiry = matches!(batch.operation, Operation::ExpirePendingTransfers);
        let sizes_valid = if expiry { batch.request_sizes.is_empty() } else { declared == count as u64 };
        if !sizes_valid || batch.request_sizes.contains(&0) {
            return Err(BatchError::RequestSizes { count, declared });
        }
        if batch.timestamp <= self.meta.timestamp_last {
            return Err(BatchError::TimestampNotIncreasing {
                timestamp: batch.timestamp,
                timestamp_last: self.meta.timestamp_last,
            });
        }
        if batch.timestamp.checked_add(timestamps_needed as u64 - 1).is_none() {
            return Err(BatchError::TimestampOverflow { timestamp: batch.timestamp, count: timestamps_needed });
        }
        Ok(())
    }

    /// Applies each request's events in order, one request after another (see [`Batch`]).
    fn apply_events<E: Event>(&mut self, events: &[E], request_sizes: &[u32], timestamp: u64) -> Vec<ResultCode> {
        let mut results = Vec::with_capacity(events.len());
        let mut start = 0;
        for &size in request_sizes {
            let end = start + size as usize;
            self.apply_request(&events[start..end], timestamp + start as u64, &mut results);
            start = end;
        }
        assert_eq!(results.len(), events.len(), "one result per event");
        results
    }

    /// Applies one request's events in order, honouring linked chains: a chain is the run of events
    /// flagged `linked` plus the first event after them without the flag. If any event of a chain
    /// fails, every write of the chain is undone, the failing event keeps its own code and the
    /// others get `linked_event_failed`. A chain still open at the request's end can never close:
    /// it fails without being applied. Appends one code per event to `results`.
    fn apply_request<E: Event>(&mut self, events: &[E], timestamp: u64, results: &mut Vec<ResultCode>) {
        let base = results.len();
        let open_chain_start = events.iter().rposition(|event| !event.linked()).map_or(0, |index| index + 1);
        let mut chain_start = None;
        let mut chain_failure: Option<usize> = None;
        for (index, event) in events[..open_chain_start].iter().enumerate() {
            let event_timestamp = timestamp + index as u64;
            if event.linked() && chain_start.is_none() {
                chain_start = Some(index);
                self.writer.begin_chain();
            }
            event.put(self.writer.digest.buffer());
            let code = if chain_failure.is_some() {
                ResultCode::LinkedEventFailed
            } else {
                event.apply(&mut self.writer, event_timestamp)
            };
            self.writer.digest.put_code(code);
            results.push(code);
            if !code.is_success() && chain_failure.is_none() {
                if chain_start.is_some() {
                    chain_failure = Some(index);
                    self.writer.rollback_chain();
                } else if code.is_transient() {
                    event.record_failure(&mut self.writer, code, event_timestamp);
                }
            }
            if let Some(start) = chain_start.filter(|_| !event.linked()) {
                if let Some(failed) = chain_failure.take() {
                    for (position, result) in results[base..].iter_mut().enumerate().skip(start) {
                        if position != failed {
                            *result = ResultCode::LinkedEventFailed;
                        }
                    }
                    let failed_code = results[base + failed];
                    if failed_code.is_transient() {
                        events[failed].record_failure(&mut self.writer, failed_code, timestamp + failed as u64);
                    }
                }
                self.writer.end_chain();
                chain_start = None;
            }
        }
        for (index, event) in events.iter().enumerate().skip(open_chain_start) {
            event.put(self.writer.digest.buffer());
            let code = if index + 1 == events.len() {
                ResultCode::LinkedEventChainOpen
            } else {
                ResultCode::LinkedEventFailed
            };
            self.writer.digest.put_code(code);
            results.push(code);
        }
        self.writer.assert_no_chain();
    }
}
