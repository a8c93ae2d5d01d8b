//! Group commit and the ledger together: a request's results never depend on what it was grouped
//! with.
//!
//! A workload is a sequence of client requests, of accounts or of transfers, whose events carry
//! linked flags at random (so chains close inside a request, or are left open at its end), re-use
//! ids, reference pending transfers, break limits and name unknown accounts. It is applied twice:
//! - alone: every request as a batch of its own, one after another (what the log would hold
//!   without group commit);
//! - grouped: runs of requests of one kind cut at random points, each run joined into one batch by
//!   the leader's own [`join_requests`], as group commit proposes them.
//!
//! Every request must get the same result codes both ways, and the ledgers must end with the same
//! accounts, balances, transfers and pending statuses (timestamps aside: a joined batch stamps its
//! events with other cluster times). Pending transfers never time out here, so that time cannot
//! change a result.
//!
//! The seed comes from `TALLY_SEED` (decimal) or a fixed default and is printed with any failure;
//! `TALLY_PROPERTY_CASES` raises the number of workloads.

use std::ops::ControlFlow;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use tally_node::group_commit::{Events, join_requests};
use tally_state_machine::constants::NANOSECONDS_PER_SECOND;
use tally_state_machine::{
    Account, AccountFlags, Batch, Currency, Decimal, Direction, LedgerQueries, MemoryStorage, NewAccount, NewLedger,
    NewTransfer, Operation, ResultCode, StateMachine, StorageRead, TimestampRange, TransferFlags,
};

const DEFAULT_SEED: u64 = 0x6C0_C0DE_2026_1202;
const DEFAULT_CASES: u32 = 256;
const LEDGER: u32 = 1;
/// Account ids the workload draws from: created by its own account requests, or never (unknown).
const ACCOUNT_IDS: u128 = 8;
/// Transfer ids the workload draws from; drawing the same one twice is a retry or a clash.
const TRANSFER_IDS: u128 = 40;

#[derive(Clone, Debug)]
struct AccountSpec {
    id: u128,
    linked: bool,
    /// 0 none, 1 debits must not exceed credits, 2 credits must not exceed debits.
    limit: u8,
    /// Break the event: an unknown ledger.
    unknown_ledger: bool,
}

#[derive(Clone, Debug)]
enum TransferKind {
    Single,
    Pending,
    Post { pending: u128 },
    Void { pending: u128 },
}

#[derive(Clone, Debug)]
struct TransferSpec {
    id: u128,
    debit: u128,
    credit: u128,
    cents: i64,
    linked: bool,
    kind: TransferKind,
}

#[derive(Clone, Debug)]
enum Request {
    Accounts(Vec<AccountSpec>),
    Transfers(Vec<TransferSpec>),
}

#[derive(Clone, Debug)]
struct Workload {
    requests: Vec<Request>,
    /// Where a run of same-kind requests is cut into another batch: one flag per request.
    cut_before: Vec<bool>,
}

fn account_strategy() -> impl Strategy<Value = AccountSpec> {
    (1..=ACCOUNT_IDS, prop::bool::weighted(0.35), 0u8..3, prop::bool::weighted(0.1))
        .prop_map(|(id, linked, limit, unknown_ledger)| AccountSpec { id, linked, limit, unknown_ledger })
}

fn transfer_strategy() -> impl Strategy<Value = TransferSpec> {
    let kind = prop_oneof![
        5 => Just(TransferKind::Single),
        2 => Just(TransferKind::Pending),
        2 => (1..=TRANSFER_IDS).prop_map(|pending| TransferKind::Post { pending }),
        1 => (1..=TRANSFER_IDS).prop_map(|pending| TransferKind::Void { pending }),
    ];
    (1..=TRANSFER_IDS, 1..=ACCOUNT_IDS + 1, 1..=ACCOUNT_IDS + 1, 1i64..5_000, prop::bool::weighted(0.35), kind)
        .prop_map(|(id, debit, credit, cents, linked, kind)| TransferSpec { id, debit, credit, cents, linked, kind })
}

fn workload_strategy() -> impl Strategy<Value = Workload> {
    let request = prop_oneof![
        1 => prop::collection::vec(account_strategy(), 1..5).prop_map(Request::Accounts),
        3 => prop::collection::vec(transfer_strategy(), 1..7).prop_map(Request::Transfers),
    ];
    prop::collection::vec(request, 1..40).prop_flat_map(|requests| {
        let count = requests.len();
        (Just(requests), prop::collection::vec(prop::bool::weighted(0.3), count))
            .prop_map(|(requests, cut_before)| Workload { requests, cut_before })
    })
}

fn new_account(spec: &AccountSpec) -> NewAccount {
    let mut flags = match spec.limit {
        1 => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        2 => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        _ => AccountFlags::empty(),
    };
    if spec.linked {
        flags |= AccountFlags::LINKED;
    }
    let ledger = if spec.unknown_ledger { 99 } else { LEDGER };
    NewAccount { id: spec.id, ledger, code: 1, flags, ..NewAccount::default() }
}

