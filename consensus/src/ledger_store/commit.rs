//! Writing a commit: the deferred batches taken out of the overlay, in one redb transaction.
//!
//! Owns turning an overlay into rows (blocks, chunks, runs, the meta records) and committing them,
//! on whatever thread the caller chose, and the checkpoint's durable commit after them. It must
//! never touch the store's caches or read view: the store finishes a written commit itself
//! ([`RedbLedgerStore::finish_commit`](super::RedbLedgerStore::finish_commit)), under its owner's lock.

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, ReadableTable};
use tally_state_machine::codec::Record;
use tally_state_machine::{Account, StateMeta, Transfer};

use super::account_index::AccountIndexRuns;
use super::encoding::{TRANSFER_IDS_PER_CHUNK, TRANSFERS_PER_BLOCK, transfer_ids};
use super::overlay::Overlay;
use super::read_view::LedgerReadView;
use super::schema::*;

/// Whole batches taken out of a store's overlay to be written in one transaction, on any thread,
/// while the store applies more ([`RedbLedgerStore::begin_commit`]).
#[derive(Debug)]
pub struct LedgerCommit {
    pub(super) database: Arc<Database>,
    pub(super) overlay: Arc<Overlay>,
    pub(super) meta: Option<StateMeta>,
    pub(super) consensus: Option<Vec<u8>>,
    pub(super) durability: Durability,
    pub(super) index: Arc<Mutex<AccountIndexRuns>>,
}

/// A [`LedgerCommit`] written and committed, for its store to finish
/// ([`RedbLedgerStore::finish_commit`]).
#[derive(Debug)]
pub struct WrittenCommit {
    pub(super) overlay: Arc<Overlay>,
    /// The checkpoint record it made durable, if it was a checkpoint.
    pub(super) checkpoint: Option<Vec<u8>>,
}

impl LedgerCommit {
    /// Writes the batches and commits them. A store that cannot write stops the replica
    /// (fail-stop): the panic names what failed.
    pub fn write(self) -> WrittenCommit {
        let mut transaction = fatal(self.database.begin_write(), "beginning a write");
        fatal(transaction.set_durability(self.durability), "setting durability");
        let mut index = self.index.lock().expect("the index lock is never poisoned");
        let written =
            write_overlay(&transaction, &self.overlay, self.meta.as_ref(), self.consensus.as_deref(), &mut index);
        fatal(written, "writing a batch");
        drop(index);
        fatal(transaction.commit(), "committing a batch");
        WrittenCommit { overlay: self.overlay, checkpoint: None }
    }

    /// Writes the batches, then records the checkpoint that `record_for` makes from a view of
    /// exactly the state they leave, in a durable commit (fsync) that makes them durable too.
    /// Returns the written commit and that view. No other commit can come between the two: the
    /// store begins the next only once this one is finished.
    pub fn write_checkpoint(
        self,
        record_for: impl FnOnce(&LedgerReadView) -> Vec<u8>,
    ) -> (WrittenCommit, LedgerReadView) {
        let database = Arc::clone(&self.database);
        // The checkpoint's own commit below makes this one durable as well: one fsync.
        let batches = LedgerCommit { durability: Durability::None, ..self };
        let mut written = batches.write();
        let view = LedgerReadView::open(&database);
        let checkpoint = record_for(&view);
        let mut transaction = fatal(database.begin_write(), "beginning a checkpoint");
        fatal(transaction.set_durability(Durability::Immediate), "setting durability");
        {
            let mut meta = fatal(transaction.open_table(META), "opening a table");
            fatal(meta.insert(META_CHECKPOINT, checkpoint.as_slice()), "writing a checkpoint");
        }
        fatal(transaction.commit(), "committing a checkpoint");
        written.checkpoint = Some(checkpoint);
        (written, view)
    }
}

/// Encodes records into one reused buffer, so writing a batch allocates nothing per record.
#[derive(Default)]
pub(super) struct Encoder {
    pub(super) buffer: Vec<u8>,
}

impl Encoder {
    pub(super) fn bytes<T: Record>(&mut self, record: &T) -> &[u8] {
        self.buffer.clear();
        record.encode(&mut self.buffer);
        &self.buffer
    }
}

