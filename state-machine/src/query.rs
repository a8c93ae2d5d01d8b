//! Read-only queries: lookups by id, an account's transfers and balance history, and filtered
//! listings of accounts and transfers. Every query is bounded twice: by the page size it returns
//! (`limit`, at most `QUERY_RESULTS_MAX`) and by the records it may examine (`QUERY_SCAN_MAX`).
//! When either bound stops it early, the page carries a cursor to continue from.

use std::ops::ControlFlow;

use crate::constants::{LOOKUP_IDS_MAX, QUERY_RESULTS_MAX, QUERY_SCAN_MAX};
use crate::flags::AccountFlags;
use crate::model::{Account, AccountBalance, Ledger, PendingStatus, Transfer, TransferFailure};
use crate::storage::{Direction, StorageRead, TimestampRange};

/// Why a query was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{count} ids requested, above the limit of {max}")]
    TooManyIds { count: usize, max: usize },
    #[error("limit must be between 1 and {max}, not {limit}")]
    LimitOutOfRange { limit: u32, max: u32 },
    #[error("timestamp_min {min} is above timestamp_max {max}")]
    TimestampRangeInverted { min: u64, max: u64 },
    #[error("account id must not be 0 or 2^128 - 1")]
    AccountIdInvalid,
    #[error("choose debits, credits or both")]
    NoSideSelected,
    #[error("account {0} does not exist")]
    AccountNotFound(u128),
    #[error("account {0} does not keep balance history (create it with the history flag)")]
    AccountHistoryNotKept(u128),
}

/// Where a page of results ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `Some(t)` when more results may follow: ask again with `timestamp_min = t` (or
    /// `timestamp_max = t` when reversed). `None` when the range is exhausted.
    pub cursor: Option<u64>,
}

/// The window and order of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Inclusive; `None` is unbounded.
    pub timestamp_min: Option<u64>,
    pub timestamp_max: Option<u64>,
    pub limit: u32,
    /// Newest first.
    pub reversed: bool,
}

impl Window {
    /// The first `limit` records, oldest first.
    pub fn first(limit: u32) -> Window {
        Window { timestamp_min: None, timestamp_max: None, limit, reversed: false }
    }

    /// The last `limit` records, newest first.
    pub fn last(limit: u32) -> Window {
        Window { reversed: true, ..Window::first(limit) }
    }

    fn check(&self) -> Result<TimestampRange, QueryError> {
        if self.limit == 0 || self.limit > QUERY_RESULTS_MAX {
            return Err(QueryError::LimitOutOfRange { limit: self.limit, max: QUERY_RESULTS_MAX });
        }
        let range =
            TimestampRange { min: self.timestamp_min.unwrap_or(0), max: self.timestamp_max.unwrap_or(u64::MAX) };
        if range.min > range.max {
            return Err(QueryError::TimestampRangeInverted { min: range.min, max: range.max });
        }
        Ok(range)
    }

    fn direction(&self) -> Direction {
        if self.reversed { Direction::Descending } else { Direction::Ascending }
    }
}

/// Which of an account's transfers to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountTransfersFilter {
    pub account_id: u128,
    /// Transfers that debit the account.
    pub debits: bool,
    /// Transfers that credit the account.
    pub credits: bool,
    pub code: Option<u16>,
    pub user_data_128: Option<u128>,
    pub user_data_64: Option<u64>,
    pub user_data_32: Option<u32>,
    pub window: Window,
}

impl AccountTransfersFilter {
    /// Both sides, no field filter.
    pub fn all(account_id: u128, window: Window) -> AccountTransfersFilter {
        AccountTransfersFilter {
            account_id,
            debits: true,
            credits: true,
            code: None,
            user_data_128: None,
            user_data_64: None,
            user_data_32: None,
            window,
        }
    }
}

/// Which accounts or transfers to list: every field set must match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldFilter {
    pub ledger: Option<u32>,
    pub code: Option<u16>,
    pub user_data_128: Option<u128>,
    pub user_data_64: Option<u64>,
    pub user_data_32: Option<u32>,
}

impl FieldFilter {
    fn matches(&self, ledger: u32, code: u16, user_data: (u128, u64, u32)) -> bool {
        self.ledger.is_none_or(|wanted| wanted == ledger)
            && self.code.is_none_or(|wanted| wanted == code)
            && self.user_data_128.is_none_or(|wanted| wanted == user_data.0)
            && self.user_data_64.is_none_or(|wanted| wanted == user_data.1)
            && self.user_data_32.is_none_or(|wanted| wanted == user_data.2)
    }
}

/// Gathers one page from a storage scan, stopping at the page limit or the scan budget.
struct PageCollector<T> {
    items: Vec<T>,
    limit: usize,
    scanned: usize,
    last_timestamp: Option<u64>,
    stopped: bool,
}

impl<T: Copy> PageCollector<T> {
    fn new(limit: u32) -> PageCollector<T> {
        PageCollector { items: Vec::new(), limit: limit as usize, scanned: 0, last_timestamp: None, stopped: false }
    }

