//! The account index: each account's transfers by timestamp, as sorted runs merged into rows.
//!
//! Owns when runs are written and merged, and how a merge is spread over the commits that follow
//! (see the store's module documentation). It writes only inside a commit's transaction, and must
//! never be read for a scan except through a read view, which knows how far a merge has got.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::ControlFlow;

use redb::{ReadOnlyTable, ReadableTable};
use tally_state_machine::Transfer;
use tally_state_machine::storage::Direction;

use super::encoding::postings;
use super::schema::*;

/// Timestamps per merged account-index row: 4,032 bytes, so that a full row with its key and redb's
/// leaf header fits one 4 KiB page (512 took an 8 KiB page each).
pub const TIMESTAMPS_PER_CHUNK: usize = 504;

/// Postings (two per transfer) gathered in runs before they are merged into the account index.
/// About 128 full batches (16 MiB of runs). A merge writes one row per account it touches, and
/// each row lands in that account's own B-tree leaf, so a merge rewrites about one 4 KiB leaf per
/// account whatever its size: merging four times less often than at 2^19 took the seven-replica
/// cluster from 129-137 k to 154-162 k transfers/s (BENCHMARKS.md). Merging twice as rarely made
/// each merge longer and the slowest requests slower (BENCHMARKS.md, issue 5, fourth round).
pub const INDEX_MERGE_POSTINGS_DEFAULT: usize = 1 << 21;

/// Runs kept at most, whatever their size: an account's scan binary-searches every run, so small
/// batches must not pile up unmerged.
pub const INDEX_RUNS_MAX: usize = 64;

/// A merge is spread over the commits that follow it, each merging the postings of the next
/// accounts: at least this fraction of the merge, and at least twice what the commit adds, so that
/// merges keep ahead of the runs. A merge made in one commit kept a follower busy for 0.3-3.5 s,
/// and with no merges the seven-replica cluster's batched p99 was 71-87 ms instead of 113-128 ms
/// (BENCHMARKS.md, issue 5, fourth round).
pub const INDEX_MERGE_SLICES: usize = 8;

/// An account-index merge under way. The accounts below `next_account` have their postings of the
/// runs up to `last_run` in merged rows already, so scans skip them in those runs; every later run
/// holds later timestamps, so scans still read merged rows first and runs after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IndexMerge {
    pub(super) last_run: u64,
    pub(super) next_account: u128,
}

impl IndexMerge {
    pub(super) const BYTES: usize = 24;

    pub(super) fn encode(&self) -> [u8; IndexMerge::BYTES] {
        let mut bytes = [0; IndexMerge::BYTES];
        bytes[..8].copy_from_slice(&self.last_run.to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_account.to_le_bytes());
        bytes
    }

    pub(super) fn decode(bytes: &[u8]) -> IndexMerge {
        assert_eq!(bytes.len(), IndexMerge::BYTES, "an account-index merge record of {} bytes is corrupt", bytes.len());
        IndexMerge {
            last_run: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            next_account: u128::from_le_bytes(bytes[8..].try_into().expect("16 bytes")),
        }
    }

    /// Whether `account`'s postings in run `run` are in merged rows already.
    pub(super) fn merged(&self, run: u64, account: u128) -> bool {
        run <= self.last_run && account < self.next_account
    }
}

/// A merge under way, with how many runs and postings it merges (to count off when it ends).
#[derive(Clone, Copy, Debug)]
pub(super) struct MergeUnderWay {
    pub(super) merge: IndexMerge,
    pub(super) runs: usize,
    pub(super) postings: usize,
}

/// The runs of account-index postings not yet merged, and when to merge them.
#[derive(Debug)]
pub(super) struct AccountIndexRuns {
    pub(super) runs: usize,
    pub(super) postings: usize,
    pub(super) merge_postings: usize,
    /// `(phase, phases)`: the first merge after the store opened comes after `(phase + 1) /
    /// phases` of `merge_postings` ([`RedbLedgerStore::stagger_index_merges`]).
    pub(super) first_merge_phase: Option<(usize, usize)>,
    pub(super) merging: Option<MergeUnderWay>,
    /// The newest run's key: a new run's key must be larger.
    pub(super) last_key: Option<u64>,
    /// Reused to build a run and to merge runs: `(account id, timestamp)`, sorted as integers
    /// (much cheaper than comparing the 24-byte encodings).
    pub(super) buffer: Vec<(u128, u64)>,
    /// Reused to encode a run.
    pub(super) encoded: Vec<u8>,
}

impl AccountIndexRuns {
    pub(super) fn load(runs_table: &ReadOnlyTable<u64, Bytes>, merge: Option<IndexMerge>) -> AccountIndexRuns {
        let mut index = AccountIndexRuns {
            runs: 0,
            postings: 0,
            merge_postings: INDEX_MERGE_POSTINGS_DEFAULT,
            first_merge_phase: None,
            merging: merge.map(|merge| MergeUnderWay { merge, runs: 0, postings: 0 }),
            last_key: None,
            buffer: Vec::new(),
            encoded: Vec::new(),
        };
        let entries = fatal(runs_table.range::<u64>(..), "scanning account-index runs");
        let _ = scan_range(entries, Direction::Ascending, |key, run| {
            let postings = postings::Run::parse(run).len();
            index.runs += 1;
            index.postings += postings;
            index.last_key = Some(key);
            if let Some(merging) = &mut index.merging
                && key <= merging.merge.last_run
            {
                merging.runs += 1;
                merging.postings += postings;
            }
            ControlFlow::Continue(())
        });
        index
    }

