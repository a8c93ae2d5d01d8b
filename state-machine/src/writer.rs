//! The ledger's writes: every write an event makes goes through [`LedgerWriter`], which pairs it
//! with its undo while a linked chain is open, so that a failed chain can be taken back whole.
//!
//! Owns the storage, the digest being written and the undo log. It must never decide whether an
//! event is valid (that is `apply`'s) or where a chain begins and ends (that is the state
//! machine's, which calls [`LedgerWriter::begin_chain`] and [`LedgerWriter::end_chain`]).

use crate::digest::DigestWriter;
use crate::flags::AccountFlags;
use crate::model::{Account, AccountBalance, PendingStatus, Transfer};
use crate::storage::Storage;

/// The storage of a ledger with the digest and the undo log of the batch being applied.
#[derive(Debug)]
pub(crate) struct LedgerWriter<S: Storage> {
    pub(crate) storage: S,
    pub(crate) digest: DigestWriter,
    /// Inverse operations of the linked chain being applied, newest last. Reused across batches so
    /// that applying allocates nothing per event.
    undo: Vec<Undo>,
    chain_open: bool,
    /// Reused by expiry scans.
    pub(crate) expiry_candidates: Vec<(u64, u128)>,
}

/// How to take back one write of a linked chain that failed.
#[derive(Debug)]
enum Undo {
    AccountInserted(Account),
    AccountUpdated { before: Account },
    TransferInserted(Transfer),
    PendingStatusPut { pending_id: u128, before: Option<PendingStatus> },
    ExpiryInserted { expires_at: u64, pending_id: u128 },
    ExpiryRemoved { expires_at: u64, pending_id: u128 },
    BalanceInserted { account_id: u128, balance: AccountBalance },
}

impl<S: Storage> LedgerWriter<S> {
    pub(crate) fn new(storage: S) -> LedgerWriter<S> {
        LedgerWriter {
            storage,
            digest: DigestWriter::new(),
            undo: Vec::new(),
            chain_open: false,
            expiry_candidates: Vec::new(),
        }
    }

    /// From now on every write is remembered, until the chain ends or is rolled back.
    pub(crate) fn begin_chain(&mut self) {
        assert!(!self.chain_open && self.undo.is_empty(), "a linked chain began inside another");
        self.chain_open = true;
    }

    /// The chain's writes stay.
    pub(crate) fn end_chain(&mut self) {
        self.undo.clear();
        self.chain_open = false;
    }

    pub(crate) fn assert_no_chain(&self) {
        assert!(!self.chain_open && self.undo.is_empty(), "a linked chain left open");
    }

    /// Takes back every write of the open chain, newest first.
    pub(crate) fn rollback_chain(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::AccountInserted(account) => self.storage.account_rollback_insert(&account),
                Undo::AccountUpdated { before } => self.storage.account_update(&before),
                Undo::TransferInserted(transfer) => self.storage.transfer_rollback_insert(&transfer),
                Undo::PendingStatusPut { pending_id, before: Some(status) } => {
                    self.storage.pending_status_put(pending_id, status)
                }
                Undo::PendingStatusPut { pending_id, before: None } => self.storage.pending_status_remove(pending_id),
                Undo::ExpiryInserted { expires_at, pending_id } => self.storage.expiry_remove(expires_at, pending_id),
                Undo::ExpiryRemoved { expires_at, pending_id } => self.storage.expiry_insert(expires_at, pending_id),
                Undo::BalanceInserted { account_id, balance } => {
                    self.storage.account_balance_rollback_insert(account_id, &balance)
                }
            }
        }
    }

    // Every write of an event goes through the helpers below, so that a write inside a linked chain
    // is always paired with its undo.

    fn remember(&mut self, undo: Undo) {
        if self.chain_open {
            self.undo.push(undo);
        }
    }

    pub(crate) fn write_account_insert(&mut self, account: &Account) {
        self.storage.account_insert(account);
        self.remember(Undo::AccountInserted(*account));
    }

    /// Stores an account's new balances and flags, and its history entry when it keeps history.
    pub(crate) fn write_account_update(&mut self, before: &Account, after: &Account, timestamp: u64) {
        assert_eq!(before.id, after.id);
        assert!(after.within_limits(), "account {} breaks its balance limit", after.id);
        self.storage.account_update(after);
        self.remember(Undo::AccountUpdated { before: *before });
        if after.flags.contains(AccountFlags::HISTORY) {
            let balance = after.balance(timestamp);
            self.storage.account_balance_insert(after.id, &balance);
            self.remember(Undo::BalanceInserted { account_id: after.id, balance });
        }
    }

    pub(crate) fn write_transfer_insert(&mut self, transfer: &Transfer) {
        self.storage.transfer_insert(transfer);
        self.remember(Undo::TransferInserted(*transfer));
    }

    pub(crate) fn write_pending_status(&mut self, pending_id: u128, status: PendingStatus) {
        let before = if self.chain_open { self.storage.pending_status_get(pending_id) } else { None };
        self.storage.pending_status_put(pending_id, status);
        self.remember(Undo::PendingStatusPut { pending_id, before });
    }

    pub(crate) fn write_expiry_insert(&mut self, expires_at: u64, pending_id: u128) {
        self.storage.expiry_insert(expires_at, pending_id);
        self.remember(Undo::ExpiryInserted { expires_at, pending_id });
    }

    pub(crate) fn write_expiry_remove(&mut self, expires_at: u64, pending_id: u128) {
        self.storage.expiry_remove(expires_at, pending_id);
        self.remember(Undo::ExpiryRemoved { expires_at, pending_id });
    }

    pub(crate) fn assert_not_in_chain(&self) {
        assert!(!self.chain_open, "this write cannot be undone and must not happen inside a chain");
    }
}
