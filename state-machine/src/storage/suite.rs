//! The conformance suite every [`Storage`] implementation must pass.
//!
//! Call [`run`] from a test with a function that makes a fresh, empty store. Each check panics
//! with a message naming the contract that broke. The checks keep the trait's contract as the
//! ledger does: rollbacks happen before the writes are flushed, and scans only after a flush. The last check applies a reference workload
//! (linked chains, pending transfers, posts, voids, expiries, history, recorded failures) through
//! a [`StateMachine`] and requires the same results, digest and snapshot bytes as the in-memory
//! store, so a store that loses or reorders anything is caught even where the point checks miss it.

use std::ops::ControlFlow;
use std::str::FromStr;

use rust_decimal::Decimal;

use super::{Direction, Storage, TimestampRange};
use crate::amount::Units;
use crate::batch::BatchError;
use crate::batch::{Batch, Operation};
use crate::currency::Currency;
use crate::flags::{AccountFlags, TransferFlags};
use crate::model::{
    Account, AccountBalance, Ledger, NewAccount, NewLedger, NewTransfer, PendingStatus, StateMeta, Transfer,
    TransferFailure,
};
use crate::registry::{KeyAlgorithm, KeyId, Operator, Permissions, RegisteredKey, Registry, RegistryChange, Role};
use crate::result::ResultCode;
use crate::signed::{
    Approval, ChangeOutcome, ChangeSigner, RequestOutcome, RequestSigner, SeenRequest, SignatureCheck, SignedBatch,
    SignedChange, SignedRequest,
};
use crate::state_machine::StateMachine;

/// Runs every check, each against a fresh store from `new_storage`.
pub fn run<S: Storage>(new_storage: impl Fn() -> S) {
    empty_store_holds_nothing(new_storage());
    ledgers_are_found_by_id_and_scanned_by_time(new_storage());
    accounts_update_scan_and_roll_back(new_storage());
    transfers_are_indexed_by_id_time_and_account(new_storage());
    transfer_rollback_removes_every_index_entry(new_storage());
    failures_pending_statuses_and_expiries(new_storage());
    balance_history_scans_and_rolls_back(new_storage());
    meta_round_trips(new_storage());
    registry_and_seen_requests_round_trip(new_storage());
    ledger_on_this_store_matches_the_reference(new_storage(), new_storage());
    secured_ledger_on_this_store_matches_the_reference(new_storage(), new_storage());
}

fn collect<T: Clone>(scan: impl FnOnce(&mut dyn FnMut(&T) -> ControlFlow<()>)) -> Vec<T> {
    let mut items = Vec::new();
    scan(&mut |item: &T| {
        items.push(item.clone());
        ControlFlow::Continue(())
    });
    items
}

fn range(min: u64, max: u64) -> TimestampRange {
    TimestampRange { min, max }
}

fn ledger(id: u32, timestamp: u64) -> Ledger {
    Ledger { id, currency: Currency(*b"EUR"), scale: 2, user_data_128: 7, user_data_64: 8, user_data_32: 9, timestamp }
}

fn account(id: u128, timestamp: u64) -> Account {
    Account {
        id,
        ledger: 1,
        code: 10,
        flags: AccountFlags::HISTORY,
        user_data_128: id * 3,
        user_data_64: 0,
        user_data_32: 0,
        debits_pending: Units::ZERO,
        debits_posted: Units::ZERO,
        credits_pending: Units::ZERO,
        credits_posted: Units::ZERO,
        timestamp,
    }
}

fn transfer(id: u128, debit: u128, credit: u128, timestamp: u64) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: Units(id * 100),
        pending_id: 0,
        ledger: 1,
        code: 1,
        flags: TransferFlags::empty(),
        timeout_seconds: 0,
        user_data_128: 0,
        user_data_64: 0,
        user_data_32: 0,
        timestamp,
    }
}

