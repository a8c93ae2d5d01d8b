//! The scenario table: one or more named scenarios for every result code and every ledger rule.
//!
//! Each scenario starts from the same fixture (see `support`), runs its steps (asserting the
//! intermediate outcomes and balances it depends on) and returns the codes of its last batch, which
//! must equal the table's expectation. All scenarios run even when one fails, and a final check
//! requires that the table as a whole produces every result code.

mod support;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use rust_decimal::Decimal;
use support::*;
use tally_state_machine::LedgerQueries;
use tally_state_machine::ResultCode::{self, *};
use tally_state_machine::constants::NANOSECONDS_PER_SECOND;
use tally_state_machine::{
    AccountFlags, Currency, NewAccount, NewLedger, NewTransfer, PendingStatus, TransferFlags, Units, Window,
};

struct Scenario {
    name: &'static str,
    run: fn(&mut Harness) -> Vec<ResultCode>,
    expected: &'static [ResultCode],
}

const LINKED: TransferFlags = TransferFlags::LINKED;
const MAX_UNITS: &str = "79228162514264337593543950335"; // 2^96 - 1

fn yen(id: u128, debit: u128, credit: u128, value: &str) -> NewTransfer {
    NewTransfer { ledger: JPY, ..transfer(id, debit, credit, value) }
}

fn usd_ledger() -> NewLedger {
    NewLedger { id: USD, currency: Currency(*b"USD"), scale: 2, ..NewLedger::default() }
}

