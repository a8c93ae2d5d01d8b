//! Snapshots: the whole ledger as one versioned byte stream.
//!
//! ```text
//! magic "TALLYSNP" | format version u32 | timestamp_last u64 | batches_applied u64 | digest [32]
//! records, each a tag byte and a fixed-size body, in four sections:
//!   1 ledger                      (creation order)
//!   2 account, 3 its balances     (creation order; history entries follow their account)
//!   4 transfer, 5 pending status  (apply order; a pending transfer's status follows it)
//!   6 transfer failure            (order recorded)
//!   7 registry                    (secured clusters, once changed: at most one; length-prefixed)
//!   8 seen request                (by deadline; length-prefixed)
//! 0 end | blake3 checksum [32] of every byte before it
//! ```
//! Writing streams from storage scans and reading streams into storage inserts, so neither holds
//! the ledger in memory twice. Restoring checks far more than the checksum: every reference,
//! every ordering, and every account's four balances recomputed from its transfers. A snapshot
//! that does not add up is refused with the first inconsistency, never installed.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::ops::ControlFlow;

use crate::codec::{self, DecodeError, Put, Reader};
use crate::constants::LEDGER_SCALE_MAX;
use crate::flags::{AccountFlags, TransferFlags};
use crate::model::{Account, StateMeta, Transfer};
use crate::registry::Registry;
use crate::signed::SeenRequest;
use crate::state_machine::StateMachine;
use crate::storage::{Direction, Storage, StorageRead, TimestampRange};

const MAGIC: &[u8; 8] = b"TALLYSNP";
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// Version 1 had no registry or seen requests; it is still read.
const SNAPSHOT_FORMAT_VERSION_OLDEST: u32 = 1;

/// Records restored between two `Storage::flush_writes`, which bounds what a buffering store holds.
const RESTORE_FLUSH_RECORDS: u64 = 65_536;

const TAG_END: u8 = 0;
const TAG_LEDGER: u8 = 1;
const TAG_ACCOUNT: u8 = 2;
const TAG_ACCOUNT_BALANCE: u8 = 3;
const TAG_TRANSFER: u8 = 4;
const TAG_PENDING_STATUS: u8 = 5;
const TAG_TRANSFER_FAILURE: u8 = 6;
const TAG_REGISTRY: u8 = 7;
const TAG_SEEN_REQUEST: u8 = 8;

/// The longest length-prefixed record: the registry at its limits (about 4,096 principals with
/// eight 1,952-byte keys each is 64 MiB; a length above this is refused before it is read).
const VARIABLE_RECORD_BYTES_MAX: usize = 80 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("not a Tally snapshot (bad magic bytes)")]
    NotASnapshot,
    #[error("snapshot format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("snapshot checksum mismatch: the file is corrupt or truncated")]
    ChecksumMismatch,
    #[error("snapshot record is malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
    #[error("restore needs empty storage")]
    StorageNotEmpty,
}

/// What a snapshot held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub ledgers: u64,
    pub accounts: u64,
    pub account_balances: u64,
    pub transfers: u64,
    pub transfer_failures: u64,
    /// Requests the window of seen request ids remembers.
    pub requests_seen: u64,
    pub bytes: u64,
}

/// The write buffer between a snapshot's records and its checksum.
const SNAPSHOT_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// The read buffer of a restore, hashed a buffer at a time.
const SNAPSHOT_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Passes bytes through while hashing them and counting them.
struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Hashing<T> {
        Hashing { inner, hasher: blake3::Hasher::new(), bytes: 0 }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buffer)?;
        self.hasher.update(&buffer[..written]);
        self.bytes += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a snapshot through a buffer of its own, hashing what was consumed a buffer at a time:
