//! `expire_pending_transfers`: release pending transfers whose deadline has passed.
//!
//! Expiry happens only through this operation, at a position in the log, so every replica releases
//! the same transfers at the same point. The `n`-th transfer released gets timestamp
//! `batch_timestamp + n`, like the `n`-th event of any other batch.

use std::ops::ControlFlow;

use super::transfers::release_pending;
use crate::constants::EXPIRIES_PER_BATCH_MAX;
use crate::model::PendingStatus;
use crate::storage::Storage;
use crate::writer::LedgerWriter;

impl<S: Storage> LedgerWriter<S> {
    pub(crate) fn expire_pending_transfers(&mut self, timestamp: u64) -> Vec<u128> {
        let mut due = std::mem::take(&mut self.expiry_candidates);
        due.clear();
        self.storage.expiries_scan(timestamp, &mut |expiry| {
            due.push(*expiry);
            if due.len() == EXPIRIES_PER_BATCH_MAX { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        let mut expired = Vec::with_capacity(due.len());
        for (index, (expires_at, pending_id)) in due.iter().copied().enumerate() {
            let expiry_timestamp = timestamp + index as u64;
            let pending = self.storage.transfer_get(pending_id).expect("an indexed expiry has its transfer");
            assert_eq!(pending.expires_at(), Some(expires_at));
            assert_eq!(self.storage.pending_status_get(pending_id), Some(PendingStatus::Pending));
            let (debit, credit) = self.accounts_of(&pending);
            let (debit_after, credit_after) = release_pending(&pending, &debit, &credit, None);
            self.write_account_update(&debit, &debit_after, expiry_timestamp);
            self.write_account_update(&credit, &credit_after, expiry_timestamp);
            self.write_pending_status(pending_id, PendingStatus::Expired { timestamp: expiry_timestamp });
            self.write_expiry_remove(expires_at, pending_id);
            crate::codec::Put::put_u128(self.digest.buffer(), pending_id);
            self.fingerprint(pending.amount, &debit_after, &credit_after);
            self.digest.end_record();
            expired.push(pending_id);
        }
        self.expiry_candidates = due;
        expired
    }
}
