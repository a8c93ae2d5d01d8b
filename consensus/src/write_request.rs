//! The events of a write request, read from its wire encoding (`tally.v1.WriteRequest`).
//!
//! The gateway reads a request to check it before proposing it, and every replica reads it again
//! from the bytes its principal signed when it applies the log entry that carries them: this is
//! the one reading both use, so a request means the same to both. Incoming messages are checked field by field; an error names the field (`transfers[3].amount`)
//! and says what is wrong, and becomes `INVALID_ARGUMENT` before anything reaches the log. What the
//! ledger itself decides (an unknown account, a zero amount) is left to it and comes back as a
//! result code.

use tally_proto::amount::parse_amount;
use tally_proto::v1 as wire;
use tally_state_machine::{
    AccountFlags, Currency, Decimal, NewAccount, NewLedger, NewTransfer, Operation, TransferFlags,
};

/// A field that cannot be read, with its path in the request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

pub fn field_error(field: String, problem: impl Into<String>) -> FieldError {
    FieldError { field, problem: problem.into() }
}

pub fn u128_from(value: Option<&wire::Uint128>) -> u128 {
    value.map_or(0, |value| (u128::from(value.high) << 64) | u128::from(value.low))
}

pub fn uint128(value: u128) -> Option<wire::Uint128> {
    let high = u64::try_from(value >> 64).expect("the high half fits");
    let low = u64::try_from(value & u128::from(u64::MAX)).expect("the low half fits");
    Some(wire::Uint128 { high, low })
}

pub fn narrow<T: TryFrom<u32>>(value: u32, field: impl FnOnce() -> String, bits: u32) -> Result<T, FieldError> {
    T::try_from(value).map_err(|_| field_error(field(), format!("{value} does not fit in {bits} bits")))
}

/// Parses the wire's decimal grammar exactly (`tally_proto::amount`): digits with at most one '.',
/// no sign, exponent or separators, and never rounded.
pub fn decimal_from(text: &str, field: impl FnOnce() -> String) -> Result<Decimal, FieldError> {
    parse_amount(text).map_err(|error| field_error(field(), error.to_string()))
}

pub fn new_ledger(ledger: &wire::NewLedger, index: usize) -> Result<NewLedger, FieldError> {
    let field = |name: &str| format!("ledgers[{index}].{name}");
    let currency: [u8; 3] = ledger
        .currency
        .as_bytes()
        .try_into()
        .map_err(|_| field_error(field("currency"), format!("{:?} is not a three-letter code", ledger.currency)))?;
    Ok(NewLedger {
        id: ledger.id,
        currency: Currency(currency),
        scale: narrow(ledger.scale, || field("scale"), 8)?,
        user_data_128: u128_from(ledger.user_data_128.as_ref()),
        user_data_64: ledger.user_data_64,
        user_data_32: ledger.user_data_32,
    })
}

pub fn new_account(account: &wire::NewAccount, index: usize) -> Result<NewAccount, FieldError> {
    let field = |name: &str| format!("accounts[{index}].{name}");
    Ok(NewAccount {
        id: u128_from(account.id.as_ref()),
        ledger: account.ledger,
        code: narrow(account.code, || field("code"), 16)?,
        flags: AccountFlags::from_bits_retain(narrow(account.flags, || field("flags"), 16)?),
        user_data_128: u128_from(account.user_data_128.as_ref()),
        user_data_64: account.user_data_64,
        user_data_32: account.user_data_32,
    })
}

pub fn new_transfer(transfer: &wire::NewTransfer, index: usize) -> Result<NewTransfer, FieldError> {
    let field = |name: &str| format!("transfers[{index}].{name}");
    let amount = match transfer.amount.as_str() {
        "" => None,
        text => Some(decimal_from(text, || field("amount"))?),
    };
    Ok(NewTransfer {
        id: u128_from(transfer.id.as_ref()),
        debit_account_id: u128_from(transfer.debit_account_id.as_ref()),
        credit_account_id: u128_from(transfer.credit_account_id.as_ref()),
        amount,
        pending_id: u128_from(transfer.pending_id.as_ref()),
        ledger: transfer.ledger,
        code: narrow(transfer.code, || field("code"), 16)?,
        flags: TransferFlags::from_bits_retain(narrow(transfer.flags, || field("flags"), 16)?),
        timeout_seconds: transfer.timeout_seconds,
        user_data_128: u128_from(transfer.user_data_128.as_ref()),
        user_data_64: transfer.user_data_64,
        user_data_32: transfer.user_data_32,
    })
}

/// The events of a write request's body, checked field by field; the first field that cannot be
/// read otherwise.
pub fn operation_of(body: &[u8]) -> Result<Operation, FieldError> {
    use prost::Message;
    let request = wire::WriteRequest::decode(body)
        .map_err(|error| field_error("body".into(), format!("not a WriteRequest: {error}")))?;
    operation_from(request.operation)
}

/// The events of a decoded write request, checked field by field.
pub fn operation_from(operation: Option<wire::write_request::Operation>) -> Result<Operation, FieldError> {
    use wire::write_request::Operation as Wire;
    Ok(match operation {
        None => return Err(field_error("operation".into(), "names no operation")),
        Some(Wire::CreateLedgers(request)) => Operation::CreateLedgers(
            request
                .ledgers
                .iter()
                .enumerate()
                .map(|(index, ledger)| new_ledger(ledger, index))
                .collect::<Result<_, _>>()?,
        ),
        Some(Wire::CreateAccounts(request)) => Operation::CreateAccounts(
            request
                .accounts
                .iter()
                .enumerate()
                .map(|(index, account)| new_account(account, index))
                .collect::<Result<_, _>>()?,
        ),
        Some(Wire::CreateTransfers(request)) => Operation::CreateTransfers(
            request
                .transfers
                .iter()
                .enumerate()
                .map(|(index, transfer)| new_transfer(transfer, index))
                .collect::<Result<_, _>>()?,
        ),
    })
}