/// blake3 fed field by field went one chunk at a time, and a restore took 1.6 times as long.
struct HashingReader<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// The next unread byte of `buffer`, and the end of the bytes read into it.
    start: usize,
    end: usize,
    /// Bytes of `buffer` already hashed: the hasher lags behind `start` until a refill or the end.
    hashed: usize,
    /// Cleared once the hash is finished: what follows (the checksum) is not hashed.
    hashing: bool,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            buffer: vec![0; SNAPSHOT_READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            hashed: 0,
            hashing: true,
            hasher: blake3::Hasher::new(),
        }
    }

    fn hash_consumed(&mut self) {
        if self.hashing {
            self.hasher.update(&self.buffer[self.hashed..self.start]);
        }
        self.hashed = self.start;
    }

    /// Reads more into the emptied buffer; `false` at the end of the input.
    fn refill(&mut self) -> io::Result<bool> {
        self.hash_consumed();
        let read = loop {
            match self.inner.read(&mut self.buffer) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => break result?,
            }
        };
        (self.start, self.end, self.hashed) = (0, read, 0);
        Ok(read > 0)
    }

    /// A length-prefixed record's bytes.
    fn read_variable(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let length = u32::from_le_bytes(self.read_array()?) as usize;
        if length > VARIABLE_RECORD_BYTES_MAX {
            return Err(inconsistent(format!("a record of {length} bytes")));
        }
        let mut bytes = Vec::with_capacity(length);
        while bytes.len() < length {
            if self.start == self.end && !self.refill()? {
                return Err(SnapshotError::from(io::Error::from(io::ErrorKind::UnexpectedEof)));
            }
            let taken = (length - bytes.len()).min(self.end - self.start);
            bytes.extend_from_slice(&self.buffer[self.start..self.start + taken]);
            self.start += taken;
        }
        Ok(bytes)
    }

    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut bytes = [0u8; N];
        let mut filled = 0;
        while filled < N {
            if self.start == self.end && !self.refill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let taken = (N - filled).min(self.end - self.start);
            bytes[filled..filled + taken].copy_from_slice(&self.buffer[self.start..self.start + taken]);
            (self.start, filled) = (self.start + taken, filled + taken);
        }
        Ok(bytes)
    }

    /// The hash of everything consumed so far; later reads are not hashed.
    fn finish_hash(&mut self) -> [u8; 32] {
        self.hash_consumed();
        self.hashing = false;
        *self.hasher.finalize().as_bytes()
    }

    fn at_end(&mut self) -> io::Result<bool> {
        Ok(self.start == self.end && !self.refill()?)
    }
}

/// Writes one tagged record, keeping the first I/O error for after the scan.
struct RecordWriter<W: Write> {
    /// Buffered before hashing: blake3 hashes a 64 KiB write several chunks at a time with SIMD,
    /// while record-sized updates went one chunk at a time (a fifth of all CPU while the replicas
    /// built snapshots; encoding and checksum 4.5 times slower, BENCHMARKS.md).
    out: BufWriter<Hashing<W>>,
    scratch: Vec<u8>,
    error: Option<io::Error>,
}

impl<W: Write> RecordWriter<W> {
    fn record(&mut self, tag: u8, encode: impl FnOnce(&mut Vec<u8>)) -> ControlFlow<()> {
        self.scratch.clear();
        self.scratch.put_u8(tag);
        encode(&mut self.scratch);
        match self.out.write_all(&self.scratch) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => {
                self.error = Some(error);
                ControlFlow::Break(())
            }
        }
    }

    fn check(&mut self) -> io::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }
}

impl<S: Storage> StateMachine<S> {
    /// Streams the whole ledger to `writer`.
    pub fn write_snapshot<W: Write>(&self, writer: W) -> io::Result<SnapshotSummary> {
        write_snapshot(self.storage(), writer)
    }
}

