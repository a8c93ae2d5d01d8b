//! Lookups and paged listings.

mod support;

use support::*;
use tally_state_machine::LedgerQueries;
use tally_state_machine::constants::{LOOKUP_IDS_MAX, QUERY_RESULTS_MAX, QUERY_SCAN_MAX};
use tally_state_machine::{
    AccountTransfersFilter, FieldFilter, NewTransfer, QueryError, ResultCode, Transfer, TransferFlags, Window,
};

fn ids(transfers: &[Transfer]) -> Vec<u128> {
    transfers.iter().map(|transfer| transfer.id).collect()
}

/// Bob receives 1..=5 from the bank and pays 6 to Carol's counterpart (the bank).
fn harness_with_history() -> Harness {
    let mut harness = Harness::new();
    let mut events: Vec<_> = (1..=5u128)
        .map(|id| NewTransfer { code: u16::try_from(id).unwrap(), ..transfer(id, BANK, BOB, "1") })
        .collect();
    events.push(NewTransfer { user_data_64: 42, ..transfer(6, BOB, BANK, "1") });
    assert!(harness.transfers(events).iter().all(|code| *code == ResultCode::Ok));
    harness
}

#[test]
fn lookups_answer_in_the_order_asked() {
    let harness = harness_with_history();
    let found = harness.ledger.storage().lookup_transfers(&[3, 99, 1]).unwrap();
    assert_eq!(found.iter().map(|t| t.map(|t| t.id)).collect::<Vec<_>>(), [Some(3), None, Some(1)]);
    let accounts = harness.ledger.storage().lookup_accounts(&[BOB, 0]).unwrap();
    assert_eq!((accounts[0].map(|a| a.id), accounts[1]), (Some(BOB), None));
    let too_many = vec![1u128; LOOKUP_IDS_MAX + 1];
    assert_eq!(
        harness.ledger.storage().lookup_transfers(&too_many),
        Err(QueryError::TooManyIds { count: LOOKUP_IDS_MAX + 1, max: LOOKUP_IDS_MAX })
    );
}

#[test]
fn account_transfers_filter_by_side_fields_and_window() {
    let harness = harness_with_history();
    let all = AccountTransfersFilter::all(BOB, Window::first(100));
    let get = |filter| ids(&harness.ledger.storage().get_account_transfers(filter).unwrap().items);
    assert_eq!(get(all), [1, 2, 3, 4, 5, 6]);
    assert_eq!(get(AccountTransfersFilter { debits: false, ..all }), [1, 2, 3, 4, 5]);
    assert_eq!(get(AccountTransfersFilter { credits: false, ..all }), [6]);
    assert_eq!(get(AccountTransfersFilter { code: Some(3), ..all }), [3]);
    assert_eq!(get(AccountTransfersFilter { user_data_64: Some(42), ..all }), [6]);
    assert_eq!(get(AccountTransfersFilter { window: Window::last(2), ..all }), [6, 5]);
    let third = harness.ledger.storage().lookup_transfers(&[3]).unwrap()[0].unwrap().timestamp;
    let window = Window { timestamp_min: Some(third), timestamp_max: Some(third + 1), limit: 10, reversed: false };
    assert_eq!(get(AccountTransfersFilter { window, ..all }), [3, 4]);
}

#[test]
fn pages_chain_through_their_cursors() {
    let harness = harness_with_history();
    for reversed in [false, true] {
        let mut seen = Vec::new();
        let mut window = Window { reversed, ..Window::first(4) };
        loop {
            let page =
                harness.ledger.storage().get_account_transfers(AccountTransfersFilter::all(BOB, window)).unwrap();
            seen.extend(ids(&page.items));
            match page.cursor {
                Some(cursor) if reversed => window.timestamp_max = Some(cursor),
                Some(cursor) => window.timestamp_min = Some(cursor),
                None => break,
            }
        }
        let expected: Vec<u128> = if reversed { (1..=6).rev().collect() } else { (1..=6).collect() };
        assert_eq!(seen, expected, "reversed: {reversed}");
    }
}

