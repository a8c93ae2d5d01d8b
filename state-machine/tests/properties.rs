//! Property tests over random workloads (proptest, seeded).
//!
//! A workload is a list of steps: batches of transfers that mix valid and invalid events, linked
//! chains, pending transfers with and without timeouts, posts, voids, balancing and closing flags
//! and re-used ids; expiry batches; and jumps of the clock. After every step we check:
//! - per ledger, the sums of `debits_posted` and `credits_posted` are equal, and likewise pending;
//! - no account breaks its balance-limit flag;
//! - a second state machine fed the same batches gives the same results and digest;
//!
//! and at the end:
//! - a snapshot taken at a random step, restored and fed the remaining steps, ends with the same digest;
//! - re-submitting every transfer batch changes no balance and applies no event.
//!
//! The seed comes from `TALLY_SEED` (decimal) or a fixed default, and is printed with any
//! failure together with the shrunk workload: `TALLY_SEED=<seed> cargo test --test properties`
//! replays it. `TALLY_PROPERTY_CASES` raises the number of workloads for longer explorations.

mod support;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use rust_decimal::Decimal;
use tally_state_machine::constants::NANOSECONDS_PER_SECOND;
use tally_state_machine::{
    AccountFlags, Batch, Currency, Direction, MemoryStorage, NewAccount, NewLedger, NewTransfer, Operation, ResultCode,
    StateMachine, StorageRead, TimestampRange, TransferFlags,
};

const DEFAULT_SEED: u64 = 0x7A11_7A11_2026_1122;
const DEFAULT_CASES: u32 = 256;