/// Streams the ledger held by `storage` to `writer`. Only reads are needed, so a durable store can
/// write a snapshot from a consistent read view while batches keep being applied.
pub fn write_snapshot<R: StorageRead, W: Write>(storage: &R, writer: W) -> io::Result<SnapshotSummary> {
    let meta = storage.meta_get();
    let mut summary = SnapshotSummary::default();
    let mut out = RecordWriter {
        out: BufWriter::with_capacity(SNAPSHOT_WRITE_BUFFER_BYTES, Hashing::new(writer)),
        scratch: Vec::new(),
        error: None,
    };
    let mut header = Vec::with_capacity(60);
    header.put(*MAGIC);
    header.put_u32(SNAPSHOT_FORMAT_VERSION);
    header.put_u64(meta.timestamp_last);
    header.put_u64(meta.batches_applied);
    header.put(meta.digest);
    out.out.write_all(&header)?;

    storage.ledgers_scan(TimestampRange::ALL, Direction::Ascending, &mut |ledger| {
        summary.ledgers += 1;
        out.record(TAG_LEDGER, |bytes| codec::put_ledger(bytes, ledger))
    });
    out.check()?;
    storage.accounts_scan(TimestampRange::ALL, Direction::Ascending, &mut |account| {
        summary.accounts += 1;
        out.record(TAG_ACCOUNT, |bytes| codec::put_account(bytes, account))?;
        storage.account_balances_scan(account.id, TimestampRange::ALL, Direction::Ascending, &mut |balance| {
            summary.account_balances += 1;
            out.record(TAG_ACCOUNT_BALANCE, |bytes| {
                bytes.put_u128(account.id);
                codec::put_account_balance(bytes, balance);
            })
        });
        if out.error.is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    out.check()?;
    storage.transfers_scan(TimestampRange::ALL, Direction::Ascending, &mut |transfer| {
        summary.transfers += 1;
        out.record(TAG_TRANSFER, |bytes| codec::put_transfer(bytes, transfer))?;
        if !transfer.flags.contains(TransferFlags::PENDING) {
            return ControlFlow::Continue(());
        }
        let status = storage.pending_status_get(transfer.id).expect("a pending transfer has a status");
        out.record(TAG_PENDING_STATUS, |bytes| {
            bytes.put_u128(transfer.id);
            codec::put_pending_status(bytes, status);
        })
    });
    out.check()?;
    storage.transfer_failures_scan(&mut |failure| {
        summary.transfer_failures += 1;
        out.record(TAG_TRANSFER_FAILURE, |bytes| codec::put_transfer_failure(bytes, failure))
    });
    out.check()?;
    if let Some(registry) = storage.registry_get() {
        let bytes = registry.to_bytes();
        let _ = out.record(TAG_REGISTRY, |out| put_variable(out, &bytes));
        out.check()?;
    }
    storage.requests_seen_due_scan(u64::MAX, &mut |&(_, principal, request_id)| {
        let seen = storage.request_seen_get(principal, request_id).expect("a due request is remembered");
        summary.requests_seen += 1;
        out.record(TAG_SEEN_REQUEST, |out| put_variable(out, &seen.to_bytes()))
    });
    out.check()?;

    out.out.write_all(&[TAG_END])?;
    out.out.flush()?;
    let hashing = out.out.get_mut();
    let checksum = *hashing.hasher.finalize().as_bytes();
    hashing.inner.write_all(&checksum)?;
    hashing.inner.flush()?;
    summary.bytes = hashing.bytes + checksum.len() as u64;
    Ok(summary)
}

impl<S: Storage> StateMachine<S> {
    /// Rebuilds a ledger from a snapshot into empty `storage`, checking it as it goes. On error the
    /// storage holds a partial ledger and must be discarded.
    pub fn restore_snapshot<R: Read>(mut storage: S, reader: R) -> Result<StateMachine<S>, SnapshotError> {
        if storage.meta_get() != StateMeta::default() {
            return Err(SnapshotError::StorageNotEmpty);
        }
        let mut input = HashingReader::new(reader);
        if &input.read_array::<8>()? != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let version = u32::from_le_bytes(input.read_array()?);
        if !(SNAPSHOT_FORMAT_VERSION_OLDEST..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion { found: version, supported: SNAPSHOT_FORMAT_VERSION });
        }
        let meta = StateMeta {
            timestamp_last: u64::from_le_bytes(input.read_array()?),
            batches_applied: u64::from_le_bytes(input.read_array()?),
            digest: input.read_array()?,
        };
        let mut restore = Restore::new(&mut storage, meta.timestamp_last);
        for record in 1.. {
            if record % RESTORE_FLUSH_RECORDS == 0 {
                restore.storage.flush_writes();
            }
            let tag = input.read_array::<1>()?[0];
            restore.check_section_order(tag)?;
            match tag {
                TAG_END => break,
                TAG_LEDGER => restore.ledger(&input.read_array::<{ codec::LEDGER_SIZE }>()?)?,
                TAG_ACCOUNT => restore.account(&input.read_array::<{ codec::ACCOUNT_SIZE }>()?)?,
                TAG_ACCOUNT_BALANCE => {
                    restore.account_balance(&input.read_array::<{ 16 + codec::ACCOUNT_BALANCE_SIZE }>()?)?
                }
                TAG_TRANSFER => restore.transfer(&input.read_array::<{ codec::TRANSFER_SIZE }>()?)?,
                TAG_PENDING_STATUS => {
                    restore.pending_status(&input.read_array::<{ 16 + codec::PENDING_STATUS_SIZE }>()?)?
                }
                TAG_TRANSFER_FAILURE => restore.failure(&input.read_array::<{ codec::TRANSFER_FAILURE_SIZE }>()?)?,
                TAG_REGISTRY => restore.registry(&input.read_variable()?)?,
                TAG_SEEN_REQUEST => restore.seen_request(&input.read_variable()?)?,
                _ => return Err(inconsistent(format!("unknown record tag {tag}"))),
            }
        }
        let expected = input.finish_hash();
        if input.read_array::<32>()? != expected {
            return Err(SnapshotError::ChecksumMismatch);
        }
        if !input.at_end()? {
            return Err(inconsistent("bytes follow the checksum".into()));
        }
        restore.finish()?;
        storage.meta_put(&meta);
        Ok(StateMachine::open(storage))
    }
}

fn put_variable(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).expect("records are bounded far below 4 GiB"));
    out.extend_from_slice(bytes);
}