#[test]
fn accounts_and_transfers_are_queried_by_field() {
    let harness = harness_with_history();
    let usd = FieldFilter { ledger: Some(USD), ..FieldFilter::default() };
    let accounts = harness.ledger.storage().query_accounts(usd, Window::first(100)).unwrap().items;
    assert_eq!(accounts.iter().map(|a| a.id).collect::<Vec<_>>(), [BANK, ALICE, BOB, CAROL, USD_LIQUIDITY]);
    let by_code = FieldFilter { code: Some(4), ..FieldFilter::default() };
    assert_eq!(ids(&harness.ledger.storage().query_transfers(by_code, Window::first(10)).unwrap().items), [4]);
    let ledgers = harness.ledger.storage().query_ledgers(Window::last(10)).unwrap().items;
    assert_eq!(ledgers.iter().map(|l| l.id).collect::<Vec<_>>(), [JPY, USD]);
}

#[test]
fn a_sparse_filter_stops_at_the_scan_budget_and_hands_back_a_cursor() {
    let mut harness = Harness::new();
    let total = QUERY_SCAN_MAX + 10;
    let mut next_id = 1u128;
    while next_id as usize <= total {
        let batch: Vec<_> = (next_id..next_id + 8_000)
            .filter(|id| *id as usize <= total)
            .map(|id| transfer(id, BANK, BOB, "0.01"))
            .collect();
        next_id += batch.len() as u128;
        harness.transfers(batch);
    }
    assert_eq!(
        harness.transfers(vec![NewTransfer { code: 9, ..transfer(next_id, BANK, BOB, "0.01") }]),
        [ResultCode::Ok]
    );
    let rare = FieldFilter { code: Some(9), ..FieldFilter::default() };
    let first = harness.ledger.storage().query_transfers(rare, Window::first(10)).unwrap();
    assert!(first.items.is_empty() && first.cursor.is_some(), "the budget stops the scan before the match");
    let window = Window { timestamp_min: first.cursor, ..Window::first(10) };
    let second = harness.ledger.storage().query_transfers(rare, window).unwrap();
    assert_eq!((ids(&second.items), second.cursor), (vec![next_id], None));
}

#[test]
fn malformed_queries_are_refused_with_the_reason() {
    let harness = harness_with_history();
    let ledger = &harness.ledger;
    let all = AccountTransfersFilter::all(BOB, Window::first(10));
    let limit = |limit| AccountTransfersFilter { window: Window::first(limit), ..all };
    assert_eq!(
        ledger.storage().get_account_transfers(limit(0)),
        Err(QueryError::LimitOutOfRange { limit: 0, max: QUERY_RESULTS_MAX })
    );
    assert!(matches!(
        ledger.storage().get_account_transfers(limit(QUERY_RESULTS_MAX + 1)),
        Err(QueryError::LimitOutOfRange { .. })
    ));
    let inverted = Window { timestamp_min: Some(5), timestamp_max: Some(4), ..Window::first(1) };
    assert_eq!(
        ledger.storage().query_accounts(FieldFilter::default(), inverted),
        Err(QueryError::TimestampRangeInverted { min: 5, max: 4 })
    );
    assert_eq!(
        ledger.storage().get_account_transfers(AccountTransfersFilter { account_id: 0, ..all }),
        Err(QueryError::AccountIdInvalid)
    );
    assert_eq!(
        ledger.storage().get_account_transfers(AccountTransfersFilter { debits: false, credits: false, ..all }),
        Err(QueryError::NoSideSelected)
    );
    assert_eq!(ledger.storage().get_account_balances(99, Window::first(1)), Err(QueryError::AccountNotFound(99)));
    assert_eq!(
        ledger.storage().get_account_balances(BOB, Window::first(1)),
        Err(QueryError::AccountHistoryNotKept(BOB))
    );
}

#[test]
fn pending_status_follows_a_pending_transfer() {
    let mut harness = Harness::new();
    assert_eq!(harness.ledger.storage().pending_status(1), None);
    harness
        .transfers(vec![with_flags(transfer(1, BANK, BOB, "1"), TransferFlags::PENDING), transfer(2, BANK, BOB, "1")]);
    assert_eq!(harness.ledger.storage().pending_status(2), None, "only pending transfers have a status");
    assert!(harness.ledger.storage().pending_status(1).is_some());
}
