//! The state machine: applies batches to a [`Storage`], one event after another, in log order.

use crate::apply::Event;
use crate::batch::{Batch, BatchError, BatchOutcome, Operation};
use crate::codec::Put;
use crate::codec::put_batch_header;
use crate::constants::{EVENTS_PER_BATCH_MAX, EXPIRIES_PER_BATCH_MAX};
use crate::model::StateMeta;
use crate::registry::{ChangeRefusal, KeyAlgorithm, KeyStatus, OPERATORS_MAX, OPERATORS_PRINCIPAL, Registry};
use crate::result::ResultCode;
use crate::signed::{
    CHANGE_VALIDITY_MAX_NANOSECONDS, ChangeOutcome, DeadlineProblem, REQUESTS_FORGOTTEN_PER_BATCH_MAX,
    REQUESTS_PER_BATCH_MAX, RequestOutcome, RequestRefusal, SeenRequest, SignatureCheck, SignedBatch, SignedChange,
    SignedRequest, check_deadline, check_deadline_within,
};
use crate::storage::memory::MemoryStorage;
use crate::storage::{Storage, StorageRead};
use crate::writer::LedgerWriter;
use std::ops::ControlFlow;

/// The deterministic ledger. It owns its storage; everything it does is a function of the batches
/// it was given, never of a clock, a random number, I/O or hash-map order.
#[derive(Debug)]
pub struct StateMachine<S: Storage> {
    writer: LedgerWriter<S>,
    meta: StateMeta,
    /// The key registry of a secured cluster: the store's once a change wrote it, the genesis'
    /// before that. `None` on a development cluster without a genesis, which takes unsigned
    /// batches only.
    registry: Option<Registry>,
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
        let registry = storage.registry_get();
        StateMachine { writer: LedgerWriter::new(storage), meta, registry }
    }

    /// Secures the ledger with its genesis registry, unless its store holds a registry already
    /// (which must be of the same cluster). Every replica of a cluster holds the same genesis, so
    /// each starts from the same registry.
    pub fn with_genesis(mut self, genesis: Registry) -> StateMachine<S> {
        self.secure(genesis);
        self
    }

    /// [`StateMachine::with_genesis`] in place.
    pub fn secure(&mut self, genesis: Registry) {
        match &self.registry {
            Some(registry) => assert_eq!(registry.cluster, genesis.cluster, "the store is of another cluster"),
            None => self.registry = Some(genesis),
        }
    }

    /// The key registry; `None` on a development cluster without a genesis.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
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
        if self.registry.is_some() && !matches!(batch.operation, Operation::ExpirePendingTransfers) {
            return Err(BatchError::Unsigned { operation: batch.operation.name() });
        }
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
        self.finish_batch(batch.timestamp, timestamps_used, results);
        Ok(outcome)
    }

    /// Ends an applied batch: its last timestamp, the digest, the meta record.
    fn finish_batch(&mut self, timestamp: u64, timestamps_used: usize, results: &[ResultCode]) {
        // A batch always uses at least its own timestamp, even an expiry batch that found nothing.
        let timestamp_last = timestamp + timestamps_used.max(1) as u64 - 1;
        assert!(timestamp_last >= timestamp && timestamp_last > self.meta.timestamp_last);
        self.meta = StateMeta {
            timestamp_last,
            batches_applied: self.meta.batches_applied + 1,
            digest: self.writer.digest.finish(results),
        };
        self.writer.storage.meta_put(&self.meta);
    }

    fn check_timestamp(&self, timestamp: u64, timestamps_needed: usize) -> Result<(), BatchError> {
        if timestamp <= self.meta.timestamp_last {
            return Err(BatchError::TimestampNotIncreasing { timestamp, timestamp_last: self.meta.timestamp_last });
        }
        if timestamp.checked_add(timestamps_needed.max(1) as u64 - 1).is_none() {
            return Err(BatchError::TimestampOverflow { timestamp, count: timestamps_needed });
        }
        Ok(())
    }

    /// Applies one log entry of signed requests, each checked again here against the registry as
    /// it stands (see [`crate::signed`]). The entry is refused whole, changing nothing, only when
    /// it breaks a batch rule; a request that fails its checks is refused alone.
    pub fn apply_signed(
        &mut self,
        batch: &SignedBatch,
        check: &dyn SignatureCheck,
    ) -> Result<Vec<RequestOutcome>, BatchError> {
        if self.registry.is_none() {
            return Err(BatchError::Unsecured);
        }
        let count = batch.requests.len();
        if count == 0 || count > REQUESTS_PER_BATCH_MAX {
            return Err(BatchError::RequestCount { count, max: REQUESTS_PER_BATCH_MAX });
        }
        let events: usize =
            batch.requests.iter().map(|request| request.operation.as_ref().map_or(0, Operation::event_count)).sum();
        if events > EVENTS_PER_BATCH_MAX {
            return Err(BatchError::TooManyEvents { count: events, max: EVENTS_PER_BATCH_MAX });
        }
        self.check_timestamp(batch.timestamp, events)?;
        self.writer.digest.begin(&self.meta.digest);
        put_signed_batch_header(self.writer.digest.buffer(), batch);
        self.forget_requests_due(batch.timestamp);
        let mut outcomes = Vec::with_capacity(count);
        let mut results = Vec::with_capacity(events);
        for request in &batch.requests {
            let outcome =
                self.apply_signed_request(request, batch, batch.timestamp + results.len() as u64, &mut results, check);
            put_request_record(self.writer.digest.buffer(), request, &outcome);
            self.writer.digest.end_record();
            outcomes.push(outcome);
        }
        let applied = results.len();
        self.finish_batch(batch.timestamp, applied, &[]);
        Ok(outcomes)
    }

    /// Checks and applies one signed request, appending its codes to `results` when it applies.
    fn apply_signed_request(
        &mut self,
        request: &SignedRequest,
        batch: &SignedBatch,
        timestamp: u64,
        results: &mut Vec<ResultCode>,
        check: &dyn SignatureCheck,
    ) -> RequestOutcome {
        let registry = self.registry.as_ref().expect("apply_signed checked the registry");
        let at = Position { log_index: batch.log_index, timestamp: batch.timestamp };
        let operation = match check_request(registry, &self.writer.storage, request, at, check) {
            Ok(operation) => operation,
            Err(outcome) => return outcome,
        };
        let start = results.len();
        match operation {
            Operation::CreateLedgers(events) => self.apply_request(events, timestamp, results),
            Operation::CreateAccounts(events) => self.apply_request(events, timestamp, results),
            Operation::CreateTransfers(events) => self.apply_request(events, timestamp, results),
            Operation::ExpirePendingTransfers => unreachable!("no client request expires transfers"),
        }
        let codes = results[start..].to_vec();
        let signer = &request.signer;
        self.writer.storage.request_seen_insert(&SeenRequest {
            principal: signer.principal,
            request_id: signer.request_id,
            deadline: signer.deadline,
            body_hash: request.body_hash,
            results: codes.clone(),
        });
        RequestOutcome::Applied(codes)
    }

    /// Forgets the remembered requests whose deadline is before `timestamp` (a bounded number).
    fn forget_requests_due(&mut self, timestamp: u64) {
        let mut due = Vec::new();
        self.writer.storage.requests_seen_due_scan(timestamp - 1, &mut |entry| {
            due.push(*entry);
            if due.len() == REQUESTS_FORGOTTEN_PER_BATCH_MAX {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        for entry in due {
            self.writer.storage.request_seen_remove(entry);
        }
    }

    /// Applies one registry change, approved by operators, at its log index.
    pub fn apply_change(
        &mut self,
        change: &SignedChange,
        check: &dyn SignatureCheck,
    ) -> Result<ChangeOutcome, BatchError> {
        if self.registry.is_none() {
            return Err(BatchError::Unsecured);
        }
        self.check_timestamp(change.timestamp, 1)?;
        self.writer.digest.begin(&self.meta.digest);
        put_change_record(self.writer.digest.buffer(), change);
        self.forget_requests_due(change.timestamp);
        let outcome = self.apply_change_checked(change, check);
        let code = match &outcome {
            ChangeOutcome::Applied => 0,
            ChangeOutcome::Repeated => 0xff,
            ChangeOutcome::Refused(refusal) => refusal.code(),
        };
        self.writer.digest.buffer().push(code);
        self.finish_batch(change.timestamp, 1, &[]);
        Ok(outcome)
    }

    fn apply_change_checked(&mut self, change: &SignedChange, check: &dyn SignatureCheck) -> ChangeOutcome {
        let registry = self.registry.as_ref().expect("apply_change checked the registry");
        match check_deadline_within(change.signer.deadline, change.timestamp, CHANGE_VALIDITY_MAX_NANOSECONDS) {
            Ok(()) => {}
            Err(DeadlineProblem::Expired { late_nanoseconds }) => {
                return ChangeOutcome::Refused(ChangeRefusal::DeadlineExpired { late_nanoseconds });
            }
            Err(DeadlineProblem::TooFar { ahead_nanoseconds }) => {
                return ChangeOutcome::Refused(ChangeRefusal::DeadlineTooFar { ahead_nanoseconds });
            }
        }
        if let Err(refusal) = approve(registry, change, check) {
            return ChangeOutcome::Refused(refusal);
        }
        let id = change.signer.change_id;
        if let Some(seen) = self.writer.storage.request_seen_get(OPERATORS_PRINCIPAL, id) {
            if seen.body_hash == change.body_hash {
                return ChangeOutcome::Repeated;
            }
            return ChangeOutcome::Refused(ChangeRefusal::ChangeIdReused { change_id: id });
        }
        let body = match &change.change {
            Ok(body) => body,
            Err(detail) => return ChangeOutcome::Refused(ChangeRefusal::Malformed { detail: detail.clone() }),
        };
        let mut registry = registry.clone();
        let key_id_of = |algorithm: KeyAlgorithm, public_key: &[u8]| check.key_id(algorithm, public_key);
        if let Err(refusal) = registry.apply(body, change.log_index, &key_id_of) {
            return ChangeOutcome::Refused(refusal);
        }
        self.writer.storage.registry_put(&registry);
        self.registry = Some(registry);
        self.writer.storage.request_seen_insert(&SeenRequest {
            principal: OPERATORS_PRINCIPAL,
            request_id: id,
            deadline: change.signer.deadline,
            body_hash: change.body_hash,
            results: Vec::new(),
        });
        ChangeOutcome::Applied
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
        self.check_timestamp(batch.timestamp, timestamps_needed)
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

/// Checks that a signed request is signed by an active key of a registered principal.
fn authenticate(
    registry: &Registry,
    request: &SignedRequest,
    log_index: u64,
    check: &dyn SignatureCheck,
) -> Result<(), RequestRefusal> {
    let signer = &request.signer;
    let (principal, key_id) = (signer.principal, signer.key_id);
    let holder = registry.principals.get(&principal).ok_or(RequestRefusal::PrincipalUnknown { principal })?;
    let key = holder.key(key_id).ok_or(RequestRefusal::KeyUnknown { principal, key_id })?;
    assert!(key.valid_from_index < log_index, "a key registered at or after the entry that uses it");
    match key.status {
        KeyStatus::Active => {}
        KeyStatus::Retired => return Err(RequestRefusal::KeyRetired { principal, key_id }),
        KeyStatus::Revoked => return Err(RequestRefusal::KeyRevoked { principal, key_id }),
    }
    if !check.request_signed(&registry.cluster, key, signer, &request.body_hash, &request.signature) {
        return Err(RequestRefusal::SignatureInvalid { principal, key_id });
    }
    Ok(())
}

/// Checks that enough operators approved a change, and that every approval given verifies.
fn approve(registry: &Registry, change: &SignedChange, check: &dyn SignatureCheck) -> Result<(), ChangeRefusal> {
    let mut approved: Vec<u64> = Vec::with_capacity(change.approvals.len().min(OPERATORS_MAX));
    for approval in &change.approvals {
        let operator = approval.operator;
        if approved.contains(&operator) {
            return Err(ChangeRefusal::ApprovalDuplicate { operator });
        }
        let known = registry.operator(operator).ok_or(ChangeRefusal::OperatorUnknown { operator })?;
        if !check.change_approved(&registry.cluster, known, &change.signer, &change.body_hash, &approval.signature) {
            return Err(ChangeRefusal::ApprovalInvalid { operator });
        }
        approved.push(operator);
    }
    let approved = u32::try_from(approved.len()).expect("at most OPERATORS_MAX approvals count");
    if approved < registry.operator_approvals_required {
        return Err(ChangeRefusal::ApprovalsTooFew { approved, required: registry.operator_approvals_required });
    }
    Ok(())
}

/// Marks a signed batch's digest record apart from a plain batch's header (whose first byte is
/// its format version, 1).
const DIGEST_SIGNED_BATCH: u8 = 0xa1;
const DIGEST_REGISTRY_CHANGE: u8 = 0xa2;

fn put_signed_batch_header(out: &mut Vec<u8>, batch: &SignedBatch) {
    out.put_u8(DIGEST_SIGNED_BATCH);
    out.put_u64(batch.timestamp);
    out.put_u64(batch.log_index);
    out.put_u32(u32::try_from(batch.requests.len()).expect("apply_signed checked the count"));
}

/// A request's record, after the records of the events it applied: who signed it, what, and what
/// became of it.
fn put_request_record(out: &mut Vec<u8>, request: &SignedRequest, outcome: &RequestOutcome) {
    let signer = &request.signer;
    out.put_u64(signer.principal);
    out.put(signer.key_id.0);
    out.put_u128(signer.request_id);
    out.put_u64(signer.deadline);
    out.put(request.body_hash);
    let (tag, code) = match outcome {
        RequestOutcome::Applied(_) => (1, 0),
        RequestOutcome::Repeated(_) => (2, 0),
        RequestOutcome::Refused(refusal) => (3, refusal.code()),
    };
    out.put_u8(tag);
    out.put_u8(code);
    out.put_u32(u32::try_from(outcome.results().len()).expect("a request holds under 2^32 events"));
}

fn put_change_record(out: &mut Vec<u8>, change: &SignedChange) {
    out.put_u8(DIGEST_REGISTRY_CHANGE);
    out.put_u64(change.timestamp);
    out.put_u64(change.log_index);
    out.put_u128(change.signer.change_id);
    out.put_u64(change.signer.deadline);
    out.put(change.body_hash);
    out.put_u32(u32::try_from(change.approvals.len()).expect("approvals fit a log entry"));
    change.approvals.iter().for_each(|approval| out.put_u64(approval.operator));
    match &change.change {
        Ok(body) => body.encode(out),
        Err(_) => out.put_u8(0),
    }
}

/// Where in the log a request is checked.
#[derive(Clone, Copy, Debug)]
struct Position {
    /// The entry's index (a gateway checking before it proposes: `u64::MAX`).
    log_index: u64,
    /// Cluster time.
    timestamp: u64,
}

/// Every check of a signed request, in order: who signed it, its deadline, whether its id was seen,
/// its body, its role. The operation to apply, or the outcome it gets instead (a refusal, or the
/// first outcome of a retry).
fn check_request<'a>(
    registry: &Registry,
    storage: &impl StorageRead,
    request: &'a SignedRequest,
    at: Position,
    check: &dyn SignatureCheck,
) -> Result<&'a Operation, RequestOutcome> {
    let refused = RequestOutcome::Refused;
    let signer = &request.signer;
    authenticate(registry, request, at.log_index, check).map_err(refused)?;
    check_deadline(signer.deadline, at.timestamp).map_err(|problem| {
        refused(match problem {
            DeadlineProblem::Expired { late_nanoseconds } => RequestRefusal::DeadlineExpired { late_nanoseconds },
            DeadlineProblem::TooFar { ahead_nanoseconds } => RequestRefusal::DeadlineTooFar { ahead_nanoseconds },
        })
    })?;
    if let Some(seen) = storage.request_seen_get(signer.principal, signer.request_id) {
        if seen.body_hash == request.body_hash {
            return Err(RequestOutcome::Repeated(seen.results));
        }
        let (principal, request_id) = (signer.principal, signer.request_id);
        return Err(refused(RequestRefusal::RequestIdReused { principal, request_id }));
    }
    let operation =
        request.operation.as_ref().map_err(|detail| refused(RequestRefusal::Malformed { detail: detail.clone() }))?;
    match operation.event_count() {
        0 => return Err(refused(RequestRefusal::Empty)),
        count if count > EVENTS_PER_BATCH_MAX => {
            return Err(refused(RequestRefusal::TooManyEvents { count, max: EVENTS_PER_BATCH_MAX }));
        }
        _ => {}
    }
    let principal = &registry.principals[&signer.principal];
    crate::permission::check(principal, operation, storage).map_err(refused)?;
    Ok(operation)
}

/// The checks a gateway makes before it proposes a signed request: those the ledger makes when it
/// applies it, against `storage` (a committed state) and cluster time `now`. The ledger decides:
/// what passes here may still be refused at apply (a key revoked meanwhile). `Ok` also for a
/// retry of a request already applied, which the gateway proposes so that the ledger answers it.
pub fn precheck(
    registry: &Registry,
    storage: &impl StorageRead,
    request: &SignedRequest,
    now: u64,
    check: &dyn SignatureCheck,
) -> Result<(), RequestRefusal> {
    match check_request(registry, storage, request, Position { log_index: u64::MAX, timestamp: now }, check) {
        Ok(_) | Err(RequestOutcome::Repeated(_)) | Err(RequestOutcome::Applied(_)) => Ok(()),
        Err(RequestOutcome::Refused(refusal)) => Err(refusal),
    }
}
