//! Shared fixtures for the state machine's integration tests.
#![allow(dead_code)] // Each test binary uses a different part of the fixture.

use std::str::FromStr;

use rust_decimal::Decimal;
use tally_state_machine::LedgerQueries;
use tally_state_machine::constants::NANOSECONDS_PER_SECOND;
use tally_state_machine::{
    Account, AccountFlags, Batch, BatchOutcome, Currency, NewAccount, NewLedger, NewTransfer, Operation, ResultCode,
    StateMachine, TransferFlags,
};

pub const USD: u32 = 1;
pub const JPY: u32 = 2;

/// USD accounts.
pub const BANK: u128 = 1; // no limits: the source of funds
pub const ALICE: u128 = 2; // debits_must_not_exceed_credits, history: a customer who cannot overdraw
pub const BOB: u128 = 3; // no flags
pub const CAROL: u128 = 4; // credits_must_not_exceed_debits: a loan account
pub const USD_LIQUIDITY: u128 = 5;
/// JPY accounts.
pub const YEN_A: u128 = 10;
pub const YEN_B: u128 = 11;
pub const YEN_C: u128 = 12;
pub const JPY_LIQUIDITY: u128 = 13;

pub fn amount(text: &str) -> Option<Decimal> {
    Some(Decimal::from_str(text).expect("a decimal literal"))
}

/// A USD transfer with code 1.
pub fn transfer(id: u128, debit: u128, credit: u128, value: &str) -> NewTransfer {
    NewTransfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: amount(value),
        ledger: USD,
        code: 1,
        ..NewTransfer::default()
    }
}

pub fn with_flags(transfer: NewTransfer, flags: TransferFlags) -> NewTransfer {
    NewTransfer { flags: transfer.flags | flags, ..transfer }
}

pub fn pending(id: u128, debit: u128, credit: u128, value: &str) -> NewTransfer {
    with_flags(transfer(id, debit, credit, value), TransferFlags::PENDING)
}

/// A post of `pending_id` that inherits accounts, ledger and code; `None` posts the full amount.
pub fn post(id: u128, pending_id: u128, value: Option<&str>) -> NewTransfer {
    NewTransfer {
        id,
        pending_id,
        amount: value.and_then(amount),
        flags: TransferFlags::POST_PENDING_TRANSFER,
        ..NewTransfer::default()
    }
}

pub fn void(id: u128, pending_id: u128) -> NewTransfer {
    NewTransfer { flags: TransferFlags::VOID_PENDING_TRANSFER, ..post(id, pending_id, None) }
}

pub fn account(id: u128, ledger: u32, flags: AccountFlags) -> NewAccount {
    NewAccount { id, ledger, code: 100, flags, ..NewAccount::default() }
}

/// A ledger in memory with USD (scale 2) and JPY (scale 0) accounts, Alice funded with 100.00.
pub struct Harness {
    pub ledger: StateMachine<tally_state_machine::MemoryStorage>,
    /// The next batch's timestamp.
    pub clock: u64,
}

impl Harness {
    pub fn empty() -> Harness {
        Harness { ledger: StateMachine::new(), clock: 1_700_000_000 * NANOSECONDS_PER_SECOND }
    }

    pub fn new() -> Harness {
        let mut harness = Harness::empty();
        let ledgers = vec![
            NewLedger { id: USD, currency: Currency(*b"USD"), scale: 2, ..NewLedger::default() },
            NewLedger { id: JPY, currency: Currency(*b"JPY"), scale: 0, ..NewLedger::default() },
        ];
        assert!(harness.ledgers(ledgers).iter().all(|code| *code == ResultCode::Ok));
        let accounts = vec![
            account(BANK, USD, AccountFlags::empty()),
            account(ALICE, USD, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::HISTORY),
            account(BOB, USD, AccountFlags::empty()),
            account(CAROL, USD, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
            account(USD_LIQUIDITY, USD, AccountFlags::empty()),
            account(YEN_A, JPY, AccountFlags::empty()),
            account(YEN_B, JPY, AccountFlags::empty()),
            account(YEN_C, JPY, AccountFlags::empty()),
            account(JPY_LIQUIDITY, JPY, AccountFlags::empty()),
        ];
        assert!(harness.accounts(accounts).iter().all(|code| *code == ResultCode::Ok));
        assert_eq!(harness.transfers(vec![transfer(1_000, BANK, ALICE, "100.00")]), [ResultCode::Ok]);
        harness
    }

    pub fn apply(&mut self, operation: Operation) -> BatchOutcome {
        let batch = Batch::new(self.clock, operation);
        let outcome = self.ledger.apply(&batch).expect("batch accepted");
        self.clock = self.ledger.timestamp_last() + 1_000;
        outcome
    }

    pub fn ledgers(&mut self, events: Vec<NewLedger>) -> Vec<ResultCode> {
        self.apply(Operation::CreateLedgers(events)).results().to_vec()
    }

    pub fn accounts(&mut self, events: Vec<NewAccount>) -> Vec<ResultCode> {
        self.apply(Operation::CreateAccounts(events)).results().to_vec()
    }

    pub fn transfers(&mut self, events: Vec<NewTransfer>) -> Vec<ResultCode> {
        self.apply(Operation::CreateTransfers(events)).results().to_vec()
    }

    pub fn expire(&mut self) -> Vec<u128> {
        match self.apply(Operation::ExpirePendingTransfers) {
            BatchOutcome::Expired(ids) => ids,
            BatchOutcome::Created(_) => unreachable!(),
        }
    }

    pub fn advance_seconds(&mut self, seconds: u64) {
        self.clock += seconds * NANOSECONDS_PER_SECOND;
    }

    pub fn account(&self, id: u128) -> Account {
        self.ledger.storage().lookup_accounts(&[id]).unwrap()[0].expect("account exists")
    }

    /// `[debits_pending, debits_posted, credits_pending, credits_posted]` in minor units.
    pub fn balances(&self, id: u128) -> [u128; 4] {
        let account = self.account(id);
        [account.debits_pending.0, account.debits_posted.0, account.credits_pending.0, account.credits_posted.0]
    }
}