    fn offer(&mut self, item: &T, timestamp: u64, matches: bool) -> ControlFlow<()> {
        self.scanned += 1;
        self.last_timestamp = Some(timestamp);
        if matches {
            self.items.push(*item);
        }
        if self.items.len() == self.limit || self.scanned == QUERY_SCAN_MAX {
            self.stopped = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// The cursor continues just past the last record examined, in the scan's direction.
    fn finish(self, direction: Direction, range: TimestampRange) -> Page<T> {
        let cursor = match (self.stopped, self.last_timestamp, direction) {
            (true, Some(last), Direction::Ascending) if last < range.max => Some(last + 1),
            (true, Some(last), Direction::Descending) if last > range.min => Some(last - 1),
            _ => None,
        };
        Page { items: self.items, cursor }
    }
}

fn check_ids<T>(ids: &[T]) -> Result<(), QueryError> {
    if ids.len() > LOOKUP_IDS_MAX {
        return Err(QueryError::TooManyIds { count: ids.len(), max: LOOKUP_IDS_MAX });
    }
    Ok(())
}

/// The ledger's queries, for any store or read view: `use tally_state_machine::LedgerQueries`.
pub trait LedgerQueries: StorageRead {
    /// The ledgers with these ids, `None` where none exists, in the order asked.
    fn lookup_ledgers(&self, ids: &[u32]) -> Result<Vec<Option<Ledger>>, QueryError> {
        check_ids(ids)?;
        Ok(ids.iter().map(|id| self.ledger_get(*id)).collect())
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Option<Account>>, QueryError> {
        check_ids(ids)?;
        Ok(ids.iter().map(|id| self.account_get(*id)).collect())
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Option<Transfer>>, QueryError> {
        check_ids(ids)?;
        Ok(ids.iter().map(|id| self.transfer_get(*id)).collect())
    }

    /// The earliest deadline of a pending transfer still reserved. Once cluster time reaches it,
    /// the log should carry an `ExpirePendingTransfers` batch.
    fn expiry_next(&self) -> Option<u64> {
        let mut next = None;
        self.expiries_scan(u64::MAX, &mut |(expires_at, _)| {
            next = Some(*expires_at);
            ControlFlow::Break(())
        });
        next
    }

    /// Where a pending transfer stands; `None` if no pending transfer has this id.
    fn pending_status(&self, pending_id: u128) -> Option<PendingStatus> {
        self.pending_status_get(pending_id)
    }

    /// The recorded failure of a transfer id (see `id_already_failed`).
    fn transfer_failure(&self, id: u128) -> Option<TransferFailure> {
        self.transfer_failure_get(id)
    }

    /// Ledgers in creation order.
    fn query_ledgers(&self, window: Window) -> Result<Page<Ledger>, QueryError> {
        let range = window.check()?;
        let mut page = PageCollector::new(window.limit);
        self.ledgers_scan(range, window.direction(), &mut |ledger| page.offer(ledger, ledger.timestamp, true));
        Ok(page.finish(window.direction(), range))
    }

    /// Accounts whose fields match `filter`, in creation order.
    fn query_accounts(&self, filter: FieldFilter, window: Window) -> Result<Page<Account>, QueryError> {
        let range = window.check()?;
        let mut page = PageCollector::new(window.limit);
        self.accounts_scan(range, window.direction(), &mut |account| {
            let user_data = (account.user_data_128, account.user_data_64, account.user_data_32);
            page.offer(account, account.timestamp, filter.matches(account.ledger, account.code, user_data))
        });
        Ok(page.finish(window.direction(), range))
    }

    /// Transfers whose fields match `filter`, in the order they were applied.
    fn query_transfers(&self, filter: FieldFilter, window: Window) -> Result<Page<Transfer>, QueryError> {
        let range = window.check()?;
        let mut page = PageCollector::new(window.limit);
        self.transfers_scan(range, window.direction(), &mut |transfer| {
            let user_data = (transfer.user_data_128, transfer.user_data_64, transfer.user_data_32);
            page.offer(transfer, transfer.timestamp, filter.matches(transfer.ledger, transfer.code, user_data))
        });
        Ok(page.finish(window.direction(), range))
    }

    /// The transfers that debit and/or credit one account, in the order they were applied.
    fn get_account_transfers(&self, filter: AccountTransfersFilter) -> Result<Page<Transfer>, QueryError> {
        let range = filter.window.check()?;
        if filter.account_id == 0 || filter.account_id == u128::MAX {
            return Err(QueryError::AccountIdInvalid);
        }
        if !filter.debits && !filter.credits {
            return Err(QueryError::NoSideSelected);
        }
        let fields = FieldFilter {
            ledger: None,
            code: filter.code,
            user_data_128: filter.user_data_128,
            user_data_64: filter.user_data_64,
            user_data_32: filter.user_data_32,
        };
        let direction = filter.window.direction();
        let mut page = PageCollector::new(filter.window.limit);
        self.account_transfers_scan(filter.account_id, range, direction, &mut |transfer| {
            let side = (filter.debits && transfer.debit_account_id == filter.account_id)
                || (filter.credits && transfer.credit_account_id == filter.account_id);
            let user_data = (transfer.user_data_128, transfer.user_data_64, transfer.user_data_32);
            page.offer(transfer, transfer.timestamp, side && fields.matches(transfer.ledger, transfer.code, user_data))
        });
        Ok(page.finish(direction, range))
    }

    /// The balances of an account flagged `history` after each change, in time order.
    fn get_account_balances(&self, account_id: u128, window: Window) -> Result<Page<AccountBalance>, QueryError> {
        let range = window.check()?;
        if account_id == 0 || account_id == u128::MAX {
            return Err(QueryError::AccountIdInvalid);
        }
        let account = self.account_get(account_id).ok_or(QueryError::AccountNotFound(account_id))?;
        if !account.flags.contains(AccountFlags::HISTORY) {
            return Err(QueryError::AccountHistoryNotKept(account_id));
        }
        let mut page = PageCollector::new(window.limit);
        self.account_balances_scan(account_id, range, window.direction(), &mut |balance| {
            page.offer(balance, balance.timestamp, true)
        });
        Ok(page.finish(window.direction(), range))
    }
}

impl<T: StorageRead + ?Sized> LedgerQueries for T {}
