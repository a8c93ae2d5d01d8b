//! The canonical binary encoding of batches and records: fixed layouts, little-endian integers.
//!
//! One encoding serves three readers: the state digest (so every replica hashes the same bytes for
//! the same batch), snapshots, and the replicated log. It is written out by hand rather than derived
//! so that a dependency upgrade can never change the bytes that digests and snapshots were made of.
//! Decoding checks every length, tag and value range and never panics on hostile input.

use rust_decimal::Decimal;

use crate::amount::Units;
use crate::batch::{Batch, Operation};
use crate::constants::EVENTS_PER_BATCH_MAX;
use crate::currency::Currency;
use crate::flags::{AccountFlags, TransferFlags};
use crate::model::{
    Account, AccountBalance, Ledger, NewAccount, NewLedger, NewTransfer, PendingStatus, StateMeta, Transfer,
    TransferFailure,
};
use crate::result::ResultCode;

/// Version of the batch encoding of one request (or of an expiry), the first byte of such a batch.
pub const BATCH_FORMAT_VERSION: u8 = 1;
/// Version of the encoding of a batch that joins two or more requests: after the header come the
/// number of requests and each one's event count (u32 each), then the events. A batch of one
/// request keeps version 1, so its bytes, and the digest made of them, are what they always were.
pub const BATCH_FORMAT_VERSION_JOINED: u8 = 2;

pub const NEW_LEDGER_SIZE: usize = 36;
pub const LEDGER_SIZE: usize = NEW_LEDGER_SIZE + 8;
pub const NEW_ACCOUNT_SIZE: usize = 52;
pub const ACCOUNT_SIZE: usize = NEW_ACCOUNT_SIZE + 4 * 16 + 8;
pub const NEW_TRANSFER_SIZE: usize = 122;
pub const TRANSFER_SIZE: usize = 128;
/// Where a transfer's timestamp sits in its encoding (the last field), so that a store can order
/// and search encoded transfers without decoding them.
const TRANSFER_TIMESTAMP_OFFSET: usize = TRANSFER_SIZE - 8;
pub const ACCOUNT_BALANCE_SIZE: usize = 8 + 4 * 16;
pub const PENDING_STATUS_SIZE: usize = 9;
pub const TRANSFER_FAILURE_SIZE: usize = 25;
const BATCH_HEADER_SIZE: usize = 1 + 1 + 8 + 4;

/// Why bytes are not a valid encoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input ends {missing} bytes early, inside {what}")]
    Truncated { what: &'static str, missing: usize },
    #[error("{count} bytes follow the end of the batch")]
    TrailingBytes { count: usize },
    #[error("unknown batch format version {0}")]
    UnknownVersion(u8),
    #[error("unknown operation tag {0}")]
    UnknownOperation(u8),
    #[error("batch declares {count} events, above the limit of {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error("invalid {what}: {detail}")]
    InvalidValue { what: &'static str, detail: String },
}

/// Appends little-endian fields to a byte buffer. Fields are fixed-size arrays so that each copy
/// has a length known at compile time and is inlined (the digest encodes ~300 bytes per transfer
/// on the hot path; a `memcpy` call per field cost a tenth of the apply time).
pub(crate) trait Put {
    fn put<const N: usize>(&mut self, bytes: [u8; N]);
    fn put_u8(&mut self, value: u8) {
        self.put([value]);
    }
    fn put_u16(&mut self, value: u16) {
        self.put(value.to_le_bytes());
    }
    fn put_u32(&mut self, value: u32) {
        self.put(value.to_le_bytes());
    }
    fn put_u64(&mut self, value: u64) {
        self.put(value.to_le_bytes());
    }
    fn put_u128(&mut self, value: u128) {
        self.put(value.to_le_bytes());
    }
}

impl Put for Vec<u8> {
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        self.extend_from_slice(&bytes);
    }
}