fn empty_store_holds_nothing<S: Storage>(storage: S) {
    assert_eq!(storage.meta_get(), StateMeta::default(), "an empty store has zero meta");
    assert!(storage.ledger_get(1).is_none() && storage.account_get(1).is_none() && storage.transfer_get(1).is_none());
    assert!(storage.transfer_failure_get(1).is_none() && storage.pending_status_get(1).is_none());
    assert!(collect(|visit| storage.accounts_scan(TimestampRange::ALL, Direction::Ascending, visit)).is_empty());
    assert!(collect(|visit| storage.expiries_scan(u64::MAX, visit)).is_empty());
    assert!(
        collect(|visit| storage.account_transfers_scan(1, TimestampRange::ALL, Direction::Ascending, visit)).is_empty()
    );
}

fn ledgers_are_found_by_id_and_scanned_by_time<S: Storage>(mut storage: S) {
    for (id, timestamp) in [(30, 10), (10, 20), (20, 30)] {
        storage.ledger_insert(&ledger(id, timestamp));
    }
    assert_eq!(storage.ledger_get(10), Some(ledger(10, 20)), "point reads see unflushed writes");
    storage.flush_writes();
    assert_eq!(storage.ledger_get(10), Some(ledger(10, 20)));
    assert_eq!(storage.ledger_get(11), None);
    let ids = |range, direction| {
        collect(|visit| storage.ledgers_scan(range, direction, visit)).iter().map(|l: &Ledger| l.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(TimestampRange::ALL, Direction::Ascending), [30, 10, 20], "ledgers scan in timestamp order");
    assert_eq!(ids(range(20, 30), Direction::Descending), [20, 10], "ledger scan honours range and direction");
    assert_eq!(ids(range(11, 19), Direction::Ascending), Vec::<u32>::new());
}

fn accounts_update_scan_and_roll_back<S: Storage>(mut storage: S) {
    for (id, timestamp) in [(5, 100), (3, 101), (9, 102)] {
        storage.account_insert(&account(id, timestamp));
    }
    let mut updated = account(3, 101);
    updated.credits_posted = Units(42);
    updated.flags.insert(AccountFlags::CLOSED);
    storage.account_update(&updated);
    assert_eq!(storage.account_get(3), Some(updated), "an update replaces balances and flags");
    storage.account_rollback_insert(&account(9, 102));
    assert_eq!(storage.account_get(9), None, "a rolled-back account is gone");
    storage.flush_writes();
    assert_eq!(storage.account_get(3), Some(updated), "the update survives the flush");
    let ids = |storage: &S, range, direction| {
        collect(|visit| storage.accounts_scan(range, direction, visit))
            .iter()
            .map(|a: &Account| a.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&storage, TimestampRange::ALL, Direction::Ascending),
        [5, 3],
        "a rolled-back account is not scanned"
    );
    assert_eq!(ids(&storage, range(101, 500), Direction::Descending), [3]);
    let mut first = Vec::new();
    storage.accounts_scan(TimestampRange::ALL, Direction::Ascending, &mut |account| {
        first.push(account.id);
        ControlFlow::Break(())
    });
    assert_eq!(first, [5], "a scan stops when the visitor breaks");
    // An account updated again after a flush keeps its latest value.
    updated.debits_posted = Units(7);
    storage.account_update(&updated);
    storage.flush_writes();
    assert_eq!(storage.account_get(3), Some(updated));
}

fn transfers_are_indexed_by_id_time_and_account<S: Storage>(mut storage: S) {
    for (id, timestamp) in [(1, 10), (2, 11), (3, 12)] {
        storage.account_insert(&account(id, timestamp));
    }
    let transfers = [transfer(7, 1, 2, 20), transfer(8, 2, 3, 21), transfer(9, 3, 1, 22), transfer(10, 1, 2, 23)];
    transfers.iter().for_each(|t| storage.transfer_insert(t));
    assert_eq!(storage.transfer_get(9), Some(transfers[2]), "point reads see unflushed writes");
    storage.flush_writes();
    assert_eq!(storage.transfer_get(9), Some(transfers[2]));
    assert_eq!(storage.transfer_get(11), None);
    let ids = |transfers: Vec<Transfer>| transfers.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(collect(|v| storage.transfers_scan(range(21, 22), Direction::Ascending, v))), [8, 9]);
    assert_eq!(
        ids(collect(|v| storage.account_transfers_scan(1, TimestampRange::ALL, Direction::Ascending, v))),
        [7, 9, 10],
        "both sides of an account are indexed"
    );
    assert_eq!(ids(collect(|v| storage.account_transfers_scan(2, range(0, 22), Direction::Descending, v))), [8, 7]);
    assert_eq!(
        ids(collect(|v| storage.account_transfers_scan(4, TimestampRange::ALL, Direction::Ascending, v))),
        Vec::<u128>::new()
    );
}

