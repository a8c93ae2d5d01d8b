//! Conversions between the wire types of `tally-proto` and the ledger's own.
//!
//! The events of write requests are read in `tally_consensus::write_request`, which every replica
//! also uses at apply; this module converts the rest (reads, filters, records going out).

pub use tally_consensus::write_request::{
    FieldError, decimal_from, field_error, narrow, new_account, new_ledger, new_transfer, u128_from, uint128,
};
use tally_proto::v1 as wire;
use tally_state_machine::{
    Account, AccountBalance, AccountTransfersFilter, FieldFilter, Ledger, PendingStatus, StorageRead, Transfer, Units,
    Window,
};

pub fn window(window: Option<&wire::Window>) -> Window {
    let window = window.cloned().unwrap_or_default();
    Window {
        timestamp_min: window.timestamp_min,
        timestamp_max: window.timestamp_max,
        limit: window.limit,
        reversed: window.reversed,
    }
}

pub fn account_transfers_filter(request: &wire::AccountTransfersRequest) -> Result<AccountTransfersFilter, FieldError> {
    Ok(AccountTransfersFilter {
        account_id: u128_from(request.account_id.as_ref()),
        debits: request.debits,
        credits: request.credits,
        code: request.code.map(|code| narrow(code, || "code".into(), 16)).transpose()?,
        user_data_128: request.user_data_128.as_ref().map(|value| u128_from(Some(value))),
        user_data_64: request.user_data_64,
        user_data_32: request.user_data_32,
        window: window(request.window.as_ref()),
    })
}

pub fn field_filter(request: &wire::QueryRequest) -> Result<FieldFilter, FieldError> {
    Ok(FieldFilter {
        ledger: request.ledger,
        code: request.code.map(|code| narrow(code, || "code".into(), 16)).transpose()?,
        user_data_128: request.user_data_128.as_ref().map(|value| u128_from(Some(value))),
        user_data_64: request.user_data_64,
        user_data_32: request.user_data_32,
    })
}

/// Renders stored records for the wire; balances and amounts become decimals at the ledger's scale.
#[derive(Debug)]
pub struct Renderer<'a, R: StorageRead> {
    pub storage: &'a R,
}