/// Reads little-endian fields from a byte slice, failing cleanly at its end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { bytes, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let Some((head, tail)) = self.bytes.split_first_chunk::<N>() else {
            return Err(DecodeError::Truncated { what: self.what, missing: N - self.bytes.len() });
        };
        self.bytes = tail;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    pub(crate) fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.take()?))
    }
    pub(crate) fn units(&mut self) -> Result<Units, DecodeError> {
        let units = self.u128()?;
        if units > crate::constants::AMOUNT_UNITS_MAX {
            return Err(invalid("amount", format!("{units} units is above the maximum")));
        }
        Ok(Units(units))
    }
}

fn invalid(what: &'static str, detail: String) -> DecodeError {
    DecodeError::InvalidValue { what, detail }
}

pub(crate) fn put_new_ledger(out: &mut impl Put, ledger: &NewLedger) {
    out.put_u32(ledger.id);
    out.put(ledger.currency.0);
    out.put_u8(ledger.scale);
    out.put_u128(ledger.user_data_128);
    out.put_u64(ledger.user_data_64);
    out.put_u32(ledger.user_data_32);
}

fn read_new_ledger(reader: &mut Reader) -> Result<NewLedger, DecodeError> {
    Ok(NewLedger {
        id: reader.u32()?,
        currency: Currency(reader.take()?),
        scale: reader.u8()?,
        user_data_128: reader.u128()?,
        user_data_64: reader.u64()?,
        user_data_32: reader.u32()?,
    })
}

pub(crate) fn put_ledger(out: &mut impl Put, ledger: &Ledger) {
    put_new_ledger(
        out,
        &NewLedger {
            id: ledger.id,
            currency: ledger.currency,
            scale: ledger.scale,
            user_data_128: ledger.user_data_128,
            user_data_64: ledger.user_data_64,
            user_data_32: ledger.user_data_32,
        },
    );
    out.put_u64(ledger.timestamp);
}

pub(crate) fn read_ledger(reader: &mut Reader) -> Result<Ledger, DecodeError> {
    let new = read_new_ledger(reader)?;
    Ok(Ledger {
        id: new.id,
        currency: new.currency,
        scale: new.scale,
        user_data_128: new.user_data_128,
        user_data_64: new.user_data_64,
        user_data_32: new.user_data_32,
        timestamp: reader.u64()?,
    })
}

pub(crate) fn put_new_account(out: &mut impl Put, account: &NewAccount) {
    out.put_u128(account.id);
    out.put_u32(account.ledger);
    out.put_u16(account.code);
    out.put_u16(account.flags.bits());
    out.put_u128(account.user_data_128);
    out.put_u64(account.user_data_64);
    out.put_u32(account.user_data_32);
}

fn read_new_account(reader: &mut Reader) -> Result<NewAccount, DecodeError> {
    Ok(NewAccount {
        id: reader.u128()?,
        ledger: reader.u32()?,
        code: reader.u16()?,
        flags: AccountFlags::from_bits_retain(reader.u16()?),
        user_data_128: reader.u128()?,
        user_data_64: reader.u64()?,
        user_data_32: reader.u32()?,
    })
}

#[inline]
pub(crate) fn put_balances(out: &mut impl Put, account: &Account) {
    let mut bytes = [0u8; 64];
    bytes[..16].copy_from_slice(&account.debits_pending.0.to_le_bytes());
    bytes[16..32].copy_from_slice(&account.debits_posted.0.to_le_bytes());
    bytes[32..48].copy_from_slice(&account.credits_pending.0.to_le_bytes());
    bytes[48..].copy_from_slice(&account.credits_posted.0.to_le_bytes());
    out.put(bytes);
}

pub(crate) fn put_account(out: &mut impl Put, account: &Account) {
    put_new_account(
        out,
        &NewAccount {
            id: account.id,
            ledger: account.ledger,
            code: account.code,
            flags: account.flags,
            user_data_128: account.user_data_128,
            user_data_64: account.user_data_64,
            user_data_32: account.user_data_32,
        },
    );
    put_balances(out, account);
    out.put_u64(account.timestamp);
}