fn transfer_rollback_removes_every_index_entry<S: Storage>(mut storage: S) {
    storage.account_insert(&account(1, 1));
    storage.account_insert(&account(2, 2));
    let kept = transfer(5, 1, 2, 3);
    let undone = transfer(6, 2, 1, 4);
    storage.transfer_insert(&kept);
    storage.transfer_insert(&undone);
    storage.transfer_rollback_insert(&undone);
    assert_eq!(storage.transfer_get(6), None, "a rolled-back transfer is gone by id");
    storage.flush_writes();
    assert_eq!(storage.transfer_get(6), None);
    for account_id in [1, 2] {
        let found = collect(|visit| {
            storage.account_transfers_scan(account_id, TimestampRange::ALL, Direction::Ascending, visit)
        });
        assert_eq!(found, [kept], "a rolled-back transfer is gone from account {account_id}'s index");
    }
    assert_eq!(collect(|visit| storage.transfers_scan(TimestampRange::ALL, Direction::Descending, visit)), [kept]);
    // The id can be used again afterwards.
    storage.transfer_insert(&transfer(6, 1, 2, 5));
    storage.flush_writes();
    assert_eq!(storage.transfer_get(6).map(|t| t.timestamp), Some(5));
}

fn failures_pending_statuses_and_expiries<S: Storage>(mut storage: S) {
    let failures = [
        TransferFailure { id: 9, code: ResultCode::ExceedsCredits, timestamp: 5 },
        TransferFailure { id: 4, code: ResultCode::DebitAccountNotFound, timestamp: 6 },
    ];
    failures.iter().for_each(|failure| storage.transfer_failure_insert(failure));
    assert_eq!(storage.transfer_failure_get(4), Some(failures[1]), "point reads see unflushed writes");

    storage.pending_status_put(3, PendingStatus::Pending);
    storage.pending_status_put(3, PendingStatus::Posted { timestamp: 8 });
    assert_eq!(storage.pending_status_get(3), Some(PendingStatus::Posted { timestamp: 8 }));
    storage.pending_status_put(4, PendingStatus::Pending);
    storage.pending_status_remove(4);
    assert_eq!(storage.pending_status_get(4), None, "a removed status is gone before a flush");

    for (expires_at, id) in [(50, 2), (40, 9), (50, 1), (60, 3), (70, 4)] {
        storage.expiry_insert(expires_at, id);
    }
    storage.expiry_remove(70, 4);
    storage.flush_writes();
    assert_eq!(storage.transfer_failure_get(4), Some(failures[1]));
    assert_eq!(collect(|visit| storage.transfer_failures_scan(visit)), failures, "failures scan in the order recorded");
    assert_eq!(storage.pending_status_get(3), Some(PendingStatus::Posted { timestamp: 8 }));
    assert_eq!(storage.pending_status_get(4), None);
    assert_eq!(
        collect(|visit| storage.expiries_scan(50, visit)),
        [(40, 9), (50, 1), (50, 2)],
        "expiries ascend by deadline, then id, up to the bound"
    );
    // Removing a flushed expiry and putting it back within one batch leaves it indexed.
    storage.expiry_remove(50, 1);
    storage.expiry_remove(60, 3);
    storage.expiry_insert(60, 3);
    storage.pending_status_remove(3);
    storage.flush_writes();
    assert_eq!(collect(|visit| storage.expiries_scan(u64::MAX, visit)), [(40, 9), (50, 2), (60, 3)]);
    assert_eq!(storage.pending_status_get(3), None, "a flushed status can be removed");
}