const SCENARIOS: &[Scenario] = &[
    // ---------------------------------------------------------------- ledgers
    Scenario {
        name: "ledger: created with a currency and scale",
        run: |h| {
            let codes = h.ledgers(vec![NewLedger {
                id: 3,
                currency: "EUR".parse().unwrap(),
                scale: 2,
                ..NewLedger::default()
            }]);
            let ledger = h.ledger.storage().lookup_ledgers(&[3]).unwrap()[0].unwrap();
            assert_eq!((ledger.currency.to_string().as_str(), ledger.scale), ("EUR", 2));
            codes
        },
        expected: &[Ok],
    },
    Scenario {
        name: "ledger: retried with the same fields",
        run: |h| h.ledgers(vec![usd_ledger()]),
        expected: &[Exists],
    },
    Scenario {
        name: "ledger: id 0, unknown currency, scale above 18",
        run: |h| {
            h.ledgers(vec![
                NewLedger { id: 0, ..usd_ledger() },
                NewLedger { id: 3, currency: Currency(*b"ABC"), ..usd_ledger() },
                NewLedger { id: 4, currency: Currency([0, 0, 0]), ..usd_ledger() },
                NewLedger { id: 5, scale: 19, ..usd_ledger() },
                NewLedger { id: 6, scale: 18, ..usd_ledger() },
            ])
        },
        expected: &[IdMustNotBeZero, CurrencyNotIso4217, CurrencyNotIso4217, ScaleExceedsMax, Ok],
    },
    Scenario {
        name: "ledger: exists with a different field",
        run: |h| {
            h.ledgers(vec![
                NewLedger { currency: Currency(*b"EUR"), ..usd_ledger() },
                NewLedger { scale: 3, ..usd_ledger() },
                NewLedger { user_data_128: 1, ..usd_ledger() },
                NewLedger { user_data_64: 1, ..usd_ledger() },
                NewLedger { user_data_32: 1, ..usd_ledger() },
            ])
        },
        expected: &[
            ExistsWithDifferentCurrency,
            ExistsWithDifferentScale,
            ExistsWithDifferentUserData128,
            ExistsWithDifferentUserData64,
            ExistsWithDifferentUserData32,
        ],
    },
    // ---------------------------------------------------------------- accounts
    Scenario {
        name: "account: opened with zero balances at the event's timestamp",
        run: |h| {
            let batch_timestamp = h.clock;
            let codes =
                h.accounts(vec![account(50, USD, AccountFlags::empty()), account(51, JPY, AccountFlags::empty())]);
            assert_eq!(h.balances(51), [0; 4]);
            assert_eq!(h.account(50).timestamp, batch_timestamp);
            assert_eq!(h.account(51).timestamp, batch_timestamp + 1, "event i is applied at timestamp + i");
            codes
        },
        expected: &[Ok, Ok],
    },
    Scenario {
        name: "account: retried with the same fields",
        run: |h| h.accounts(vec![account(BOB, USD, AccountFlags::empty())]),
        expected: &[Exists],
    },
    Scenario {
        name: "account: malformed fields",
        run: |h| {
            h.accounts(vec![
                account(0, USD, AccountFlags::empty()),
                account(u128::MAX, USD, AccountFlags::empty()),
                account(50, USD, AccountFlags::from_bits_retain(1 << 15)),
                account(51, USD, AccountFlags::CLOSED),
                account(
                    52,
                    USD,
                    AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                ),
                account(53, 0, AccountFlags::empty()),
                NewAccount { code: 0, ..account(54, USD, AccountFlags::empty()) },
                account(55, 99, AccountFlags::empty()),
            ])
        },
        expected: &[
            IdMustNotBeZero,
            IdMustNotBeIntMax,
            ReservedFlag,
            AccountMustNotBeCreatedClosed,
            FlagsAreMutuallyExclusive,
            LedgerMustNotBeZero,
            CodeMustNotBeZero,
            LedgerNotFound,
        ],
    },
    Scenario {
        name: "account: exists with a different field",
        run: |h| {
            let bob = account(BOB, USD, AccountFlags::empty());
            h.accounts(vec![
                NewAccount { flags: AccountFlags::HISTORY, ..bob },
                NewAccount { user_data_128: 1, ..bob },
                NewAccount { user_data_64: 1, ..bob },
                NewAccount { user_data_32: 1, ..bob },
                NewAccount { ledger: JPY, ..bob },
                NewAccount { code: 7, ..bob },
            ])
        },
        expected: &[
            ExistsWithDifferentFlags,
            ExistsWithDifferentUserData128,
            ExistsWithDifferentUserData64,
            ExistsWithDifferentUserData32,
            ExistsWithDifferentLedger,
            ExistsWithDifferentCode,
        ],
    },
    Scenario {
        name: "account: a linked chain fails together",
        run: |h| {
            let codes = h.accounts(vec![
                account(50, USD, AccountFlags::LINKED),
                account(51, USD, AccountFlags::LINKED),
                account(52, 99, AccountFlags::empty()),
                account(53, USD, AccountFlags::empty()),
            ]);
            let found = h.ledger.storage().lookup_accounts(&[50, 51, 53]).unwrap();
            assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), [false, false, true]);
            codes
        },
        expected: &[LinkedEventFailed, LinkedEventFailed, LedgerNotFound, Ok],
    },
    Scenario {
        name: "account: a chain still open at the end of the batch fails",
        run: |h| {
            let codes = h.accounts(vec![
                account(50, USD, AccountFlags::empty()),
                account(51, USD, AccountFlags::LINKED),
                account(52, USD, AccountFlags::LINKED),
            ]);
            let found = h.ledger.storage().lookup_accounts(&[50, 51, 52]).unwrap();
            assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), [true, false, false]);
            codes
        },
        expected: &[Ok, LinkedEventFailed, LinkedEventChainOpen],
    },
    Scenario {
        name: "account: a retried chain reports exists for every event",
        run: |h| {
            let chain = vec![account(50, USD, AccountFlags::LINKED), account(51, USD, AccountFlags::empty())];
            assert_eq!(h.accounts(chain.clone()), [Ok, Ok]);
            h.accounts(chain)
        },
        expected: &[Exists, Exists],
    },
    // ---------------------------------------------------------------- transfers: fields
    Scenario {
        name: "transfer: moves money and records the transfer",
        run: |h| {
            let timestamp = h.clock;
            let codes = h.transfers(vec![transfer(1, ALICE, BOB, "12.34")]);
            assert_eq!(h.balances(ALICE), [0, 1_234, 0, 10_000]);
            assert_eq!(h.balances(BOB), [0, 0, 0, 1_234]);
            let stored = h.ledger.storage().lookup_transfers(&[1]).unwrap()[0].unwrap();
            assert_eq!((stored.amount, stored.timestamp, stored.ledger), (Units(1_234), timestamp, USD));
            codes
        },
        expected: &[Ok],
    },
    Scenario {
        name: "transfer: trailing zeros beyond the ledger's scale are exact",
        run: |h| {
            let codes = h.transfers(vec![transfer(1, BANK, BOB, "1.500"), yen(2, YEN_A, YEN_B, "7.0")]);
            assert_eq!((h.balances(BOB)[3], h.balances(YEN_B)[3]), (150, 7));
            codes
        },
        expected: &[Ok, Ok],
    },
    Scenario {
        name: "transfer: a retry returns exists and moves nothing",
        run: |h| {
            assert_eq!(h.transfers(vec![transfer(1, BANK, BOB, "5")]), [Ok]);
            let codes = h.transfers(vec![transfer(1, BANK, BOB, "5.00"), transfer(1, BANK, BOB, "5")]);
            assert_eq!(h.balances(BOB), [0, 0, 0, 500]);
            codes
        },
        expected: &[Exists, Exists],
    },
    Scenario {
        name: "transfer: exists with a different field",
        run: |h| {
            let base =
                NewTransfer { user_data_128: 9, user_data_64: 9, user_data_32: 9, ..transfer(1, BANK, BOB, "5") };
            let base_pending = NewTransfer { timeout_seconds: 10, ..pending(2, BANK, BOB, "5") };
            assert_eq!(h.transfers(vec![base, base_pending]), [Ok, Ok]);
            h.transfers(vec![
                with_flags(base, TransferFlags::PENDING),
                NewTransfer { debit_account_id: USD_LIQUIDITY, ..base },
                NewTransfer { credit_account_id: USD_LIQUIDITY, ..base },
                NewTransfer { amount: amount("6"), ..base },
                NewTransfer { timeout_seconds: 20, ..base_pending },
                NewTransfer { user_data_128: 1, ..base },
                NewTransfer { user_data_64: 1, ..base },
                NewTransfer { user_data_32: 1, ..base },
                NewTransfer { ledger: JPY, ..base },
                NewTransfer { code: 2, ..base },
            ])
        },
        expected: &[
            ExistsWithDifferentFlags,
            ExistsWithDifferentDebitAccountId,
            ExistsWithDifferentCreditAccountId,
            ExistsWithDifferentAmount,
            ExistsWithDifferentTimeout,
            ExistsWithDifferentUserData128,
            ExistsWithDifferentUserData64,
            ExistsWithDifferentUserData32,
            ExistsWithDifferentLedger,
            ExistsWithDifferentCode,
        ],
    },
    Scenario {
        name: "transfer: malformed ids and flags",
        run: |h| {
            let t = transfer(1, BANK, BOB, "1");
            h.transfers(vec![
                NewTransfer { id: 0, ..t },
                NewTransfer { id: u128::MAX, ..t },
                with_flags(t, TransferFlags::from_bits_retain(1 << 12)),
                with_flags(t, TransferFlags::PENDING | TransferFlags::POST_PENDING_TRANSFER),
                NewTransfer {
                    pending_id: 9,
                    ..with_flags(t, TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER)
                },
                NewTransfer {
                    pending_id: 9,
                    ..with_flags(t, TransferFlags::POST_PENDING_TRANSFER | TransferFlags::BALANCING_DEBIT)
                },
                with_flags(t, TransferFlags::CLOSING_DEBIT),
            ])
        },
        expected: &[
            IdMustNotBeZero,
            IdMustNotBeIntMax,
            ReservedFlag,
            FlagsAreMutuallyExclusive,
            FlagsAreMutuallyExclusive,
            FlagsAreMutuallyExclusive,
            ClosingTransferMustBePending,
        ],
    },
    Scenario {
        name: "transfer: malformed accounts, pending id and timeout",
        run: |h| {
            h.transfers(vec![
                transfer(1, 0, BOB, "1"),
                transfer(2, u128::MAX, BOB, "1"),
                transfer(3, BANK, 0, "1"),
                transfer(4, BANK, u128::MAX, "1"),
                transfer(5, BOB, BOB, "1"),
                NewTransfer { pending_id: 9, ..transfer(6, BANK, BOB, "1") },
                NewTransfer { timeout_seconds: 5, ..transfer(7, BANK, BOB, "1") },
            ])
        },
        expected: &[
            DebitAccountIdMustNotBeZero,
            DebitAccountIdMustNotBeIntMax,
            CreditAccountIdMustNotBeZero,
            CreditAccountIdMustNotBeIntMax,
            AccountsMustBeDifferent,
            PendingIdMustBeZero,
            TimeoutReservedForPendingTransfer,
        ],
    },
    Scenario {
        name: "transfer: malformed amounts are refused, never rounded",
        run: |h| {
            let max = Decimal::MAX.to_string();
            h.transfers(vec![
                NewTransfer { amount: None, ..transfer(1, BANK, BOB, "1") },
                transfer(2, BANK, BOB, "0"),
                transfer(3, BANK, BOB, "-1.00"),
                transfer(4, BANK, BOB, "0.001"),
                yen(5, YEN_A, YEN_B, "1.5"),
                transfer(6, BANK, BOB, &max),
                yen(7, YEN_A, YEN_B, &max),
            ])
        },
        expected: &[
            AmountMustBeSet,
            AmountMustBePositive,
            AmountMustBePositive,
            AmountScaleExceedsLedgerScale,
            AmountScaleExceedsLedgerScale,
            AmountExceedsMax,
            Ok,
        ],
    },
    Scenario {
        name: "transfer: ledger, code and accounts must exist and agree",
        run: |h| {
            h.transfers(vec![
                NewTransfer { ledger: 0, ..transfer(1, BANK, BOB, "1") },
                NewTransfer { code: 0, ..transfer(2, BANK, BOB, "1") },
                NewTransfer { ledger: 99, ..transfer(3, BANK, BOB, "1") },
                transfer(4, 99, BOB, "1"),
                transfer(5, BANK, 99, "1"),
                transfer(6, BANK, YEN_A, "1"),
                NewTransfer { ledger: USD, ..yen(7, YEN_A, YEN_B, "1") },
            ])
        },
        expected: &[
            LedgerMustNotBeZero,
            CodeMustNotBeZero,
            LedgerNotFound,
            DebitAccountNotFound,
            CreditAccountNotFound,
            AccountsMustHaveTheSameLedger,
            TransferMustHaveTheSameLedgerAsAccounts,
        ],
    },
    // ---------------------------------------------------------------- limits and idempotency
    Scenario {
        name: "limit: an account that must not overdraw cannot",
        run: |h| {
            let codes = h.transfers(vec![transfer(1, ALICE, BOB, "100.01"), transfer(2, ALICE, BOB, "100.00")]);
            assert_eq!(h.balances(ALICE), [0, 10_000, 0, 10_000]);
            codes
        },
        expected: &[ExceedsCredits, Ok],
    },
    Scenario {
        name: "limit: pending debits count against the limit",
        run: |h| h.transfers(vec![pending(1, ALICE, BOB, "60"), transfer(2, ALICE, BOB, "50")]),
        expected: &[Ok, ExceedsCredits],
    },
    Scenario {
        name: "limit: credits must not exceed debits",
        run: |h| {
            assert_eq!(h.transfers(vec![transfer(1, BANK, CAROL, "1")]), [ExceedsDebits]);
            h.transfers(vec![
                transfer(2, CAROL, BOB, "10"),
                transfer(3, BANK, CAROL, "10"),
                transfer(4, BANK, CAROL, "0.01"),
            ])
        },
        expected: &[Ok, Ok, ExceedsDebits],
    },
    Scenario {
        name: "idempotency: a balance failure is final for its id",
        run: |h| {
            assert_eq!(h.transfers(vec![transfer(1, ALICE, BOB, "200")]), [ExceedsCredits]);
            assert_eq!(h.transfers(vec![transfer(2, BANK, ALICE, "500")]), [Ok]);
            let failure = h.ledger.storage().transfer_failure(1).expect("failure recorded");
            assert_eq!(failure.code, ExceedsCredits);
            h.transfers(vec![transfer(1, ALICE, BOB, "200"), transfer(3, ALICE, BOB, "200")])
        },
        expected: &[IdAlreadyFailed, Ok],
    },
    Scenario {
        name: "idempotency: a failure that depends only on the event is not recorded",
        run: |h| {
            assert_eq!(h.transfers(vec![transfer(1, BANK, BOB, "0")]), [AmountMustBePositive]);
            assert!(h.ledger.storage().transfer_failure(1).is_none());
            h.transfers(vec![transfer(1, BANK, BOB, "1")])
        },
        expected: &[Ok],
    },
    Scenario {
        name: "idempotency: only the failing event of a chain is recorded",
        run: |h| {
            let chain = vec![with_flags(transfer(1, BANK, BOB, "1"), LINKED), transfer(2, ALICE, BOB, "500")];
            assert_eq!(h.transfers(chain), [LinkedEventFailed, ExceedsCredits]);
            h.transfers(vec![transfer(1, BANK, BOB, "1"), transfer(2, ALICE, BOB, "500")])
        },
        expected: &[Ok, IdAlreadyFailed],
    },
    // ---------------------------------------------------------------- balancing
    Scenario {
        name: "balancing: a balancing debit moves what the limit allows",
        run: |h| {
            let codes = h.transfers(vec![with_flags(transfer(1, ALICE, BOB, "500"), TransferFlags::BALANCING_DEBIT)]);
            assert_eq!(h.ledger.storage().lookup_transfers(&[1]).unwrap()[0].unwrap().amount, Units(10_000));
            assert_eq!(h.balances(ALICE), [0, 10_000, 0, 10_000]);
            codes
        },
        expected: &[Ok],
    },
    Scenario {
        name: "balancing: nothing left to move fails",
        run: |h| {
            assert_eq!(h.transfers(vec![transfer(1, ALICE, BOB, "100")]), [Ok]);
            h.transfers(vec![with_flags(transfer(2, ALICE, BOB, "1"), TransferFlags::BALANCING_DEBIT)])
        },
        expected: &[ExceedsCredits],
    },
    Scenario {
        name: "balancing: a balancing credit moves what the credit account's debits allow",
        run: |h| {
            assert_eq!(h.transfers(vec![transfer(1, CAROL, BOB, "10")]), [Ok]);
            let balancing = |id| with_flags(transfer(id, BANK, CAROL, "50"), TransferFlags::BALANCING_CREDIT);
            let codes = h.transfers(vec![balancing(2), balancing(3)]);
            assert_eq!(h.balances(CAROL), [0, 1_000, 0, 1_000]);
            codes
        },
        expected: &[Ok, ExceedsDebits],
    },
    Scenario {
        name: "balancing: a retry with a ceiling at or above what moved exists",
        run: |h| {
            let balancing = |value| with_flags(transfer(1, ALICE, BOB, value), TransferFlags::BALANCING_DEBIT);
            assert_eq!(h.transfers(vec![balancing("500")]), [Ok]);
            h.transfers(vec![balancing("500"), balancing("100"), balancing("99.99")])
        },
        expected: &[Exists, Exists, ExistsWithDifferentAmount],
    },
    // ---------------------------------------------------------------- pending transfers
    Scenario {
        name: "pending: a pending transfer moves money into the pending balances",
        run: |h| {
            let codes = h.transfers(vec![pending(1, ALICE, BOB, "30")]);
            assert_eq!(h.balances(ALICE), [3_000, 0, 0, 10_000]);
            assert_eq!(h.balances(BOB), [0, 0, 3_000, 0]);
            assert_eq!(h.ledger.storage().pending_status(1), Some(PendingStatus::Pending));
            codes
        },
        expected: &[Ok],
    },
    Scenario {
        name: "pending: a post without an amount posts all of it",
        run: |h| {
            assert_eq!(h.transfers(vec![pending(1, ALICE, BOB, "30")]), [Ok]);
            let timestamp = h.clock;
            let codes = h.transfers(vec![post(2, 1, None)]);
            assert_eq!(h.balances(ALICE), [0, 3_000, 0, 10_000]);
            assert_eq!(h.balances(BOB), [0, 0, 0, 3_000]);
            assert_eq!(h.ledger.storage().pending_status(1), Some(PendingStatus::Posted { timestamp }));
            codes
        },
        expected: &[Ok],
    },
    Scenario {
        name: "pending: a partial post releases the rest and inherits the pending transfer's fields",
        run: |h| {
            let authorisation = NewTransfer { user_data_128: 77, code: 5, ..pending(1, ALICE, BOB, "50") };
            assert_eq!(h.transfers(vec![authorisation]), [Ok]);
            let codes = h.transfers(vec![post(2, 1, Some("30.00"))]);
            assert_eq!(h.balances(ALICE), [0, 3_000, 0, 10_000]);
            assert_eq!(h.balances(BOB), [0, 0, 0, 3_000]);
            let capture = h.ledger.storage().lookup_transfers(&[2]).unwrap()[0].unwrap();
            assert_eq!((capture.debit_account_id, capture.credit_account_id), (ALICE, BOB));
            assert_eq!(
                (capture.amount, capture.code, capture.user_data_128, capture.pending_id),
                (Units(3_000), 5, 77, 1)
            );
            codes
        },
        expected: &[Ok],
    },
    Scenario {
        name: "pending: a void releases the pending amount",
        run: |h| {
            assert_eq!(h.transfers(vec![pending(1, ALICE, BOB, "30"), pending(2, ALICE, BOB, "10")]), [Ok, Ok]);
            let codes = h.transfers(vec![
                void(3, 1),
                NewTransfer { amount: amount("9"), ..void(4, 2) },
                NewTransfer { amount: amount("10"), ..void(5, 2) },
            ]);
            assert_eq!(h.balances(ALICE), [0, 0, 0, 10_000]);
            assert_eq!(h.balances(BOB), [0; 4]);
            codes
        },
        expected: &[Ok, PendingTransferHasDifferentAmount, Ok],
    },
    Scenario {
        name: "pending: a post above the reserved amount fails",
        run: |h| {
            assert_eq!(h.transfers(vec![pending(1, ALICE, BOB, "30")]), [Ok]);
            h.transfers(vec![post(2, 1, Some("30.01")), post(3, 1, Some("0"))])
        },
        expected: &[ExceedsPendingTransferAmount, AmountMustBePositive],
    },
    Scenario {
        name: "pending: a pending transfer resolves once",
        run: |h| {
            assert_eq!(h.transfers(vec![pending(1, ALICE, BOB, "30"), pending(2, ALICE, BOB, "30")]), [Ok, Ok]);
            assert_eq!(h.transfers(vec![post(3, 1, None), void(4, 2)]), [Ok, Ok]);
            h.transfers(vec![post(5, 1, None), void(6, 1), post(7, 2, None), void(8, 2)])
        },
        expected: &[
            PendingTransferAlreadyPosted,
            PendingTransferAlreadyPosted,
            PendingTransferAlreadyVoided,
            PendingTransferAlreadyVoided,
        ],
    },
    Scenario {
        name: "pending: the pending transfer must exist, be pending and be named correctly",
        run: |h| {
            assert_eq!(h.transfers(vec![transfer(1, BANK, BOB, "1"), pending(2, BANK, BOB, "1")]), [Ok, Ok]);
            h.transfers(vec![
                post(10, 99, None),
                post(11, 1, None),
                post(12, 0, None),
                post(13, u128::MAX, None),
                post(14, 14, None),
                NewTransfer { timeout_seconds: 1, ..post(15, 2, None) },
                NewTransfer { debit_account_id: ALICE, ..post(16, 2, None) },
                NewTransfer { credit_account_id: ALICE, ..post(17, 2, None) },
                NewTransfer { ledger: JPY, ..post(18, 2, None) },
                NewTransfer { code: 9, ..post(19, 2, None) },
                NewTransfer {
                    debit_account_id: BANK,
                    credit_account_id: BOB,
                    ledger: USD,
                    code: 1,
                    ..post(20, 2, None)
                },
            ])
        },
        expected: &[
            PendingTransferNotFound,
            PendingTransferNotPending,
            PendingIdMustNotBeZero,
            PendingIdMustNotBeIntMax,
            PendingIdMustBeDifferent,
            TimeoutReservedForPendingTransfer,
            PendingTransferHasDifferentDebitAccountId,
            PendingTransferHasDifferentCreditAccountId,
            PendingTransferHasDifferentLedger,
            PendingTransferHasDifferentCode,
            Ok,
        ],
    },
    Scenario {
        name: "pending: a retried post is compared field by field",
        run: |h| {
            assert_eq!(h.transfers(vec![pending(1, BANK, BOB, "50"), pending(2, BANK, BOB, "50")]), [Ok, Ok]);
            assert_eq!(h.transfers(vec![post(3, 1, Some("30"))]), [Ok]);
            h.transfers(vec![post(3, 1, Some("30")), post(3, 2, Some("30")), post(3, 1, None), post(3, 1, Some("20"))])
        },
        expected: &[Exists, ExistsWithDifferentPendingId, ExistsWithDifferentAmount, ExistsWithDifferentAmount],
    },
    // ---------------------------------------------------------------- expiry
    Scenario {
        name: "expiry: a timed-out pending transfer is released and cannot be posted",
        run: |h| {
            let authorisation = NewTransfer { timeout_seconds: 1, ..pending(1, ALICE, BOB, "30") };
            assert_eq!(h.transfers(vec![authorisation]), [Ok]);
            let deadline =
                h.ledger.storage().lookup_transfers(&[1]).unwrap()[0].unwrap().timestamp + NANOSECONDS_PER_SECOND;
            assert_eq!(h.ledger.expiry_next(), Some(deadline));
            h.advance_seconds(2);
            let expiry_timestamp = h.clock;
            assert_eq!(h.expire(), [1]);
            assert_eq!(
                h.ledger.storage().pending_status(1),
                Some(PendingStatus::Expired { timestamp: expiry_timestamp })
            );
            assert_eq!(h.balances(ALICE), [0, 0, 0, 10_000]);
            assert_eq!(h.ledger.expiry_next(), None);
            h.transfers(vec![post(2, 1, None), void(3, 1)])
        },
        expected: &[PendingTransferExpired, PendingTransferExpired],
    },
    Scenario {
        name: "expiry: past its deadline a pending transfer cannot be posted even before the sweep",
        run: |h| {
            assert_eq!(h.transfers(vec![NewTransfer { timeout_seconds: 1, ..pending(1, ALICE, BOB, "30") }]), [Ok]);
            h.advance_seconds(2);
            let codes = h.transfers(vec![post(2, 1, None)]);
            assert_eq!(h.balances(ALICE), [3_000, 0, 0, 10_000], "still reserved until the expiry batch");
            assert_eq!(h.expire(), [1]);
            assert_eq!(h.balances(ALICE), [0, 0, 0, 10_000]);
            codes
        },
        expected: &[PendingTransferExpired],
    },
    Scenario {
        name: "expiry: before its deadline a pending transfer stays and can be posted",
        run: |h| {
            assert_eq!(h.transfers(vec![NewTransfer { timeout_seconds: 10, ..pending(1, ALICE, BOB, "30") }]), [Ok]);
            h.advance_seconds(5);
            assert_eq!(h.expire(), Vec::<u128>::new());
            let codes = h.transfers(vec![post(2, 1, None)]);
            assert_eq!(h.ledger.expiry_next(), None, "a posted transfer leaves the expiry index");
            codes
        },
        expected: &[Ok],
    },
    Scenario {
        name: "expiry: a deadline past the end of cluster time is refused",
        run: |h| {
            h.clock = u64::MAX - 1_000 * NANOSECONDS_PER_SECOND;
            h.transfers(vec![NewTransfer { timeout_seconds: u32::MAX, ..pending(1, BANK, BOB, "1") }])
        },
        expected: &[OverflowsTimeout],
    },
    // ---------------------------------------------------------------- closing
    Scenario {
        name: "closing: a closing debit closes the account and its void reopens it",
        run: |h| {
            let closing = with_flags(pending(1, BOB, BANK, "0.01"), TransferFlags::CLOSING_DEBIT);
            assert_eq!(h.transfers(vec![closing]), [Ok]);
            assert!(h.account(BOB).flags.contains(AccountFlags::CLOSED));
            assert_eq!(
                h.transfers(vec![transfer(2, BOB, BANK, "1"), transfer(3, BANK, BOB, "1")]),
                [DebitAccountAlreadyClosed, CreditAccountAlreadyClosed]
            );
            assert_eq!(h.transfers(vec![void(4, 1)]), [Ok]);
            assert!(!h.account(BOB).flags.contains(AccountFlags::CLOSED));
            h.transfers(vec![transfer(5, BANK, BOB, "1"), transfer(3, BANK, BOB, "1")])
        },
        expected: &[Ok, IdAlreadyFailed],
    },
    Scenario {
        name: "closing: a closed account refuses new transfers on either side",
        run: |h| {
            let closing = with_flags(pending(1, BOB, BANK, "0.01"), TransferFlags::CLOSING_DEBIT);
            assert_eq!(h.transfers(vec![closing]), [Ok]);
            h.transfers(vec![transfer(2, BOB, BANK, "1"), transfer(3, BANK, BOB, "1"), pending(4, BANK, BOB, "1")])
        },
        expected: &[DebitAccountAlreadyClosed, CreditAccountAlreadyClosed, CreditAccountAlreadyClosed],
    },
    Scenario {
        name: "closing: a closing credit closes the credit account; posting keeps it closed",
        run: |h| {
            let closing = with_flags(pending(1, BANK, BOB, "0.01"), TransferFlags::CLOSING_CREDIT);
            assert_eq!(h.transfers(vec![closing]), [Ok]);
            assert_eq!(
                h.transfers(vec![post(2, 1, None)]),
                [Ok],
                "a pending transfer made before closing can be posted"
            );
            assert!(h.account(BOB).flags.contains(AccountFlags::CLOSED));
            h.transfers(vec![transfer(3, BANK, BOB, "1")])
        },
        expected: &[CreditAccountAlreadyClosed],
    },
    Scenario {
        name: "closing: an expired closing transfer reopens the account",
        run: |h| {
            let closing = NewTransfer {
                timeout_seconds: 1,
                ..with_flags(pending(1, BOB, BANK, "0.01"), TransferFlags::CLOSING_DEBIT)
            };
            assert_eq!(h.transfers(vec![closing]), [Ok]);
            h.advance_seconds(2);
            assert_eq!(h.expire(), [1]);
            h.transfers(vec![transfer(2, BOB, BANK, "1")])
        },
        expected: &[Ok],
    },
    // ---------------------------------------------------------------- overflow (JPY, scale 0)
    Scenario {
        name: "overflow: posted balances stop at 2^96 - 1 units",
        run: |h| {
            assert_eq!(h.transfers(vec![yen(1, YEN_A, YEN_B, MAX_UNITS)]), [Ok]);
            h.transfers(vec![yen(2, YEN_A, YEN_C, "1"), yen(3, YEN_C, YEN_B, "1")])
        },
        expected: &[OverflowsDebitsPosted, OverflowsCreditsPosted],
    },
    Scenario {
        name: "overflow: pending balances stop at 2^96 - 1 units",
        run: |h| {
            let reserve = |id, debit, credit, value| with_flags(yen(id, debit, credit, value), TransferFlags::PENDING);
            assert_eq!(h.transfers(vec![reserve(1, YEN_A, YEN_B, MAX_UNITS)]), [Ok]);
            h.transfers(vec![reserve(2, YEN_A, YEN_C, "1"), reserve(3, YEN_C, YEN_B, "1")])
        },
        expected: &[OverflowsDebitsPending, OverflowsCreditsPending],
    },
    Scenario {
        name: "overflow: pending plus posted stops at 2^96 - 1 units",
        run: |h| {
            assert_eq!(h.transfers(vec![yen(1, YEN_A, YEN_B, MAX_UNITS)]), [Ok]);
            let reserve = |id, debit, credit| with_flags(yen(id, debit, credit, "1"), TransferFlags::PENDING);
            h.transfers(vec![reserve(2, YEN_A, YEN_C), reserve(3, YEN_C, YEN_B)])
        },
        expected: &[OverflowsDebits, OverflowsCredits],
    },
    // ---------------------------------------------------------------- linked transfers
    Scenario {
        name: "chain: a currency exchange is two linked transfers through liquidity accounts",
        run: |h| {
            let codes = h.transfers(vec![
                with_flags(transfer(1, ALICE, USD_LIQUIDITY, "10.00"), LINKED),
                yen(2, JPY_LIQUIDITY, YEN_A, "1500"),
            ]);
            assert_eq!((h.balances(ALICE)[1], h.balances(YEN_A)[3]), (1_000, 1_500));
            codes
        },
        expected: &[Ok, Ok],
    },
    Scenario {
        name: "chain: when the second leg fails the first is undone",
        run: |h| {
            let codes = h.transfers(vec![
                with_flags(transfer(1, ALICE, USD_LIQUIDITY, "10.00"), LINKED),
                yen(2, JPY_LIQUIDITY, YEN_A, "1.5"),
            ]);
            assert_eq!(h.balances(ALICE), [0, 0, 0, 10_000]);
            assert!(h.ledger.storage().lookup_transfers(&[1]).unwrap()[0].is_none());
            codes
        },
        expected: &[LinkedEventFailed, AmountScaleExceedsLedgerScale],
    },
    Scenario {
        name: "chain: a failed chain undoes pending transfers, posts and history",
        run: |h| {
            let history_before = h.ledger.storage().get_account_balances(ALICE, Window::first(100)).unwrap().items;
            let codes = h.transfers(vec![
                with_flags(NewTransfer { timeout_seconds: 60, ..pending(1, ALICE, BOB, "30") }, LINKED),
                with_flags(post(2, 1, Some("10")), LINKED),
                with_flags(transfer(3, BANK, ALICE, "5"), LINKED),
                transfer(4, ALICE, BOB, "1000"),
            ]);
            assert_eq!(h.balances(ALICE), [0, 0, 0, 10_000]);
            assert_eq!(h.balances(BOB), [0; 4]);
            assert_eq!(h.ledger.storage().pending_status(1), None);
            assert_eq!(h.ledger.expiry_next(), None);
            assert_eq!(
                h.ledger.storage().get_account_balances(ALICE, Window::first(100)).unwrap().items,
                history_before
            );
            codes
        },
        expected: &[LinkedEventFailed, LinkedEventFailed, LinkedEventFailed, ExceedsCredits],
    },
    Scenario {
        name: "chain: events after a failed chain still apply, and a chain open at the end fails",
        run: |h| {
            h.transfers(vec![
                with_flags(transfer(1, BANK, BOB, "1"), LINKED),
                transfer(2, BANK, 99, "1"),
                transfer(3, BANK, BOB, "1"),
                with_flags(transfer(4, BANK, BOB, "1"), LINKED),
                with_flags(transfer(5, BANK, BOB, "1"), LINKED),
            ])
        },
        expected: &[LinkedEventFailed, CreditAccountNotFound, Ok, LinkedEventFailed, LinkedEventChainOpen],
    },
    // ---------------------------------------------------------------- history
    Scenario {
        name: "history: an account flagged history keeps its balances after every change",
        run: |h| {
            let codes = h.transfers(vec![pending(1, ALICE, BOB, "30"), transfer(2, ALICE, BOB, "5")]);
            let history = h.ledger.storage().get_account_balances(ALICE, Window::first(10)).unwrap().items;
            let debits: Vec<_> =
                history.iter().map(|b| (b.debits_pending.0, b.debits_posted.0, b.credits_posted.0)).collect();
            assert_eq!(debits, [(0, 0, 10_000), (3_000, 0, 10_000), (3_000, 500, 10_000)]);
            assert!(h.ledger.storage().get_account_balances(BOB, Window::first(10)).is_err(), "Bob keeps no history");
            codes
        },
        expected: &[Ok, Ok],
    },
];

#[test]
fn every_scenario_gives_its_expected_codes() {
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut harness = Harness::new();
            (scenario.run)(&mut harness)
        }));
        match outcome {
            Result::Ok(codes) if codes == scenario.expected => {}
            Result::Ok(codes) => {
                failures.push(format!("{}: got {codes:?}, expected {:?}", scenario.name, scenario.expected))
            }
            Err(_) => failures.push(format!("{}: panicked (see above)", scenario.name)),
        }
    }
    assert!(failures.is_empty(), "{} scenario(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// The table must exercise every result code; a new code without a scenario fails here.
#[test]
fn the_table_covers_every_result_code() {
    let covered: BTreeSet<ResultCode> =
        SCENARIOS.iter().flat_map(|scenario| scenario.expected.iter().copied()).collect();
    let missing: Vec<_> =
        ResultCode::ALL.iter().filter(|code| !covered.contains(code)).map(|code| code.name()).collect();
    assert!(missing.is_empty(), "result codes without a scenario: {missing:?}");
}