pub(crate) fn read_account(reader: &mut Reader) -> Result<Account, DecodeError> {
    let new = read_new_account(reader)?;
    Ok(Account {
        id: new.id,
        ledger: new.ledger,
        code: new.code,
        flags: new.flags,
        user_data_128: new.user_data_128,
        user_data_64: new.user_data_64,
        user_data_32: new.user_data_32,
        debits_pending: reader.units()?,
        debits_posted: reader.units()?,
        credits_pending: reader.units()?,
        credits_posted: reader.units()?,
        timestamp: reader.u64()?,
    })
}

/// A decimal as presence byte, scale byte and signed mantissa: independent of rust_decimal's
/// in-memory layout, and checked on the way back in.
fn put_decimal(out: &mut impl Put, amount: Option<Decimal>) {
    match amount {
        None => out.put([0; 18]),
        Some(amount) => {
            out.put_u8(1);
            out.put_u8(u8::try_from(amount.scale()).expect("a Decimal's scale is at most 28"));
            out.put(amount.mantissa().to_le_bytes());
        }
    }
}

fn read_decimal(reader: &mut Reader) -> Result<Option<Decimal>, DecodeError> {
    let present = reader.u8()?;
    let scale = reader.u8()?;
    let mantissa = i128::from_le_bytes(reader.take()?);
    match present {
        0 if scale == 0 && mantissa == 0 => Ok(None),
        1 => Decimal::try_from_i128_with_scale(mantissa, u32::from(scale))
            .map(Some)
            .map_err(|error| invalid("amount", error.to_string())),
        _ => Err(invalid("amount", format!("presence byte {present}"))),
    }
}

pub(crate) fn put_new_transfer(out: &mut impl Put, transfer: &NewTransfer) {
    out.put_u128(transfer.id);
    out.put_u128(transfer.debit_account_id);
    out.put_u128(transfer.credit_account_id);
    put_decimal(out, transfer.amount);
    out.put_u128(transfer.pending_id);
    out.put_u32(transfer.ledger);
    out.put_u16(transfer.code);
    out.put_u16(transfer.flags.bits());
    out.put_u32(transfer.timeout_seconds);
    out.put_u128(transfer.user_data_128);
    out.put_u64(transfer.user_data_64);
    out.put_u32(transfer.user_data_32);
}

fn read_new_transfer(reader: &mut Reader) -> Result<NewTransfer, DecodeError> {
    Ok(NewTransfer {
        id: reader.u128()?,
        debit_account_id: reader.u128()?,
        credit_account_id: reader.u128()?,
        amount: read_decimal(reader)?,
        pending_id: reader.u128()?,
        ledger: reader.u32()?,
        code: reader.u16()?,
        flags: TransferFlags::from_bits_retain(reader.u16()?),
        timeout_seconds: reader.u32()?,
        user_data_128: reader.u128()?,
        user_data_64: reader.u64()?,
        user_data_32: reader.u32()?,
    })
}

pub(crate) fn put_transfer(out: &mut impl Put, transfer: &Transfer) {
    out.put_u128(transfer.id);
    out.put_u128(transfer.debit_account_id);
    out.put_u128(transfer.credit_account_id);
    out.put_u128(transfer.amount.0);
    out.put_u128(transfer.pending_id);
    out.put_u32(transfer.ledger);
    out.put_u16(transfer.code);
    out.put_u16(transfer.flags.bits());
    out.put_u32(transfer.timeout_seconds);
    out.put_u128(transfer.user_data_128);
    out.put_u64(transfer.user_data_64);
    out.put_u32(transfer.user_data_32);
    out.put_u64(transfer.timestamp);
}

/// The timestamp of an encoded transfer, read in place.
pub fn transfer_timestamp(encoded: &[u8; TRANSFER_SIZE]) -> u64 {
    let (_, timestamp) = encoded.split_at(TRANSFER_TIMESTAMP_OFFSET);
    u64::from_le_bytes(timestamp.try_into().expect("8 bytes"))
}