fn balance_history_scans_and_rolls_back<S: Storage>(mut storage: S) {
    storage.account_insert(&account(1, 1));
    let balances: Vec<_> = (0..4u8)
        .map(|index| AccountBalance {
            timestamp: 10 + u64::from(index),
            credits_posted: Units(u128::from(index)),
            ..AccountBalance::default()
        })
        .collect();
    balances.iter().for_each(|balance| storage.account_balance_insert(1, balance));
    storage.account_balance_rollback_insert(1, &balances[3]);
    storage.flush_writes();
    let scanned = collect(|visit| storage.account_balances_scan(1, range(11, 12), Direction::Descending, visit));
    assert_eq!(scanned, [balances[2], balances[1]]);
    assert_eq!(
        collect(|visit| storage.account_balances_scan(1, TimestampRange::ALL, Direction::Ascending, visit)),
        balances[..3]
    );
}

fn meta_round_trips<S: Storage>(mut storage: S) {
    let meta = StateMeta { timestamp_last: 77, batches_applied: 3, digest: [5; 32] };
    storage.meta_put(&meta);
    assert_eq!(storage.meta_get(), meta);
}

fn registry_and_seen_requests_round_trip<S: Storage>(mut storage: S) {
    assert_eq!(storage.registry_get(), None);
    let registry = secured_genesis();
    storage.registry_put(&registry);
    assert_eq!(storage.registry_get(), Some(registry));
    let seen = |principal: u64, request_id: u128, deadline: u64| SeenRequest {
        principal,
        request_id,
        deadline,
        body_hash: [u8::try_from(principal).expect("small test ids"); 32],
        results: vec![ResultCode::Ok, ResultCode::Exists],
    };
    let requests = [seen(9, 1, 500), seen(9, 2, 300), seen(4, 7, 300), seen(0, 3, 900)];
    for request in &requests {
        storage.request_seen_insert(request);
    }
    let meta = StateMeta { timestamp_last: 1, batches_applied: 1, digest: [1; 32] };
    storage.meta_put(&meta);
    storage.flush_writes();
    for request in &requests {
        assert_eq!(storage.request_seen_get(request.principal, request.request_id).as_ref(), Some(request));
    }
    assert_eq!(storage.request_seen_get(9, 3), None);
    assert_eq!(storage.request_seen_get(4, 1), None, "ids are per principal");
    let due = collect(|visit| storage.requests_seen_due_scan(500, visit));
    assert_eq!(due, vec![(300, 4, 7), (300, 9, 2), (500, 9, 1)], "due requests in (deadline, principal, id) order");
    storage.request_seen_remove((300, 9, 2));
    storage.meta_put(&StateMeta { batches_applied: 2, ..meta });
    storage.flush_writes();
    assert_eq!(storage.request_seen_get(9, 2), None);
    assert_eq!(collect(|visit| storage.requests_seen_due_scan(u64::MAX, visit)).len(), 3);
}

/// A stand-in for ML-DSA in tests of the state machine and its stores: a "signature" is a keyed
/// blake3 hash of the signed fields under the public key, so anyone holding the public key can
/// make one. Deterministic, as every [`SignatureCheck`] must be; for tests only.
#[derive(Clone, Copy, Debug, Default)]
pub struct HashSignatures;

impl HashSignatures {
    pub fn key_id_of(algorithm: KeyAlgorithm, public_key: &[u8]) -> KeyId {
        let hash = blake3::hash(&[&[algorithm as u8][..], public_key].concat());
        KeyId(hash.as_bytes()[..16].try_into().expect("16 of 32 bytes"))
    }

    fn hash(public_key: &[u8], fields: &[&[u8]]) -> Vec<u8> {
        let mut hasher = blake3::Hasher::new_derive_key("tally state-machine test signatures");
        hasher.update(public_key);
        fields.iter().for_each(|field| {
            hasher.update(field);
        });
        hasher.finalize().as_bytes().to_vec()
    }

    pub fn sign_request(
        cluster: &[u8; 16],
        public_key: &[u8],
        signer: &RequestSigner,
        body_hash: &[u8; 32],
    ) -> Vec<u8> {
        let fields: [&[u8]; 6] = [
            cluster,
            &signer.principal.to_le_bytes(),
            &signer.key_id.0,
            &signer.request_id.to_le_bytes(),
            &signer.deadline.to_le_bytes(),
            body_hash,
        ];
        HashSignatures::hash(public_key, &fields)
    }

