//! `create_ledgers`: a ledger is one currency at one scale; accounts and transfers name it.

use super::{Event, into_code, same};
use crate::codec::put_new_ledger;
use crate::constants::LEDGER_SCALE_MAX;
use crate::model::{Ledger, NewLedger};
use crate::result::ResultCode::{self, *};
// The glob above brings in `ResultCode::Ok`; this explicit import keeps `Ok` meaning `Result::Ok`.
use crate::storage::Storage;
use crate::writer::LedgerWriter;
use std::result::Result::Ok;

impl Event for NewLedger {
    fn linked(&self) -> bool {
        false // Ledgers carry no flags: each is created on its own.
    }

    fn put(&self, out: &mut Vec<u8>) {
        put_new_ledger(out, self);
    }

    fn apply<S: Storage>(&self, ledger: &mut LedgerWriter<S>, timestamp: u64) -> ResultCode {
        into_code(ledger.create_ledger(self, timestamp))
    }
}

impl<S: Storage> LedgerWriter<S> {
    fn create_ledger(&mut self, ledger: &NewLedger, timestamp: u64) -> Result<(), ResultCode> {
        if ledger.id == 0 {
            return Err(IdMustNotBeZero);
        }
        if !ledger.currency.is_iso_4217() {
            return Err(CurrencyNotIso4217);
        }
        if ledger.scale > LEDGER_SCALE_MAX {
            return Err(ScaleExceedsMax);
        }
        if let Some(existing) = self.storage.ledger_get(ledger.id) {
            same(ledger.currency, existing.currency, ExistsWithDifferentCurrency)?;
            same(ledger.scale, existing.scale, ExistsWithDifferentScale)?;
            same(ledger.user_data_128, existing.user_data_128, ExistsWithDifferentUserData128)?;
            same(ledger.user_data_64, existing.user_data_64, ExistsWithDifferentUserData64)?;
            same(ledger.user_data_32, existing.user_data_32, ExistsWithDifferentUserData32)?;
            return Err(Exists);
        }
        self.assert_not_in_chain();
        self.storage.ledger_insert(&Ledger {
            id: ledger.id,
            currency: ledger.currency,
            scale: ledger.scale,
            user_data_128: ledger.user_data_128,
            user_data_64: ledger.user_data_64,
            user_data_32: ledger.user_data_32,
            timestamp,
        });
        Ok(())
    }
}