pub(super) fn write_overlay(
    transaction: &redb::WriteTransaction,
    overlay: &Overlay,
    meta: Option<&StateMeta>,
    consensus: Option<&[u8]>,
    index: &mut AccountIndexRuns,
) -> Result<(), redb::Error> {
    let mut encoder = Encoder::default();
    let mut ledgers = transaction.open_table(LEDGERS)?;
    let mut ledgers_by_time = transaction.open_table(LEDGERS_BY_TIME)?;
    for ledger in &overlay.ledgers {
        ledgers.insert(ledger.id, encoder.bytes(ledger))?;
        ledgers_by_time.insert(ledger.timestamp, ledger.id)?;
    }
    let mut accounts_by_time = transaction.open_table(ACCOUNTS_BY_TIME)?;
    for account in &overlay.accounts_created {
        accounts_by_time.insert(account.timestamp, account.id)?;
    }
    // Sorted, so that redb writes in key order (faster) and the file does not depend on the
    // overlay's hash order.
    let mut accounts: Vec<&Account> = overlay.accounts.values().collect();
    accounts.sort_unstable_by_key(|account| account.id);
    let mut accounts_table = transaction.open_table(ACCOUNTS)?;
    for account in accounts {
        accounts_table.insert(account.id, encoder.bytes(account))?;
    }
    let mut transfer_blocks = transaction.open_table(TRANSFER_BLOCKS)?;
    for block in overlay.transfers.chunks(TRANSFERS_PER_BLOCK) {
        encoder.buffer.clear();
        block.iter().for_each(|transfer| transfer.encode(&mut encoder.buffer));
        transfer_blocks.insert(block[0].timestamp, encoder.buffer.as_slice())?;
    }
    write_transfer_ids(transaction, &overlay.transfers)?;
    index.append(transaction, &overlay.transfers)?;
    let mut failures = transaction.open_table(FAILURES)?;
    let mut failures_by_time = transaction.open_table(FAILURES_BY_TIME)?;
    for failure in &overlay.failures {
        failures.insert(failure.id, encoder.bytes(failure))?;
        failures_by_time.insert(failure.timestamp, failure.id)?;
    }
    let mut statuses: Vec<_> = overlay.pending_statuses.iter().collect();
    statuses.sort_unstable_by_key(|(id, _)| **id);
    let mut pending_statuses = transaction.open_table(PENDING_STATUSES)?;
    for (id, status) in statuses {
        match status {
            Some(status) => pending_statuses.insert(*id, encoder.bytes(status))?,
            None => pending_statuses.remove(*id)?,
        };
    }
    let mut expiries = transaction.open_table(EXPIRIES)?;
    for expiry in &overlay.expiries_removed {
        expiries.remove(*expiry)?;
    }
    for expiry in &overlay.expiries_added {
        expiries.insert(*expiry, ())?;
    }
    let mut balances = transaction.open_table(BALANCES)?;
    for (account_id, balance) in &overlay.balances {
        balances.insert((*account_id, balance.timestamp), encoder.bytes(balance))?;
    }
    let mut seen: Vec<_> = overlay.requests_seen.iter().collect();
    seen.sort_unstable_by_key(|(key, _)| **key);
    let mut requests_seen = transaction.open_table(REQUESTS_SEEN)?;
    for (key, request) in seen {
        match request {
            Some(request) => requests_seen.insert(*key, request.to_bytes().as_slice())?,
            None => requests_seen.remove(*key)?,
        };
    }
    let mut requests_seen_due = transaction.open_table(REQUESTS_SEEN_DUE)?;
    for due in &overlay.requests_seen_due_removed {
        requests_seen_due.remove(*due)?;
    }
    for due in &overlay.requests_seen_due_added {
        requests_seen_due.insert(*due, ())?;
    }
    let mut meta_table = transaction.open_table(META)?;
    if let Some(registry) = &overlay.registry {
        meta_table.insert(META_REGISTRY, registry.to_bytes().as_slice())?;
    }
    if let Some(meta) = meta {
        meta_table.insert(META_STATE, encoder.bytes(meta))?;
    }
    if let Some(consensus) = consensus {
        meta_table.insert(META_CONSENSUS, consensus)?;
    }
    Ok(())
}

/// Adds the ids of `transfers` (none of them stored yet) to the transfer-id chunks. Ids in order
/// extend the last chunk and start new ones; an id that falls inside an existing chunk's range is
/// merged into that chunk, which is split if it outgrows [`TRANSFER_IDS_PER_CHUNK`].
pub(super) fn write_transfer_ids(
    transaction: &redb::WriteTransaction,
    transfers: &[Transfer],
) -> Result<(), redb::Error> {
    let mut entries: Vec<(u128, u64)> = transfers.iter().map(|transfer| (transfer.id, transfer.timestamp)).collect();
    if !entries.is_sorted_by_key(|entry| entry.0) {
        entries.sort_unstable_by_key(|entry| entry.0);
    }
    let mut table = transaction.open_table(TRANSFER_ID_CHUNKS)?;
    let mut merged: Vec<(u128, u64)> = Vec::new();
    let mut encoded: Vec<u8> = Vec::with_capacity(TRANSFER_IDS_PER_CHUNK * transfer_ids::ENTRY_BYTES);
    let mut rest = entries.as_slice();
    while let Some(&(first_id, _)) = rest.first() {
        // The chunk these ids join: the last one that starts at or below the first of them, or the
        // very first chunk when they all start above it.
        let target = match table.range(..=first_id)?.next_back() {
            Some(entry) => Some(entry?.0.value()),
            None => table.first()?.map(|(key, _)| key.value()),
        };
        // It takes every id below the start of the chunk after it.
        let next_start = match target {
            Some(key) => {
                table.range((Bound::Excluded(key), Bound::Unbounded))?.next().transpose()?.map(|(next, _)| next.value())
            }
            None => None,
        };
        let taken = next_start.map_or(rest.len(), |next| rest.partition_point(|entry| entry.0 < next));
        let (joining, later) = rest.split_at(taken);
        rest = later;
        merged.clear();
        if let Some(key) = target {
            let guard = table.get(key)?.expect("the chunk just found exists");
            let stored = transfer_ids::records(guard.value());
            let last_stored = transfer_ids::decode(stored.last().expect("a stored transfer-id chunk is never empty")).0;
            if stored.len() < TRANSFER_IDS_PER_CHUNK || joining[0].0 < last_stored {
                merged.extend(stored.iter().map(transfer_ids::decode));
                drop(guard);
                table.remove(key)?;
            }
            // A full chunk that every new id follows stays as it is.
        }
        let stored = merged.len();
        merged.extend_from_slice(joining);
        if stored > 0 && joining[0].0 < merged[stored - 1].0 {
            merged.sort_unstable_by_key(|entry| entry.0);
        }
        assert!(merged.windows(2).all(|pair| pair[0].0 < pair[1].0), "a transfer id stored twice");
        for piece in transfer_ids::split(&merged, TRANSFER_IDS_PER_CHUNK) {
            encoded.clear();
            piece.iter().for_each(|(id, timestamp)| encoded.extend_from_slice(&transfer_ids::encode(*id, *timestamp)));
            table.insert(piece[0].0, encoded.as_slice())?;
        }
    }
    Ok(())
}