    /// Writes the postings of a batch's transfers as one run. Once the runs have grown past their
    /// limits, a merge of all of them begins, and this and the following commits each merge the
    /// postings of the next accounts in them ([`INDEX_MERGE_SLICES`]); the runs at its limit, a
    /// merge finishes at once.
    pub(super) fn append(
        &mut self,
        transaction: &redb::WriteTransaction,
        transfers: &[Transfer],
    ) -> Result<(), redb::Error> {
        let Some(first) = transfers.first() else { return Ok(()) };
        let key = first.timestamp;
        assert!(self.last_key.is_none_or(|last| last < key), "account-index runs out of timestamp order");
        self.buffer.clear();
        for transfer in transfers {
            self.buffer.push((transfer.debit_account_id, transfer.timestamp));
            self.buffer.push((transfer.credit_account_id, transfer.timestamp));
        }
        self.buffer.sort_unstable();
        postings::encode(&self.buffer, &mut self.encoded);
        let mut runs_table = transaction.open_table(ACCOUNT_TRANSFER_RUNS)?;
        runs_table.insert(key, self.encoded.as_slice())?;
        self.runs += 1;
        self.postings += self.buffer.len();
        self.last_key = Some(key);
        let mut merging = match self.merging {
            Some(merging) => merging,
            None => {
                let threshold = match self.first_merge_phase {
                    Some((phase, phases)) => (self.merge_postings / phases * (phase + 1)).max(1),
                    None => self.merge_postings,
                };
                if self.postings < threshold && self.runs < INDEX_RUNS_MAX {
                    return Ok(());
                }
                let merge = IndexMerge { last_run: key, next_account: 0 };
                MergeUnderWay { merge, runs: self.runs, postings: self.postings }
            }
        };
        let budget = if self.runs >= INDEX_RUNS_MAX {
            usize::MAX
        } else {
            (merging.postings / INDEX_MERGE_SLICES).max(2 * self.buffer.len())
        };
        let next_account = merge_slice(transaction, &runs_table, merging.merge, budget)?;
        let mut meta = transaction.open_table(META)?;
        match next_account {
            Some(next_account) => {
                merging.merge.next_account = next_account;
                meta.insert(META_INDEX_MERGE, merging.merge.encode().as_slice())?;
                self.merging = Some(merging);
            }
            None => {
                meta.remove(META_INDEX_MERGE)?;
                runs_table.retain(|run, _| run > merging.merge.last_run)?;
                self.runs -= merging.runs;
                self.postings -= merging.postings;
                self.merging = None;
                self.first_merge_phase = None;
            }
        }
        Ok(())
    }
}

/// Merges into rows the postings that the runs up to `merge.last_run` hold for the accounts from
/// `merge.next_account` on, account by account, until about `budget` postings are merged; returns
/// the first account left, `None` once every account is merged. Each run is sorted by account, and
/// every run's timestamps are later than those of the run before it, so an account's timestamps
/// taken run after run are in order: the runs' account directories are walked together, and no
/// posting is sorted or decoded (sorting 2 M postings took 0.1-0.5 s of a merge, BENCHMARKS.md).
pub(super) fn merge_slice(
    transaction: &redb::WriteTransaction,
    runs_table: &redb::Table<'_, u64, Bytes>,
    merge: IndexMerge,
    budget: usize,
) -> Result<Option<u128>, redb::Error> {
    let stored =
        runs_table.range(..=merge.last_run)?.map(|entry| entry.map(|(_, run)| run)).collect::<Result<Vec<_>, _>>()?;
    let runs: Vec<postings::Run<'_>> = stored.iter().map(|run| postings::Run::parse(run.value())).collect();
    let mut positions: Vec<usize> = runs.iter().map(|run| run.position_from(merge.next_account)).collect();
    // The next account of each run, smallest first; ties in run order.
    let mut heads: BinaryHeap<Reverse<(u128, usize)>> = runs
        .iter()
        .enumerate()
        .filter_map(|(run, postings)| postings.account_at(positions[run]).map(|account| Reverse((account, run))))
        .collect();
    let mut chunks = transaction.open_table(ACCOUNT_TRANSFER_CHUNKS)?;
    let mut timestamps: Vec<u8> = Vec::new();
    let mut merged = 0_usize;
    while let Some(Reverse((account, _))) = heads.peek().copied() {
        if merged >= budget {
            return Ok(Some(account));
        }
        timestamps.clear();
        while let Some(&Reverse((next, run))) = heads.peek()
            && next == account
        {
            heads.pop();
            timestamps.extend_from_slice(runs[run].timestamps_at(positions[run]).as_flattened());
            positions[run] += 1;
            if let Some(following) = runs[run].account_at(positions[run]) {
                heads.push(Reverse((following, run)));
            }
        }
        merged += timestamps.len() / 8;
        for piece in timestamps.chunks(TIMESTAMPS_PER_CHUNK * 8) {
            let first = u64::from_le_bytes(piece[..8].try_into().expect("a whole timestamp"));
            chunks.insert((account, first), piece)?;
        }
    }
    Ok(None)
}