fn inconsistent(detail: String) -> SnapshotError {
    SnapshotError::Inconsistent(detail)
}

/// The checks and bookkeeping of one restore.
struct Restore<'a, S: Storage> {
    storage: &'a mut S,
    timestamp_last: u64,
    section: u8,
    /// Timestamp of the previous record of the current section.
    previous_timestamp: u64,
    /// The account whose history records may follow, and its last history timestamp.
    history_account: Option<(u128, u64)>,
    /// A pending transfer whose status record must come next.
    awaiting_status: Option<Transfer>,
    /// Every account's balances recomputed from the transfers: debits/credits pending/posted.
    recomputed: HashMap<u128, [u128; 4], foldhash::fast::RandomState>,
    /// The last seen request restored, by `SeenRequest::due`.
    seen_previous: Option<(u64, u64, u128)>,
}

impl<'a, S: Storage> Restore<'a, S> {
    fn new(storage: &'a mut S, timestamp_last: u64) -> Restore<'a, S> {
        Restore {
            storage,
            timestamp_last,
            section: TAG_LEDGER,
            previous_timestamp: 0,
            history_account: None,
            awaiting_status: None,
            recomputed: HashMap::default(),
            seen_previous: None,
        }
    }

    /// Sections come in order, and within one, record timestamps strictly increase.
    fn check_section_order(&mut self, tag: u8) -> Result<(), SnapshotError> {
        if self.awaiting_status.is_some() && tag != TAG_PENDING_STATUS {
            return Err(inconsistent("a pending transfer has no status record".into()));
        }
        if tag == TAG_END {
            return Ok(());
        }
        let section = match tag {
            TAG_ACCOUNT_BALANCE => TAG_ACCOUNT,
            TAG_PENDING_STATUS => TAG_TRANSFER,
            other => other,
        };
        if section < self.section {
            return Err(inconsistent(format!("record tag {tag} after section {}", self.section)));
        }
        if section > self.section {
            self.section = section;
            self.previous_timestamp = 0;
            self.history_account = None;
        }
        Ok(())
    }

    fn next_timestamp(&mut self, what: &str, timestamp: u64) -> Result<(), SnapshotError> {
        if timestamp <= self.previous_timestamp || timestamp > self.timestamp_last {
            return Err(inconsistent(format!("{what} timestamp {timestamp} is out of order")));
        }
        self.previous_timestamp = timestamp;
        Ok(())
    }

    fn registry(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        if self.storage.registry_get().is_some() {
            return Err(inconsistent("a second registry".into()));
        }
        let registry = Registry::decode(bytes)?;
        self.storage.registry_put(&registry);
        Ok(())
    }

    fn seen_request(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let seen = SeenRequest::decode(bytes)?;
        if self.seen_previous.is_some_and(|previous| previous >= seen.due()) {
            return Err(inconsistent(format!(
                "seen request {:#x} of principal {} out of order",
                seen.request_id, seen.principal
            )));
        }
        if self.storage.request_seen_get(seen.principal, seen.request_id).is_some() {
            return Err(inconsistent(format!(
                "seen request {:#x} of principal {} twice",
                seen.request_id, seen.principal
            )));
        }
        self.seen_previous = Some(seen.due());
        self.storage.request_seen_insert(&seen);
        Ok(())
    }

    fn ledger(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let ledger = codec::read_ledger(&mut Reader::new(bytes, "ledger"))?;
        self.next_timestamp("ledger", ledger.timestamp)?;
        if ledger.id == 0 || !ledger.currency.is_iso_4217() || ledger.scale > LEDGER_SCALE_MAX {
            return Err(inconsistent(format!("ledger {} has invalid fields", ledger.id)));
        }
        if self.storage.ledger_get(ledger.id).is_some() {
            return Err(inconsistent(format!("ledger {} appears twice", ledger.id)));
        }
        self.storage.ledger_insert(&ledger);
        Ok(())
    }

    fn account(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let account = codec::read_account(&mut Reader::new(bytes, "account"))?;
        self.next_timestamp("account", account.timestamp)?;
        if account.id == 0 || account.id == u128::MAX || account.flags.has_reserved_bits() {
            return Err(inconsistent(format!("account {} has invalid fields", account.id)));
        }
        if self.storage.ledger_get(account.ledger).is_none() {
            return Err(inconsistent(format!("account {} is on missing ledger {}", account.id, account.ledger)));
        }
        if self.recomputed.insert(account.id, [0; 4]).is_some() {
            return Err(inconsistent(format!("account {} appears twice", account.id)));
        }
        if !account.within_limits() {
            return Err(inconsistent(format!("account {} breaks its balance limit", account.id)));
        }
        self.storage.account_insert(&account);
        self.history_account = account.flags.contains(AccountFlags::HISTORY).then_some((account.id, 0));
        Ok(())
    }

    fn account_balance(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let mut reader = Reader::new(bytes, "account balance");
        let account_id = reader.u128()?;
        let balance = codec::read_account_balance(&mut reader)?;
        match &mut self.history_account {
            Some((id, previous)) if *id == account_id && balance.timestamp > *previous => *previous = balance.timestamp,
            _ => {
                return Err(inconsistent(format!("balance history of account {account_id} is misplaced")));
            }
        }
        if balance.timestamp > self.timestamp_last {
            return Err(inconsistent(format!("balance of account {account_id} is from the future")));
        }
        self.storage.account_balance_insert(account_id, &balance);
        Ok(())
    }

    fn transfer(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let transfer = codec::read_transfer(&mut Reader::new(bytes, "transfer"))?;
        self.next_timestamp("transfer", transfer.timestamp)?;
        let id = transfer.id;
        if id == 0 || id == u128::MAX || transfer.flags.has_reserved_bits() || transfer.amount.is_zero() {
            return Err(inconsistent(format!("transfer {id} has invalid fields")));
        }
        if self.storage.transfer_get(id).is_some() {
            return Err(inconsistent(format!("transfer {id} appears twice")));
        }
        for account_id in [transfer.debit_account_id, transfer.credit_account_id] {
            match self.storage.account_get(account_id) {
                Some(account) if account.ledger == transfer.ledger => {}
                _ => {
                    return Err(inconsistent(format!("transfer {id} names account {account_id} off its ledger")));
                }
            }
        }
        if transfer.flags.resolves_pending() {
            match self.storage.transfer_get(transfer.pending_id) {
                Some(pending) if pending.flags.contains(TransferFlags::PENDING) => {}
                _ => {
                    return Err(inconsistent(format!("transfer {id} resolves a missing pending transfer")));
                }
            }
        }
        let pending = transfer.flags.contains(TransferFlags::PENDING);
        if pending && crate::model::deadline(transfer.timestamp, transfer.timeout_seconds).is_none() {
            return Err(inconsistent(format!("transfer {id} has a deadline past the end of time")));
        }
        if pending {
            // Its effect on balances depends on its status, which is the next record.
            self.awaiting_status = Some(transfer);
        } else if transfer.flags.contains(TransferFlags::POST_PENDING_TRANSFER) || !transfer.flags.resolves_pending() {
            self.add(transfer.debit_account_id, 1, transfer.amount.0)?;
            self.add(transfer.credit_account_id, 3, transfer.amount.0)?;
        }
        self.storage.transfer_insert(&transfer);
        Ok(())
    }

    fn pending_status(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let mut reader = Reader::new(bytes, "pending status");
        let pending_id = reader.u128()?;
        let status = codec::read_pending_status(&mut reader)?;
        let pending = match self.awaiting_status.take() {
            Some(pending) if pending.id == pending_id => pending,
            _ => return Err(inconsistent(format!("status of transfer {pending_id} is misplaced"))),
        };
        if status == crate::model::PendingStatus::Pending {
            self.add(pending.debit_account_id, 0, pending.amount.0)?;
            self.add(pending.credit_account_id, 2, pending.amount.0)?;
            if let Some(expires_at) = pending.expires_at() {
                self.storage.expiry_insert(expires_at, pending_id);
            }
        }
        self.storage.pending_status_put(pending_id, status);
        Ok(())
    }

    fn failure(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let failure = codec::read_transfer_failure(&mut Reader::new(bytes, "transfer failure"))?;
        self.next_timestamp("transfer failure", failure.timestamp)?;
        if !failure.code.is_transient() || self.storage.transfer_failure_get(failure.id).is_some() {
            return Err(inconsistent(format!("failure of transfer {} is invalid", failure.id)));
        }
        self.storage.transfer_failure_insert(&failure);
        Ok(())
    }

    fn add(&mut self, account_id: u128, balance: usize, amount: u128) -> Result<(), SnapshotError> {
        let balances = self.recomputed.get_mut(&account_id).expect("checked when the transfer was read");
        balances[balance] += amount;
        if balances[balance] > crate::constants::AMOUNT_UNITS_MAX {
            return Err(inconsistent(format!("account {account_id} overflows")));
        }
        Ok(())
    }

    /// Every account's stored balances must equal the sum of its transfers. Accounts are checked in
    /// creation order, so the error names the same (earliest) account on every run.
    fn finish(self) -> Result<(), SnapshotError> {
        self.storage.flush_writes();
        let mut mismatch = None;
        self.storage.accounts_scan(TimestampRange::ALL, Direction::Ascending, &mut |account: &Account| {
            let stored = [
                account.debits_pending.0,
                account.debits_posted.0,
                account.credits_pending.0,
                account.credits_posted.0,
            ];
            let recomputed = self.recomputed[&account.id];
            if stored == recomputed {
                return ControlFlow::Continue(());
            }
            mismatch = Some(format!(
                "account {} holds balances {stored:?} but its transfers add up to {recomputed:?}",
                account.id
            ));
            ControlFlow::Break(())
        });
        mismatch.map_or(Ok(()), |detail| Err(inconsistent(detail)))
    }
}