/// Accounts of the workload: (id, ledger, flags). Index into this table from the generated events.
const ACCOUNTS: [(u128, u32, AccountFlags); 9] = [
    (100, 1, AccountFlags::empty()),                        // USD bank
    (101, 1, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS), // USD customer
    (102, 1, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS.union(AccountFlags::HISTORY)),
    (103, 1, AccountFlags::HISTORY),                        // USD merchant
    (104, 1, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS), // USD loan
    (200, 2, AccountFlags::empty()),                        // JPY bank
    (201, 2, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
    (202, 2, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
    (203, 2, AccountFlags::HISTORY),
];
const SCALES: [u32; 3] = [0, 2, 0]; // by ledger id

#[derive(Clone, Debug)]
enum Kind {
    Single,
    Pending { timeout_seconds: u32 },
    Post { pending: u8, partial: bool },
    Void { pending: u8 },
}

#[derive(Clone, Debug)]
struct EventSpec {
    kind: Kind,
    debit: u8,
    credit: u8,
    minor_units: u64,
    linked: bool,
    /// Bits: 1 balancing debit, 2 balancing credit, 4 closing debit, 8 closing credit.
    modifiers: u8,
    /// Re-use the id of an earlier event instead of a fresh one.
    reuse_id: Option<u8>,
    /// Break one field: 1 zero amount, 2 same accounts, 3 unknown account, 4 extra decimals,
    /// 5 ledger of the other currency.
    corruption: u8,
}

#[derive(Clone, Debug)]
enum Step {
    Transfers(Vec<EventSpec>),
    /// A client retrying an earlier transfer batch, verbatim.
    Retry(u8),
    Expire,
    AdvanceSeconds(u8),
}

#[derive(Clone, Debug)]
struct Workload {
    steps: Vec<Step>,
    /// Which batch to snapshot after (an index into all batches, setup included).
    snapshot_after: prop::sample::Index,
}

fn event_strategy() -> impl Strategy<Value = EventSpec> {
    let kind = prop_oneof![
        5 => Just(Kind::Single),
        3 => prop_oneof![Just(0u32), 1u32..4].prop_map(|timeout_seconds| Kind::Pending { timeout_seconds }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(pending, partial)| Kind::Post { pending, partial }),
        1 => any::<u8>().prop_map(|pending| Kind::Void { pending }),
    ];
    (
        kind,
        0u8..9,
        0u8..9,
        prop_oneof![1u64..2_000, 1u64..200_000],
        prop::bool::weighted(0.25),
        prop_oneof![6 => Just(0u8), 1 => 0u8..16],
        prop::option::weighted(0.1, any::<u8>()),
        prop_oneof![12 => Just(0u8), 1 => 1u8..6],
    )
        .prop_map(|(kind, debit, credit, minor_units, linked, modifiers, reuse_id, corruption)| EventSpec {
            kind,
            debit,
            credit,
            minor_units,
            linked,
            modifiers,
            reuse_id,
            corruption,
        })
}

fn workload_strategy() -> impl Strategy<Value = Workload> {
    let step = prop_oneof![
        6 => prop::collection::vec(event_strategy(), 1..40).prop_map(Step::Transfers),
        1 => any::<u8>().prop_map(Step::Retry),
        1 => Just(Step::Expire),
        2 => (0u8..3).prop_map(Step::AdvanceSeconds),
    ];
    (prop::collection::vec(step, 1..16), any::<prop::sample::Index>())
        .prop_map(|(steps, snapshot_after)| Workload { steps, snapshot_after })
}

/// Turns event specs into transfers, remembering ids so later events can reference them.
#[derive(Default)]
struct EventBuilder {
    next_id: u128,
    used_ids: Vec<u128>,
    pending_ids: Vec<u128>,
}

impl EventBuilder {
    fn build(&mut self, spec: &EventSpec) -> NewTransfer {
        let id = match spec.reuse_id {
            Some(index) if !self.used_ids.is_empty() => self.used_ids[index as usize % self.used_ids.len()],
            _ => {
                self.next_id += 1;
                self.next_id
            }
        };
        self.used_ids.push(id);
        let (debit, ledger, _) = ACCOUNTS[spec.debit as usize];
        let (mut credit, _, _) = ACCOUNTS[spec.credit as usize];
        if credit == debit {
            credit = ACCOUNTS[(spec.credit as usize + 1) % ACCOUNTS.len()].0;
        }
        let scale = SCALES[ledger as usize];
        let mut amount = Decimal::new(i64::try_from(spec.minor_units).unwrap(), scale);
        let mut transfer = NewTransfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: Some(amount),
            ledger,
            code: 1,
            ..NewTransfer::default()
        };
        let mut flags = TransferFlags::empty();
        if spec.linked {
            flags |= TransferFlags::LINKED;
        }
        let reference = |index: u8, ids: &[u128]| {
            if ids.is_empty() { 999_999 } else { ids[index as usize % ids.len()] }
        };
        match spec.kind {
            Kind::Single => {}
            Kind::Pending { timeout_seconds } => {
                flags |= TransferFlags::PENDING;
                transfer.timeout_seconds = timeout_seconds;
                self.pending_ids.push(id);
            }
            Kind::Post { pending, partial } => {
                flags |= TransferFlags::POST_PENDING_TRANSFER;
                transfer =
                    NewTransfer { id, pending_id: reference(pending, &self.pending_ids), ..NewTransfer::default() };
                transfer.amount = partial.then(|| Decimal::new(1, 0));
            }
            Kind::Void { pending } => {
                flags |= TransferFlags::VOID_PENDING_TRANSFER;
                transfer =
                    NewTransfer { id, pending_id: reference(pending, &self.pending_ids), ..NewTransfer::default() };
                transfer.amount = None;
            }
        }
        if spec.modifiers & 1 != 0 {
            flags |= TransferFlags::BALANCING_DEBIT;
        }
        if spec.modifiers & 2 != 0 {
            flags |= TransferFlags::BALANCING_CREDIT;
        }
        if spec.modifiers & 4 != 0 {
            flags |= TransferFlags::CLOSING_DEBIT;
        }
        if spec.modifiers & 8 != 0 {
            flags |= TransferFlags::CLOSING_CREDIT;
        }
        transfer.flags = flags;
        match spec.corruption {
            1 => transfer.amount = Some(Decimal::ZERO),
            2 => transfer.credit_account_id = transfer.debit_account_id,
            3 => transfer.debit_account_id = 77_777,
            4 => {
                amount.set_scale(scale + 3).unwrap();
                transfer.amount = Some(amount + Decimal::new(1, scale + 3));
            }
            5 => transfer.ledger = 3 - transfer.ledger.max(1),
            _ => {}
        }
        transfer
    }
}

/// The ledger every workload starts from: two ledgers, the accounts above, and some funding.
fn setup_batches() -> Vec<Batch> {
    let ledgers = vec![
        NewLedger { id: 1, currency: Currency(*b"USD"), scale: 2, ..NewLedger::default() },
        NewLedger { id: 2, currency: Currency(*b"JPY"), scale: 0, ..NewLedger::default() },
    ];
    let accounts = ACCOUNTS
        .iter()
        .map(|(id, ledger, flags)| NewAccount {
            id: *id,
            ledger: *ledger,
            code: 1,
            flags: *flags,
            ..NewAccount::default()
        })
        .collect();
    let fund = |id: u128, debit: u128, credit: u128, ledger: u32, amount: i64| NewTransfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: Some(Decimal::new(amount, 0)),
        ledger,
        code: 1,
        ..NewTransfer::default()
    };
    let funding = vec![
        fund(1_000_001, 100, 101, 1, 5_000),
        fund(1_000_002, 100, 102, 1, 5_000),
        fund(1_000_003, 104, 100, 1, 2_000),
        fund(1_000_004, 200, 201, 2, 500_000),
        fund(1_000_005, 202, 200, 2, 300_000),
    ];
    let start = 1_700_000_000 * NANOSECONDS_PER_SECOND;
    vec![
        Batch::new(start, Operation::CreateLedgers(ledgers)),
        Batch::new(start + 1_000, Operation::CreateAccounts(accounts)),
        Batch::new(start + 2_000, Operation::CreateTransfers(funding)),
    ]
}