impl<R: StorageRead> Renderer<'_, R> {
    fn scale(&self, ledger: u32) -> u8 {
        self.storage.ledger_get(ledger).map_or(0, |ledger| ledger.scale)
    }

    fn decimal(units: Units, scale: u8) -> String {
        units.to_decimal(scale).to_string()
    }

    pub fn ledger(&self, ledger: &Ledger) -> wire::Ledger {
        wire::Ledger {
            id: ledger.id,
            currency: ledger.currency.to_string(),
            scale: u32::from(ledger.scale),
            user_data_128: uint128(ledger.user_data_128),
            user_data_64: ledger.user_data_64,
            user_data_32: ledger.user_data_32,
            timestamp: ledger.timestamp,
        }
    }

    pub fn account(&self, account: &Account) -> wire::Account {
        let scale = self.scale(account.ledger);
        wire::Account {
            id: uint128(account.id),
            ledger: account.ledger,
            code: u32::from(account.code),
            flags: u32::from(account.flags.bits()),
            user_data_128: uint128(account.user_data_128),
            user_data_64: account.user_data_64,
            user_data_32: account.user_data_32,
            debits_pending: Self::decimal(account.debits_pending, scale),
            debits_posted: Self::decimal(account.debits_posted, scale),
            credits_pending: Self::decimal(account.credits_pending, scale),
            credits_posted: Self::decimal(account.credits_posted, scale),
            timestamp: account.timestamp,
        }
    }

    pub fn transfer(&self, transfer: &Transfer) -> wire::Transfer {
        let (status, resolved_at) = match self.storage.pending_status_get(transfer.id) {
            None => (wire::PendingStatus::Unspecified, 0),
            Some(PendingStatus::Pending) => (wire::PendingStatus::Pending, 0),
            Some(PendingStatus::Posted { timestamp }) => (wire::PendingStatus::Posted, timestamp),
            Some(PendingStatus::Voided { timestamp }) => (wire::PendingStatus::Voided, timestamp),
            Some(PendingStatus::Expired { timestamp }) => (wire::PendingStatus::Expired, timestamp),
        };
        wire::Transfer {
            id: uint128(transfer.id),
            debit_account_id: uint128(transfer.debit_account_id),
            credit_account_id: uint128(transfer.credit_account_id),
            amount: Self::decimal(transfer.amount, self.scale(transfer.ledger)),
            pending_id: uint128(transfer.pending_id),
            ledger: transfer.ledger,
            code: u32::from(transfer.code),
            flags: u32::from(transfer.flags.bits()),
            timeout_seconds: transfer.timeout_seconds,
            user_data_128: uint128(transfer.user_data_128),
            user_data_64: transfer.user_data_64,
            user_data_32: transfer.user_data_32,
            timestamp: transfer.timestamp,
            pending_status: status as i32,
            pending_resolved_at: resolved_at,
        }
    }

    pub fn balance(&self, balance: &AccountBalance, scale: u8) -> wire::AccountBalance {
        wire::AccountBalance {
            timestamp: balance.timestamp,
            debits_pending: Self::decimal(balance.debits_pending, scale),
            debits_posted: Self::decimal(balance.debits_posted, scale),
            credits_pending: Self::decimal(balance.credits_pending, scale),
            credits_posted: Self::decimal(balance.credits_posted, scale),
        }
    }

    pub fn account_scale(&self, account_id: u128) -> u8 {
        self.storage.account_get(account_id).map_or(0, |account| self.scale(account.ledger))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field() -> String {
        "amount".into()
    }

    #[test]
    fn decimals_follow_the_wire_grammar() {
        assert_eq!(decimal_from("12.50", field).unwrap().to_string(), "12.50");
        assert_eq!(decimal_from("7", field).unwrap().to_string(), "7");
        assert_eq!(decimal_from(".5", field).unwrap().to_string(), "0.5");
        for bad in ["", ".", "-1", "+1", "1e5", "1,5", "1.2.3", " 1", "1_000", "NaN"] {
            let error = decimal_from(bad, field).unwrap_err();
            assert_eq!(error.field, "amount", "{bad:?}");
        }
        let too_large = decimal_from("79228162514264337593543950336", field).unwrap_err().problem;
        assert!(too_large.contains("79228162514264337593543950336") && too_large.contains("too large"), "{too_large}");
        // rust_decimal alone would round this to 1.0000000000000000000000000000: a ledger would book 1.00.
        let rounded = decimal_from("1.00000000000000000000000000001", field).unwrap_err().problem;
        assert!(rounded.contains("29 decimal places"), "{rounded}");
    }

    #[test]
    fn ids_round_trip_through_the_wire() {
        for id in [0u128, 1, u128::from(u64::MAX) + 1, u128::MAX] {
            assert_eq!(u128_from(uint128(id).as_ref()), id);
        }
    }

    #[test]
    fn fields_that_do_not_fit_are_named() {
        let transfer = wire::NewTransfer { code: 70_000, ..wire::NewTransfer::default() };
        assert_eq!(
            new_transfer(&transfer, 3).unwrap_err(),
            FieldError { field: "transfers[3].code".into(), problem: "70000 does not fit in 16 bits".into() }
        );
        let ledger = wire::NewLedger { currency: "EURO".into(), ..wire::NewLedger::default() };
        assert_eq!(new_ledger(&ledger, 0).unwrap_err().field, "ledgers[0].currency");
        let transfer = wire::NewTransfer { amount: "1.5x".into(), ..wire::NewTransfer::default() };
        assert_eq!(new_transfer(&transfer, 0).unwrap_err().field, "transfers[0].amount");
    }
}