    pub fn approve(cluster: &[u8; 16], public_key: &[u8], signer: &ChangeSigner, body_hash: &[u8; 32]) -> Vec<u8> {
        let fields: [&[u8]; 4] = [cluster, &signer.change_id.to_le_bytes(), &signer.deadline.to_le_bytes(), body_hash];
        HashSignatures::hash(public_key, &fields)
    }
}

impl SignatureCheck for HashSignatures {
    fn key_id(&self, algorithm: KeyAlgorithm, public_key: &[u8]) -> Option<KeyId> {
        (!public_key.is_empty()).then(|| HashSignatures::key_id_of(algorithm, public_key))
    }

    fn request_signed(
        &self,
        cluster: &[u8; 16],
        key: &RegisteredKey,
        signer: &RequestSigner,
        body_hash: &[u8; 32],
        signature: &[u8],
    ) -> bool {
        HashSignatures::sign_request(cluster, &key.public_key, signer, body_hash) == signature
    }

    fn change_approved(
        &self,
        cluster: &[u8; 16],
        operator: &Operator,
        signer: &ChangeSigner,
        body_hash: &[u8; 32],
        signature: &[u8],
    ) -> bool {
        HashSignatures::approve(cluster, &operator.public_key, signer, body_hash) == signature
    }
}

/// The cluster of [`secured_genesis`].
pub const SECURED_CLUSTER: [u8; 16] = [0x7a; 16];

/// The public key of operator `id` in [`secured_genesis`], and of principal `id` under
/// [`HashSignatures`] (any bytes will do for them).
pub fn test_public_key(id: u64, generation: u8) -> Vec<u8> {
    [&id.to_le_bytes()[..], &[generation; 24]].concat()
}

/// A genesis registry of two operators (1 and 2), both of whom must approve a change.
pub fn secured_genesis() -> Registry {
    let operator = |id: u64| {
        let public_key = test_public_key(id, 87);
        Operator { id, key_id: HashSignatures::key_id_of(KeyAlgorithm::MlDsa87, &public_key), public_key }
    };
    Registry::genesis(SECURED_CLUSTER, vec![operator(1), operator(2)], 2)
}

/// A registry change approved by operators `approvers` of [`secured_genesis`], its body "hashed"
/// as its canonical encoding.
pub fn approved_change(
    timestamp: u64,
    log_index: u64,
    change_id: u128,
    change: RegistryChange,
    approvers: &[u64],
) -> SignedChange {
    let mut body = Vec::new();
    change.encode(&mut body);
    let body_hash = *blake3::hash(&body).as_bytes();
    let signer = ChangeSigner { change_id, deadline: timestamp + 60 * crate::constants::NANOSECONDS_PER_SECOND };
    let approvals = approvers
        .iter()
        .map(|&operator| Approval {
            operator,
            signature: HashSignatures::approve(&SECURED_CLUSTER, &test_public_key(operator, 87), &signer, &body_hash),
        })
        .collect();
    SignedChange { timestamp, log_index, signer, body_hash, approvals, change: Ok(change) }
}

/// A request of `principal`, signed with its key of `generation`, valid until `deadline`; its
/// body "hash" is the hash of its request id and `body`, so two requests with the same id and
/// body are retries of one another.
pub fn signed_request(
    principal: u64,
    generation: u8,
    request_id: u128,
    deadline: u64,
    operation: Operation,
    body: u8,
) -> SignedRequest {
    let public_key = test_public_key(principal, generation);
    let signer = RequestSigner {
        principal,
        key_id: HashSignatures::key_id_of(KeyAlgorithm::MlDsa65, &public_key),
        request_id,
        deadline,
    };
    let body_hash = *blake3::hash(&[&request_id.to_le_bytes()[..], &[body]].concat()).as_bytes();
    let signature = HashSignatures::sign_request(&SECURED_CLUSTER, &public_key, &signer, &body_hash);
    SignedRequest { signer, body_hash, signature, operation: Ok(operation) }
}

/// The registry change that registers `principal` with its key of generation 1 and `role`.
pub fn register_principal(principal: u64, role: Role) -> RegistryChange {
    RegistryChange::RegisterPrincipal {
        principal,
        role,
        algorithm: KeyAlgorithm::MlDsa65,
        public_key: test_public_key(principal, 1),
    }
}