fn new_transfer(spec: &TransferSpec) -> NewTransfer {
    let mut transfer = NewTransfer {
        id: 1_000 + spec.id,
        debit_account_id: spec.debit,
        credit_account_id: spec.credit,
        amount: Some(Decimal::new(spec.cents, 2)),
        ledger: LEDGER,
        code: 1,
        ..NewTransfer::default()
    };
    let mut flags = TransferFlags::empty();
    match spec.kind {
        TransferKind::Single => {}
        TransferKind::Pending => flags |= TransferFlags::PENDING,
        TransferKind::Post { pending } => {
            flags |= TransferFlags::POST_PENDING_TRANSFER;
            transfer = NewTransfer { id: transfer.id, pending_id: 1_000 + pending, ..NewTransfer::default() };
        }
        TransferKind::Void { pending } => {
            flags |= TransferFlags::VOID_PENDING_TRANSFER;
            transfer = NewTransfer { id: transfer.id, pending_id: 1_000 + pending, ..NewTransfer::default() };
        }
    }
    if spec.linked {
        flags |= TransferFlags::LINKED;
    }
    transfer.flags = flags;
    transfer
}

fn events(request: &Request) -> Events {
    match request {
        Request::Accounts(specs) => Events::Accounts(specs.iter().map(new_account).collect()),
        Request::Transfers(specs) => Events::Transfers(specs.iter().map(new_transfer).collect()),
    }
}

fn same_kind(first: &Request, second: &Request) -> bool {
    matches!(
        (first, second),
        (Request::Accounts(_), Request::Accounts(_)) | (Request::Transfers(_), Request::Transfers(_))
    )
}

type Ledger = StateMachine<MemoryStorage>;

/// A ledger with one currency and a funded bank account that every workload may debit (id 9,
/// outside the ids the workload creates).
fn funded_ledger() -> (Ledger, u64) {
    let mut ledger = Ledger::new();
    let mut clock = 1_700_000_000 * NANOSECONDS_PER_SECOND;
    let setup = [
        Operation::CreateLedgers(vec![NewLedger {
            id: LEDGER,
            currency: Currency(*b"EUR"),
            scale: 2,
            ..Default::default()
        }]),
        Operation::CreateAccounts(vec![NewAccount {
            id: ACCOUNT_IDS + 1,
            ledger: LEDGER,
            code: 1,
            ..Default::default()
        }]),
    ];
    for operation in setup {
        let outcome = ledger.apply(&Batch::new(clock, operation)).expect("setup accepted");
        assert!(outcome.results().iter().all(|code| *code == ResultCode::Ok));
        clock = ledger.timestamp_last() + 1;
    }
    (ledger, clock)
}

/// Applies `batch` and returns its codes, or the reason it was refused.
fn apply(ledger: &mut Ledger, batch: &Batch) -> Result<Vec<ResultCode>, TestCaseError> {
    let outcome = ledger.apply(batch).map_err(|error| TestCaseError::fail(format!("batch refused: {error}")))?;
    Ok(outcome.results().to_vec())
}

/// Every request as its own batch, in order: each request's codes.
fn apply_alone(workload: &Workload) -> Result<(Ledger, Vec<Vec<ResultCode>>), TestCaseError> {
    let (mut ledger, mut clock) = funded_ledger();
    let mut results = Vec::new();
    for request in &workload.requests {
        let batch = join_requests(clock, vec![events(request)]);
        results.push(apply(&mut ledger, &batch)?);
        clock = ledger.timestamp_last() + 1;
    }
    Ok((ledger, results))
}

/// Runs of requests of one kind, cut where the workload says, each joined into one batch.
fn apply_grouped(workload: &Workload) -> Result<(Ledger, Vec<Vec<ResultCode>>, usize), TestCaseError> {
    let (mut ledger, mut clock) = funded_ledger();
    let mut results = Vec::new();
    let mut joined_batches = 0;
    let mut start = 0;
    while start < workload.requests.len() {
        let mut end = start + 1;
        while end < workload.requests.len()
            && !workload.cut_before[end]
            && same_kind(&workload.requests[start], &workload.requests[end])
        {
            end += 1;
        }
        let group = &workload.requests[start..end];
        let batch = join_requests(clock, group.iter().map(events).collect());
        prop_assert_eq!(batch.request_sizes.len(), group.len());
        joined_batches += usize::from(group.len() > 1);
        let codes = apply(&mut ledger, &batch)?;
        let mut offset = 0;
        for size in &batch.request_sizes {
            let size = *size as usize;
            results.push(codes[offset..offset + size].to_vec());
            offset += size;
        }
        clock = ledger.timestamp_last() + 1;
        start = end;
    }
    Ok((ledger, results, joined_batches))
}