pub(crate) fn read_transfer(reader: &mut Reader) -> Result<Transfer, DecodeError> {
    Ok(Transfer {
        id: reader.u128()?,
        debit_account_id: reader.u128()?,
        credit_account_id: reader.u128()?,
        amount: reader.units()?,
        pending_id: reader.u128()?,
        ledger: reader.u32()?,
        code: reader.u16()?,
        flags: TransferFlags::from_bits_retain(reader.u16()?),
        timeout_seconds: reader.u32()?,
        user_data_128: reader.u128()?,
        user_data_64: reader.u64()?,
        user_data_32: reader.u32()?,
        timestamp: reader.u64()?,
    })
}

pub(crate) fn put_account_balance(out: &mut impl Put, balance: &AccountBalance) {
    out.put_u64(balance.timestamp);
    out.put_u128(balance.debits_pending.0);
    out.put_u128(balance.debits_posted.0);
    out.put_u128(balance.credits_pending.0);
    out.put_u128(balance.credits_posted.0);
}

pub(crate) fn read_account_balance(reader: &mut Reader) -> Result<AccountBalance, DecodeError> {
    Ok(AccountBalance {
        timestamp: reader.u64()?,
        debits_pending: reader.units()?,
        debits_posted: reader.units()?,
        credits_pending: reader.units()?,
        credits_posted: reader.units()?,
    })
}

pub(crate) fn put_pending_status(out: &mut impl Put, status: PendingStatus) {
    let (tag, timestamp) = match status {
        PendingStatus::Pending => (0, 0),
        PendingStatus::Posted { timestamp } => (1, timestamp),
        PendingStatus::Voided { timestamp } => (2, timestamp),
        PendingStatus::Expired { timestamp } => (3, timestamp),
    };
    out.put_u8(tag);
    out.put_u64(timestamp);
}

pub(crate) fn read_pending_status(reader: &mut Reader) -> Result<PendingStatus, DecodeError> {
    let tag = reader.u8()?;
    let timestamp = reader.u64()?;
    match (tag, timestamp) {
        (0, 0) => Ok(PendingStatus::Pending),
        (1, _) => Ok(PendingStatus::Posted { timestamp }),
        (2, _) => Ok(PendingStatus::Voided { timestamp }),
        (3, _) => Ok(PendingStatus::Expired { timestamp }),
        _ => Err(invalid("pending status", format!("tag {tag} with timestamp {timestamp}"))),
    }
}

pub(crate) fn put_transfer_failure(out: &mut impl Put, failure: &TransferFailure) {
    out.put_u128(failure.id);
    out.put_u8(failure.code as u8);
    out.put_u64(failure.timestamp);
}

pub(crate) fn read_transfer_failure(reader: &mut Reader) -> Result<TransferFailure, DecodeError> {
    let id = reader.u128()?;
    let number = reader.u8()?;
    let code =
        ResultCode::from_number(number).ok_or_else(|| invalid("result code", format!("unknown code {number}")))?;
    Ok(TransferFailure { id, code, timestamp: reader.u64()? })
}

/// A stored record with a fixed-size canonical encoding, for stores that keep records as bytes.
pub trait Record: Sized {
    const SIZE: usize;
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes exactly `SIZE` bytes.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::SIZE);
        self.encode(&mut bytes);
        bytes
    }
}

fn decode_exact<T>(
    bytes: &[u8],
    what: &'static str,
    read: impl FnOnce(&mut Reader) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut reader = Reader::new(bytes, what);
    let record = read(&mut reader)?;
    match reader.remaining() {
        0 => Ok(record),
        count => Err(DecodeError::TrailingBytes { count }),
    }
}

macro_rules! record {
    ($type:ty, $size:expr, $what:literal, $put:expr, $read:expr) => {
        impl Record for $type {
            const SIZE: usize = $size;
            fn encode(&self, out: &mut Vec<u8>) {
                $put(out, self)
            }
            fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                decode_exact(bytes, $what, $read)
            }
        }
    };
}

