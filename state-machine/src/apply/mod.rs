//! One file per operation: the validation and the writes of each kind of event.
//!
//! Every `create_*` function checks first and writes last: when it returns an error nothing was
//! written, so only linked chains ever need undoing. Checks run in a fixed order (fields of the
//! event alone, then "does this id exist", then rules that read other records), which makes the
//! code an event gets deterministic and documented.

mod accounts;
mod expiry;
mod ledgers;
mod transfers;

use crate::result::ResultCode;
use crate::storage::Storage;
use crate::writer::LedgerWriter;

/// An event kind that can be applied in a batch.
pub(crate) trait Event {
    fn linked(&self) -> bool;
    /// Appends the event's canonical encoding (for the digest).
    fn put(&self, out: &mut Vec<u8>);
    fn apply<S: Storage>(&self, ledger: &mut LedgerWriter<S>, timestamp: u64) -> ResultCode;
    /// Called when the event's failure is final and its code is transient (see
    /// [`ResultCode::is_transient`]).
    fn record_failure<S: Storage>(&self, _ledger: &mut LedgerWriter<S>, _code: ResultCode, _timestamp: u64) {}
}

/// Folds the `Result` style of the `create_*` functions into a code: `Err` carries every code
/// other than `ok`, including `exists`.
fn into_code(result: Result<(), ResultCode>) -> ResultCode {
    match result {
        Ok(()) => ResultCode::Ok,
        Err(code) => code,
    }
}

/// Fails with `different` unless the two values are equal.
fn same<T: PartialEq>(submitted: T, stored: T, different: ResultCode) -> Result<(), ResultCode> {
    if submitted == stored { Ok(()) } else { Err(different) }
}

fn check_id(id: u128) -> Result<(), ResultCode> {
    match id {
        0 => Err(ResultCode::IdMustNotBeZero),
        u128::MAX => Err(ResultCode::IdMustNotBeIntMax),
        _ => Ok(()),
    }
}