fn secured_ledger_on_this_store_matches_the_reference<S: Storage>(storage: S, restore_target: S) {
    let mut reference = StateMachine::new().with_genesis(secured_genesis());
    let mut subject = StateMachine::open(storage).with_genesis(secured_genesis());
    let everything = Role { permissions: Permissions::all(), ..Role::default() };
    let register = approved_change(500, 2, 1, register_principal(9, everything), &[1, 2]);
    assert_eq!(reference.apply_change(&register, &HashSignatures), Ok(ChangeOutcome::Applied));
    assert_eq!(subject.apply_change(&register, &HashSignatures), Ok(ChangeOutcome::Applied));
    for (index, batch) in reference_batches().into_iter().enumerate() {
        let log_index = 3 + index as u64;
        let expected = apply_secured_entry(&mut reference, &batch, log_index);
        assert_eq!(apply_secured_entry(&mut subject, &batch, log_index), expected, "entry {log_index} differs");
        assert_eq!(subject.digest(), reference.digest(), "digest differs after entry {log_index}");
    }
    let restored = assert_snapshots_agree(&reference, &subject, restore_target);
    assert_eq!(restored.registry(), reference.registry(), "the registry survives a snapshot");
}

/// The subject writes the reference's snapshot, byte for byte, and a ledger restored from it into
/// `restore_target` writes it again; returns the restored ledger.
fn assert_snapshots_agree<S: Storage>(
    reference: &StateMachine<crate::storage::memory::MemoryStorage>,
    subject: &StateMachine<S>,
    restore_target: S,
) -> StateMachine<S> {
    let reference_bytes = snapshot_bytes(reference);
    assert_eq!(snapshot_bytes(subject), reference_bytes, "snapshots differ");
    let restored = StateMachine::restore_snapshot(restore_target, reference_bytes.as_slice()).expect("restore");
    assert_eq!(snapshot_bytes(&restored), reference_bytes, "a restored store writes the same snapshot");
    restored
}

fn snapshot_bytes<S: Storage>(ledger: &StateMachine<S>) -> Vec<u8> {
    let mut bytes = Vec::new();
    ledger.write_snapshot(&mut bytes).expect("a snapshot in memory");
    bytes
}

/// Applies a reference batch to a secured ledger: an expiry as it is, any other as a signed request
/// of principal 9 followed by its retry (which must get the first outcome).
fn apply_secured_entry<S: Storage>(
    machine: &mut StateMachine<S>,
    batch: &Batch,
    log_index: u64,
) -> Result<String, BatchError> {
    let second = crate::constants::NANOSECONDS_PER_SECOND;
    if let Operation::ExpirePendingTransfers = batch.operation {
        return machine.apply(batch).map(|outcome| format!("{outcome:?}"));
    }
    let request = signed_request(9, 1, log_index.into(), batch.timestamp + 2 * second, batch.operation.clone(), 0);
    let signed = SignedBatch { timestamp: batch.timestamp, log_index, requests: vec![request.clone(), request] };
    let outcomes = machine.apply_signed(&signed, &HashSignatures)?;
    match &outcomes[..] {
        [RequestOutcome::Applied(first), RequestOutcome::Repeated(again)] => assert_eq!(first, again),
        other => panic!("a signed request and its retry gave {other:?}"),
    }
    Ok(format!("{outcomes:?}"))
}

fn ledger_on_this_store_matches_the_reference<S: Storage>(storage: S, restore_target: S) {
    let mut reference = StateMachine::new();
    let mut subject = StateMachine::open(storage);
    for batch in reference_batches() {
        let expected = reference.apply(&batch);
        assert_eq!(subject.apply(&batch), expected, "batch at {} gives different results", batch.timestamp);
        assert_eq!(subject.digest(), reference.digest(), "digest differs after batch at {}", batch.timestamp);
    }
    let restored = assert_snapshots_agree(&reference, &subject, restore_target);
    assert_eq!(restored.digest(), reference.digest());
}

