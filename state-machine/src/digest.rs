//! The running state digest: a blake3 hash chain over every applied batch.
//!
//! `digest_n = blake3_derive_key(CONTEXT, digest_{n-1} || batch header || per-event records || results)`
//! where each per-event record is the event's canonical encoding, the balances it produced (when
//! it applied) and its provisional result code. Because the balances enter the hash, two replicas
//! whose states differ produce different digests at the first batch that touches the difference,
//! not only when a result code happens to differ.

use crate::codec::{Put, put_balances};
use crate::model::Account;
use crate::result::ResultCode;

const CONTEXT: &str = "tally 2026-11 ledger state digest v1";

/// Bytes gathered before they are handed to blake3. Large updates let blake3 hash many 1 KiB
/// chunks at once with SIMD; small per-event updates would be several times slower.
const BUFFER_FLUSH_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct DigestWriter {
    hasher: blake3::Hasher,
    buffer: Vec<u8>,
}

impl DigestWriter {
    pub(crate) fn new() -> DigestWriter {
        DigestWriter {
            hasher: blake3::Hasher::new_derive_key(CONTEXT),
            buffer: Vec::with_capacity(2 * BUFFER_FLUSH_BYTES),
        }
    }

    pub(crate) fn begin(&mut self, previous: &[u8; 32]) {
        self.hasher.reset();
        self.buffer.clear();
        self.buffer.put(*previous);
    }

    /// The buffer the current event's record is appended to.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// An account's state after an event: its flags and balances. (Its id is already in the
    /// event's encoding.)
    #[inline]
    pub(crate) fn put_account(&mut self, account: &Account) {
        self.buffer.put_u16(account.flags.bits());
        put_balances(&mut self.buffer, account);
    }

    /// Ends an event's record with its code.
    pub(crate) fn put_code(&mut self, code: ResultCode) {
        self.buffer.put_u8(code as u8);
        self.end_record();
    }

    /// Hands the gathered bytes to blake3 once there are enough of them.
    pub(crate) fn end_record(&mut self) {
        if self.buffer.len() >= BUFFER_FLUSH_BYTES {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
    }

    pub(crate) fn finish(&mut self, results: &[ResultCode]) -> [u8; 32] {
        self.buffer.extend(results.iter().map(|code| *code as u8));
        self.hasher.update(&self.buffer);
        self.buffer.clear();
        *self.hasher.finalize().as_bytes()
    }
}

/// Lower-case hex of a digest, for logs and operators.
pub fn digest_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}