record!(Ledger, LEDGER_SIZE, "ledger", put_ledger, read_ledger);
record!(Account, ACCOUNT_SIZE, "account", put_account, read_account);
record!(Transfer, TRANSFER_SIZE, "transfer", put_transfer, read_transfer);
record!(AccountBalance, ACCOUNT_BALANCE_SIZE, "account balance", put_account_balance, read_account_balance);
record!(TransferFailure, TRANSFER_FAILURE_SIZE, "transfer failure", put_transfer_failure, read_transfer_failure);
record!(
    PendingStatus,
    PENDING_STATUS_SIZE,
    "pending status",
    |out: &mut Vec<u8>, status: &PendingStatus| put_pending_status(out, *status),
    read_pending_status
);
record!(StateMeta, STATE_META_SIZE, "state meta", put_state_meta, read_state_meta);

pub const STATE_META_SIZE: usize = 8 + 8 + 32;

fn put_state_meta(out: &mut Vec<u8>, meta: &StateMeta) {
    out.put_u64(meta.timestamp_last);
    out.put_u64(meta.batches_applied);
    out.put(meta.digest);
}

fn read_state_meta(reader: &mut Reader) -> Result<StateMeta, DecodeError> {
    Ok(StateMeta { timestamp_last: reader.u64()?, batches_applied: reader.u64()?, digest: reader.take()? })
}

pub(crate) fn operation_tag(operation: &Operation) -> u8 {
    match operation {
        Operation::CreateLedgers(_) => 1,
        Operation::CreateAccounts(_) => 2,
        Operation::CreateTransfers(_) => 3,
        Operation::ExpirePendingTransfers => 4,
    }
}

/// Appends the batch's header: version, operation, timestamp, event count and, for a batch that
/// joins several requests, their sizes. The digest hashes this header too, so replicas that applied
/// the same events with other request boundaries disagree at once.
pub(crate) fn put_batch_header(out: &mut impl Put, batch: &Batch) {
    let joined = batch.request_sizes.len() > 1;
    out.put_u8(if joined { BATCH_FORMAT_VERSION_JOINED } else { BATCH_FORMAT_VERSION });
    out.put_u8(operation_tag(&batch.operation));
    out.put_u64(batch.timestamp);
    let count = u32::try_from(batch.operation.event_count()).expect("a batch holds under 2^32 events");
    out.put_u32(count);
    if joined {
        out.put_u32(u32::try_from(batch.request_sizes.len()).expect("fewer requests than events"));
        for &size in &batch.request_sizes {
            out.put_u32(size);
        }
    }
}

/// Appends the canonical encoding of a batch to `out`.
pub fn encode_batch(batch: &Batch, out: &mut Vec<u8>) {
    let event_size = match &batch.operation {
        Operation::CreateLedgers(_) => NEW_LEDGER_SIZE,
        Operation::CreateAccounts(_) => NEW_ACCOUNT_SIZE,
        Operation::CreateTransfers(_) => NEW_TRANSFER_SIZE,
        Operation::ExpirePendingTransfers => 0,
    };
    let sizes = if batch.request_sizes.len() > 1 { 4 + 4 * batch.request_sizes.len() } else { 0 };
    out.reserve(BATCH_HEADER_SIZE + sizes + event_size * batch.operation.event_count());
    put_batch_header(out, batch);
    match &batch.operation {
        Operation::CreateLedgers(events) => events.iter().for_each(|event| put_new_ledger(out, event)),
        Operation::CreateAccounts(events) => events.iter().for_each(|event| put_new_account(out, event)),
        Operation::CreateTransfers(events) => events.iter().for_each(|event| put_new_transfer(out, event)),
        Operation::ExpirePendingTransfers => {}
    }
}

/// Decodes a batch encoded by [`encode_batch`], checking every length and the event limit.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let mut batch = Batch::new(0, Operation::ExpirePendingTransfers);
    decode_batch_into(bytes, &mut batch)?;
    Ok(batch)
}