/// A short workload that touches every kind of write the ledger makes.
pub fn reference_batches() -> Vec<Batch> {
    let amount = |text: &str| Some(Decimal::from_str(text).expect("literal"));
    let second = crate::constants::NANOSECONDS_PER_SECOND;
    let ledgers = vec![
        NewLedger { id: 1, currency: Currency(*b"USD"), scale: 2, ..NewLedger::default() },
        NewLedger { id: 2, currency: Currency(*b"JPY"), scale: 0, ..NewLedger::default() },
    ];
    let account = |id: u128, ledger: u32, flags: AccountFlags| NewAccount {
        id,
        ledger,
        code: 100,
        flags,
        ..NewAccount::default()
    };
    let accounts = vec![
        account(1, 1, AccountFlags::HISTORY),
        account(2, 1, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::HISTORY | AccountFlags::LINKED),
        account(3, 1, AccountFlags::empty()),
        account(4, 2, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
        account(5, 2, AccountFlags::empty()),
    ];
    let transfer = |id: u128, debit: u128, credit: u128, value: &str, flags: TransferFlags| NewTransfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: amount(value),
        ledger: 1,
        code: 7,
        flags,
        ..NewTransfer::default()
    };
    let resolve = |id: u128, pending_id: u128, value: Option<&str>, flags: TransferFlags| NewTransfer {
        id,
        pending_id,
        amount: value.and_then(amount),
        flags,
        ..NewTransfer::default()
    };
    let transfers = vec![
        transfer(10, 1, 2, "100.00", TransferFlags::empty()),
        transfer(11, 2, 3, "30.5", TransferFlags::LINKED),
        transfer(12, 2, 3, "500", TransferFlags::empty()), // exceeds_credits: the chain fails
        transfer(13, 2, 3, "140", TransferFlags::empty()), // exceeds_credits, recorded as failed
        NewTransfer { timeout_seconds: 2, ..transfer(14, 2, 3, "20", TransferFlags::PENDING) },
        transfer(15, 2, 3, "20", TransferFlags::PENDING),
        transfer(16, 2, 1, "1000", TransferFlags::BALANCING_DEBIT),
        NewTransfer { ledger: 2, ..transfer(17, 4, 5, "7", TransferFlags::empty()) },
        transfer(18, 1, 3, "1", TransferFlags::PENDING | TransferFlags::CLOSING_CREDIT),
    ];
    let resolutions = vec![
        resolve(20, 15, Some("5.25"), TransferFlags::POST_PENDING_TRANSFER),
        resolve(21, 18, None, TransferFlags::VOID_PENDING_TRANSFER),
        resolve(22, 14, None, TransferFlags::POST_PENDING_TRANSFER), // expired by then
        transfer(13, 2, 3, "140", TransferFlags::empty()),           // id_already_failed
        transfer(10, 1, 2, "100.00", TransferFlags::empty()),        // exists
    ];
    vec![
        Batch::new(1_000, Operation::CreateLedgers(ledgers)),
        Batch::new(2_000, Operation::CreateAccounts(accounts)),
        Batch::new(3_000, Operation::CreateTransfers(transfers)),
        Batch::new(3_000 + 3 * second, Operation::ExpirePendingTransfers),
        Batch::new(4_000 + 3 * second, Operation::CreateTransfers(resolutions)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchOutcome;
    use crate::storage::memory::MemoryStorage;

    #[test]
    fn memory_storage_passes_the_suite() {
        run(MemoryStorage::new);
    }

    /// The reference workload must exercise what it claims to, or the suite's last check is weak.
    #[test]
    fn reference_workload_covers_chains_pending_and_expiry() {
        let mut ledger = StateMachine::new();
        let outcomes: Vec<_> = reference_batches().iter().map(|batch| ledger.apply(batch).unwrap()).collect();
        use ResultCode::*;
        assert_eq!(outcomes[2].results(), [Ok, LinkedEventFailed, ExceedsCredits, ExceedsCredits, Ok, Ok, Ok, Ok, Ok]);
        assert_eq!(outcomes[3], BatchOutcome::Expired(vec![14]));
        assert_eq!(outcomes[4].results(), [Ok, Ok, PendingTransferExpired, IdAlreadyFailed, Exists]);
    }
}