/// What a ledger holds, with the timestamps taken out.
fn contents(ledger: &Ledger) -> (Vec<Account>, Vec<String>) {
    let mut accounts = Vec::new();
    ledger.storage().accounts_scan(TimestampRange::ALL, Direction::Ascending, &mut |account| {
        accounts.push(Account { timestamp: 0, ..*account });
        ControlFlow::Continue(())
    });
    accounts.sort_by_key(|account| account.id);
    let ids: Vec<u128> = (1..=TRANSFER_IDS).map(|id| 1_000 + id).collect();
    let transfers = ledger.storage().lookup_transfers(&ids).expect("a small lookup");
    let described = ids
        .iter()
        .zip(transfers)
        .map(|(id, transfer)| {
            let transfer = transfer.map(|transfer| {
                (transfer.debit_account_id, transfer.credit_account_id, transfer.amount, transfer.flags)
            });
            let status = ledger.storage().pending_status(*id).map(|status| std::mem::discriminant(&status));
            format!("{id}: {transfer:?} {status:?}")
        })
        .collect();
    (accounts, described)
}

fn check_workload(workload: &Workload) -> Result<usize, TestCaseError> {
    let (alone, alone_results) = apply_alone(workload)?;
    let (grouped, grouped_results, joined_batches) = apply_grouped(workload)?;
    for (index, (alone, grouped)) in alone_results.iter().zip(&grouped_results).enumerate() {
        prop_assert_eq!(alone, grouped, "request {} got other results when grouped", index);
    }
    prop_assert_eq!(contents(&alone), contents(&grouped), "the ledgers differ");
    Ok(joined_batches)
}

fn seed() -> u64 {
    match std::env::var("TALLY_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("TALLY_SEED must be a decimal u64, not {text:?}")),
        Err(_) => DEFAULT_SEED,
    }
}

#[test]
fn a_request_gets_the_results_it_would_get_alone_whatever_it_is_grouped_with() {
    let seed = seed();
    let cases = std::env::var("TALLY_PROPERTY_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(DEFAULT_CASES);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    eprintln!("group commit property seed {seed} ({cases} workloads); replay with TALLY_SEED={seed}");
    match runner.run(&workload_strategy(), |workload| check_workload(&workload).map(|_| ())) {
        Ok(()) => {}
        Err(TestError::Fail(reason, workload)) => {
            panic!("property failed with TALLY_SEED={seed}: {reason}\nshrunk workload: {workload:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("property run aborted with TALLY_SEED={seed}: {reason}"),
    }
}

/// The workloads must reach what the property is about: joined batches, chains that close inside a
/// request and chains left open at its end, failures inside chains, both kinds of request.
#[test]
fn workloads_join_requests_with_open_chains_and_failures() {
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]));
    let mut seen = std::collections::BTreeSet::new();
    let mut joined_batches = 0;
    for _ in 0..64 {
        let workload = workload_strategy().new_tree(&mut runner).unwrap().current();
        joined_batches += check_workload(&workload).unwrap();
        let (_, results) = apply_alone(&workload).unwrap();
        seen.extend(results.into_iter().flatten());
    }
    assert!(joined_batches > 100, "only {joined_batches} joined batches");
    use ResultCode::*;
    for code in
        [Ok, Exists, LinkedEventFailed, LinkedEventChainOpen, ExceedsCredits, DebitAccountNotFound, LedgerNotFound]
    {
        assert!(seen.contains(&code), "the generator never produced {code}");
    }
}

/// The property has teeth: joining the same requests without their boundaries (what group commit
/// did before requests kept them) changes results.
#[test]
fn without_request_boundaries_an_open_chain_runs_into_the_next_request() {
    let (mut ledger, clock) = funded_ledger();
    let account = |id| NewAccount { id, ledger: LEDGER, code: 1, ..NewAccount::default() };
    apply(&mut ledger, &Batch::new(clock, Operation::CreateAccounts(vec![account(1), account(2)]))).unwrap();
    let linked = |id| NewTransfer {
        id,
        debit_account_id: ACCOUNT_IDS + 1,
        credit_account_id: 1,
        amount: Some(Decimal::new(100, 2)),
        ledger: LEDGER,
        code: 1,
        flags: TransferFlags::LINKED,
        ..NewTransfer::default()
    };
    let single = NewTransfer { id: 3, flags: TransferFlags::empty(), credit_account_id: 2, ..linked(3) };
    let requests = || vec![Events::Transfers(vec![linked(1), linked(2)]), Events::Transfers(vec![single])];
    let mut unbounded = join_requests(ledger.timestamp_last() + 1, requests());
    unbounded.request_sizes = vec![3];
    let mut copy = Ledger::restore_snapshot(MemoryStorage::new(), snapshot(&ledger).as_slice()).unwrap();
    assert_eq!(apply(&mut copy, &unbounded).unwrap(), [ResultCode::Ok; 3], "the open chain swallowed the transfer");
    let joined = join_requests(ledger.timestamp_last() + 1, requests());
    use ResultCode::*;
    assert_eq!(apply(&mut ledger, &joined).unwrap(), [LinkedEventFailed, LinkedEventChainOpen, Ok]);
}

fn snapshot(ledger: &Ledger) -> Vec<u8> {
    let mut bytes = Vec::new();
    ledger.write_snapshot(&mut bytes).expect("a snapshot in memory");
    bytes
}