/// Decodes a batch into `batch`, reusing the allocation of its events when they are of the same
/// kind: a replica decodes a batch of up to 8,190 transfers for every log entry, and a fresh
/// megabyte each time is paid for in page faults. After an error `batch` holds nothing meaningful.
pub fn decode_batch_into(bytes: &[u8], batch: &mut Batch) -> Result<(), DecodeError> {
    let mut reader = Reader::new(bytes, "batch");
    let version = reader.u8()?;
    if version != BATCH_FORMAT_VERSION && version != BATCH_FORMAT_VERSION_JOINED {
        return Err(DecodeError::UnknownVersion(version));
    }
    let tag = reader.u8()?;
    let timestamp = reader.u64()?;
    let count = reader.u32()? as usize;
    if count > EVENTS_PER_BATCH_MAX {
        return Err(DecodeError::TooManyEvents { count, max: EVENTS_PER_BATCH_MAX });
    }
    batch.timestamp = timestamp;
    batch.request_sizes.clear();
    if version == BATCH_FORMAT_VERSION_JOINED {
        read_request_sizes(&mut reader, count, &mut batch.request_sizes)?;
    } else if tag != 4 {
        batch.request_sizes.push(u32::try_from(count).expect("under the event limit"));
    }
    /// The batch's event vector of `$variant`, emptied, keeping its allocation if it had one.
    macro_rules! events_of {
        ($variant:ident) => {{
            if !matches!(batch.operation, Operation::$variant(_)) {
                batch.operation = Operation::$variant(Vec::new());
            }
            match &mut batch.operation {
                Operation::$variant(events) => events,
                _ => unreachable!("set just above"),
            }
        }};
    }
    match tag {
        1 => read_events(&mut reader, count, NEW_LEDGER_SIZE, read_new_ledger, events_of!(CreateLedgers))?,
        2 => read_events(&mut reader, count, NEW_ACCOUNT_SIZE, read_new_account, events_of!(CreateAccounts))?,
        3 => read_events(&mut reader, count, NEW_TRANSFER_SIZE, read_new_transfer, events_of!(CreateTransfers))?,
        4 if count == 0 => batch.operation = Operation::ExpirePendingTransfers,
        4 => return Err(invalid("expiry batch", format!("declares {count} events instead of 0"))),
        _ => return Err(DecodeError::UnknownOperation(tag)),
    }
    if reader.remaining() > 0 {
        return Err(DecodeError::TrailingBytes { count: reader.remaining() });
    }
    Ok(())
}

/// Reads the request sizes of a joined batch: at least two requests, none empty, adding up to the
/// batch's `count` events.
fn read_request_sizes(reader: &mut Reader, count: usize, sizes: &mut Vec<u32>) -> Result<(), DecodeError> {
    let requests = reader.u32()? as usize;
    if requests < 2 || requests > count {
        return Err(invalid("joined batch", format!("declares {requests} requests for {count} events")));
    }
    if reader.remaining() < 4 * requests {
        return Err(DecodeError::Truncated { what: "request sizes", missing: 4 * requests - reader.remaining() });
    }
    let mut total = 0usize;
    for _ in 0..requests {
        let size = reader.u32()?;
        if size == 0 {
            return Err(invalid("joined batch", "declares an empty request".into()));
        }
        total += size as usize;
        sizes.push(size);
    }
    if total != count {
        return Err(invalid("joined batch", format!("requests hold {total} events, the batch {count}")));
    }
    Ok(())
}