/// The workload as concrete batches with timestamps.
fn batches(workload: &Workload) -> Vec<Batch> {
    let mut builder = EventBuilder::default();
    let mut result = setup_batches();
    let mut clock = result.last().unwrap().timestamp + 1_000_000;
    let mut sent: Vec<Vec<NewTransfer>> = Vec::new();
    for step in &workload.steps {
        let events = match step {
            Step::Transfers(specs) => Some(specs.iter().map(|spec| builder.build(spec)).collect::<Vec<_>>()),
            Step::Retry(index) if !sent.is_empty() => Some(sent[*index as usize % sent.len()].clone()),
            _ => None,
        };
        if let Some(events) = events {
            let count = events.len() as u64;
            sent.push(events.clone());
            result.push(Batch::new(clock, Operation::CreateTransfers(events)));
            clock += count + 1_000_000;
            continue;
        }
        match step {
            Step::Transfers(_) | Step::Retry(_) => {}
            Step::Expire => {
                result.push(Batch::new(clock, Operation::ExpirePendingTransfers));
                clock += tally_state_machine::constants::EXPIRIES_PER_BATCH_MAX as u64 + 1_000_000;
            }
            Step::AdvanceSeconds(seconds) => clock += u64::from(*seconds) * NANOSECONDS_PER_SECOND,
        }
    }
    result
}

type Ledger = StateMachine<MemoryStorage>;

fn accounts(ledger: &Ledger) -> Vec<tally_state_machine::Account> {
    let mut accounts = Vec::new();
    ledger.storage().accounts_scan(TimestampRange::ALL, Direction::Ascending, &mut |account| {
        accounts.push(*account);
        ControlFlow::Continue(())
    });
    accounts
}

fn check_invariants(ledger: &Ledger, context: &str) -> Result<(), TestCaseError> {
    let mut sums: BTreeMap<u32, [u128; 4]> = BTreeMap::new();
    for account in accounts(ledger) {
        prop_assert!(account.within_limits(), "{context}: account {} breaks its limit: {account:?}", account.id);
        let sum = sums.entry(account.ledger).or_default();
        sum[0] += account.debits_pending.0;
        sum[1] += account.debits_posted.0;
        sum[2] += account.credits_pending.0;
        sum[3] += account.credits_posted.0;
    }
    for (ledger_id, [debits_pending, debits_posted, credits_pending, credits_posted]) in sums {
        prop_assert_eq!(debits_posted, credits_posted, "{}: ledger {} posted sums differ", context, ledger_id);
        prop_assert_eq!(debits_pending, credits_pending, "{}: ledger {} pending sums differ", context, ledger_id);
    }
    Ok(())
}