fn read_events<T>(
    reader: &mut Reader,
    count: usize,
    event_size: usize,
    read: fn(&mut Reader) -> Result<T, DecodeError>,
    events: &mut Vec<T>,
) -> Result<(), DecodeError> {
    events.clear();
    // Check the length before allocating, so a forged count cannot make us reserve memory.
    let expected = count * event_size;
    if reader.remaining() < expected {
        return Err(DecodeError::Truncated { what: "batch events", missing: expected - reader.remaining() });
    }
    events.reserve(count);
    for _ in 0..count {
        events.push(read(reader)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn decoding_into_a_used_batch_gives_the_same_batch_as_decoding_afresh() {
        let transfers = Batch::new(7, Operation::CreateTransfers(vec![sample_transfer(); 3]));
        let one = Batch::new(8, Operation::CreateTransfers(vec![sample_transfer()]));
        let expiry = Batch::new(9, Operation::ExpirePendingTransfers);
        let mut reused = Batch::new(0, Operation::ExpirePendingTransfers);
        for batch in [&transfers, &one, &expiry, &transfers] {
            let mut bytes = Vec::new();
            encode_batch(batch, &mut bytes);
            decode_batch_into(&bytes, &mut reused).unwrap();
            assert_eq!(&reused, batch);
            assert_eq!(decode_batch(&bytes).unwrap(), *batch);
        }
    }

    #[test]
    fn an_encoded_transfer_gives_its_timestamp_in_place() {
        let transfer = Transfer {
            id: 5,
            debit_account_id: 6,
            credit_account_id: 7,
            amount: Units(8),
            pending_id: 0,
            ledger: 9,
            code: 10,
            flags: TransferFlags::PENDING,
            timeout_seconds: 11,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            timestamp: 0x0102_0304_0506_0708,
        };
        let encoded: [u8; TRANSFER_SIZE] = transfer.to_bytes().try_into().unwrap();
        assert_eq!(transfer_timestamp(&encoded), transfer.timestamp);
    }

    fn sample_transfer() -> NewTransfer {
        NewTransfer {
            id: u128::MAX - 7,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: Some(Decimal::from_str("-12.340").unwrap()),
            pending_id: 3,
            ledger: 4,
            code: 5,
            flags: TransferFlags::from_bits_retain(0xFFFF),
            timeout_seconds: 6,
            user_data_128: 7,
            user_data_64: 8,
            user_data_32: 9,
        }
    }

    #[test]
    fn batches_round_trip() {
        let batches = [
            Batch::new(1, Operation::ExpirePendingTransfers),
            Batch::new(
                2,
                Operation::CreateLedgers(vec![NewLedger {
                    id: 1,
                    currency: Currency(*b"USD"),
                    scale: 2,
                    user_data_128: 1,
                    user_data_64: 2,
                    user_data_32: 3,
                }]),
            ),
            Batch::new(
                3,
                Operation::CreateAccounts(vec![NewAccount {
                    id: 9,
                    ledger: 1,
                    code: 2,
                    flags: AccountFlags::HISTORY,
                    ..NewAccount::default()
                }]),
            ),
            Batch::new(
                u64::MAX,
                Operation::CreateTransfers(vec![sample_transfer(), NewTransfer { amount: None, ..sample_transfer() }]),
            ),
        ];
        for batch in batches {
            let mut bytes = Vec::new();
            encode_batch(&batch, &mut bytes);
            assert_eq!(decode_batch(&bytes), Ok(batch));
        }
    }

    #[test]
    fn records_round_trip_and_refuse_wrong_lengths() {
        let status = PendingStatus::Voided { timestamp: 9 };
        assert_eq!(PendingStatus::decode(&status.to_bytes()), Ok(status));
        let meta = StateMeta { timestamp_last: 1, batches_applied: 2, digest: [3; 32] };
        let bytes = meta.to_bytes();
        assert_eq!(bytes.len(), StateMeta::SIZE);
        assert_eq!(StateMeta::decode(&bytes), Ok(meta));
        assert!(matches!(StateMeta::decode(&bytes[1..]), Err(DecodeError::Truncated { .. })));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(StateMeta::decode(&longer), Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn record_sizes_match_their_constants() {
        let mut bytes = Vec::new();
        put_new_transfer(&mut bytes, &sample_transfer());
        assert_eq!(bytes.len(), NEW_TRANSFER_SIZE);
        bytes.clear();
        put_new_account(&mut bytes, &NewAccount::default());
        assert_eq!(bytes.len(), NEW_ACCOUNT_SIZE);
        bytes.clear();
        put_new_ledger(&mut bytes, &NewLedger::default());
        assert_eq!(bytes.len(), NEW_LEDGER_SIZE);
    }

    #[test]
    fn truncated_and_padded_batches_are_refused() {
        let batch = Batch::new(5, Operation::CreateTransfers(vec![sample_transfer()]));
        let mut bytes = Vec::new();
        encode_batch(&batch, &mut bytes);
        for length in 0..bytes.len() {
            assert!(matches!(decode_batch(&bytes[..length]), Err(DecodeError::Truncated { .. })));
        }
        bytes.push(0);
        assert_eq!(decode_batch(&bytes), Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn forged_headers_are_refused() {
        let mut bytes = Vec::new();
        encode_batch(&Batch::new(5, Operation::CreateLedgers(vec![])), &mut bytes);
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert_eq!(decode_batch(&wrong_version), Err(DecodeError::UnknownVersion(9)));
        let mut wrong_operation = bytes.clone();
        wrong_operation[1] = 77;
        assert_eq!(decode_batch(&wrong_operation), Err(DecodeError::UnknownOperation(77)));
        let mut huge_count = bytes.clone();
        huge_count[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_batch(&huge_count), Err(DecodeError::TooManyEvents { .. })));
    }

    #[test]
    fn a_joined_batch_keeps_its_request_sizes_and_a_batch_of_one_request_keeps_version_1() {
        let joined = Batch::joined(5, Operation::CreateTransfers(vec![sample_transfer(); 3]), vec![2, 1]);
        let mut bytes = Vec::new();
        encode_batch(&joined, &mut bytes);
        assert_eq!(bytes[0], BATCH_FORMAT_VERSION_JOINED);
        assert_eq!(decode_batch(&bytes), Ok(joined));

        let one = Batch::joined(5, Operation::CreateTransfers(vec![sample_transfer(); 3]), vec![3]);
        let mut single = Vec::new();
        encode_batch(&one, &mut single);
        assert_eq!(single[0], BATCH_FORMAT_VERSION);
        assert_eq!(single.len(), BATCH_HEADER_SIZE + 3 * NEW_TRANSFER_SIZE);
        assert_eq!(decode_batch(&single), Ok(Batch::new(5, Operation::CreateTransfers(vec![sample_transfer(); 3]))));
    }

    #[test]
    fn forged_request_sizes_are_refused() {
        let joined = Batch::joined(5, Operation::CreateTransfers(vec![sample_transfer(); 3]), vec![2, 1]);
        let mut bytes = Vec::new();
        encode_batch(&joined, &mut bytes);
        // After the header: the request count, then one u32 per request.
        let forge = |offset: usize, value: u32| {
            let mut forged = bytes.clone();
            forged[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
            decode_batch(&forged)
        };
        let header = BATCH_HEADER_SIZE;
        for requests in [0, 1, 4, u32::MAX] {
            assert!(matches!(forge(header, requests), Err(DecodeError::InvalidValue { .. })), "{requests} requests");
        }
        assert!(matches!(forge(header + 4, 0), Err(DecodeError::InvalidValue { .. })), "an empty request");
        assert!(matches!(forge(header + 4, 3), Err(DecodeError::InvalidValue { .. })), "sizes above the count");
        assert!(matches!(forge(header + 8, u32::MAX), Err(DecodeError::InvalidValue { .. })), "a size past the count");
        assert!(matches!(decode_batch(&bytes[..header + 6]), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn invalid_decimals_are_refused() {
        let mut bytes = Vec::new();
        encode_batch(&Batch::new(5, Operation::CreateTransfers(vec![sample_transfer()])), &mut bytes);
        // The amount's scale byte sits after the header (14), three ids (48) and the presence byte.
        bytes[14 + 48 + 1] = 29;
        assert!(matches!(decode_batch(&bytes), Err(DecodeError::InvalidValue { what: "amount", .. })));
    }
}