fn check_workload(workload: &Workload) -> Result<(), TestCaseError> {
    let batches = batches(workload);
    let setup = setup_batches().len();
    let mut first = Ledger::new();
    let mut second = Ledger::new();
    let mut snapshot = None;
    for (index, batch) in batches.iter().enumerate() {
        let outcome = first.apply(batch);
        prop_assert!(outcome.is_ok(), "batch {index} refused: {outcome:?}");
        prop_assert_eq!(&second.apply(batch), &outcome, "batch {} gives different results on a second replica", index);
        prop_assert_eq!(first.digest(), second.digest(), "digests differ after batch {}", index);
        check_invariants(&first, &format!("after batch {index}"))?;
        if index == workload.snapshot_after.index(batches.len()) {
            let mut bytes = Vec::new();
            first.write_snapshot(&mut bytes).expect("snapshot to memory");
            snapshot = Some((index, bytes));
        }
    }

    let (snapshot_index, bytes) = snapshot.expect("the snapshot step is within the workload");
    let mut restored = Ledger::restore_snapshot(MemoryStorage::new(), bytes.as_slice()).expect("restore");
    for batch in &batches[snapshot_index + 1..] {
        restored.apply(batch).expect("accepted after restore");
    }
    prop_assert_eq!(restored.digest(), first.digest(), "a ledger restored after batch {} diverges", snapshot_index);

    // Re-submitting every transfer batch, later, must apply nothing and move nothing.
    let balances_before = accounts(&first);
    let mut clock = first.timestamp_last() + 1;
    for batch in batches.iter().skip(setup) {
        let Operation::CreateTransfers(events) = &batch.operation else {
            continue;
        };
        let retry = Batch::new(clock, batch.operation.clone());
        let outcome = first.apply(&retry).expect("retry accepted");
        for (event, code) in events.iter().zip(outcome.results()) {
            prop_assert_ne!(*code, ResultCode::Ok, "re-submitted transfer {} applied again", event.id);
        }
        clock = first.timestamp_last() + 1;
    }
    prop_assert_eq!(accounts(&first), balances_before, "re-submission changed a balance");
    Ok(())
}

fn seed() -> u64 {
    match std::env::var("TALLY_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("TALLY_SEED must be a decimal u64, not {text:?}")),
        Err(_) => DEFAULT_SEED,
    }
}

#[test]
fn random_workloads_conserve_money_and_replicate_identically() {
    let seed = seed();
    let cases = std::env::var("TALLY_PROPERTY_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(DEFAULT_CASES);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    eprintln!("property seed {seed} ({cases} workloads); replay with TALLY_SEED={seed}");
    match runner.run(&workload_strategy(), |workload| check_workload(&workload)) {
        Ok(()) => {}
        Err(TestError::Fail(reason, workload)) => {
            panic!("property failed with TALLY_SEED={seed}: {reason}\nshrunk workload: {workload:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("property run aborted with TALLY_SEED={seed}: {reason}"),
    }
}

/// The generator must reach the paths the properties are about; otherwise they prove little.
#[test]
fn workloads_exercise_chains_pending_expiry_and_failures() {
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let mut seen = std::collections::BTreeSet::new();
    let mut expired = 0;
    for _ in 0..64 {
        let workload = workload_strategy().new_tree(&mut runner).unwrap().current();
        let mut ledger = Ledger::new();
        for batch in batches(&workload) {
            match ledger.apply(&batch).unwrap() {
                tally_state_machine::BatchOutcome::Created(codes) => seen.extend(codes),
                tally_state_machine::BatchOutcome::Expired(ids) => expired += ids.len(),
            }
        }
    }
    use ResultCode::*;
    for code in [
        Ok,
        Exists,
        LinkedEventFailed,
        LinkedEventChainOpen,
        ExceedsCredits,
        ExceedsDebits,
        IdAlreadyFailed,
        PendingTransferAlreadyPosted,
        PendingTransferExpired,
        DebitAccountAlreadyClosed,
        AmountScaleExceedsLedgerScale,
    ] {
        assert!(seen.contains(&code), "the generator never produced {code}");
    }
    assert!(expired > 0, "the generator never expired a pending transfer");
}
