//! Exact amounts. Clients speak `rust_decimal::Decimal`; the ledger counts integer minor units.
//!
//! A ledger has a `scale`: the number of decimal places of its smallest unit (2 for USD cents, 0 for
//! JPY, 3 for KWD fils). An amount is accepted when it is strictly positive and exactly a whole
//! number of those units: `12.50` and `12.5` are both 1,250 units of a scale-2 ledger, while `0.001`
//! is rejected there instead of being rounded. Balances are `u128` counts of units bounded by
//! [`AMOUNT_UNITS_MAX`], so arithmetic on them is exact and overflow is checked explicitly.

use std::fmt;

use rust_decimal::Decimal;

use crate::constants::AMOUNT_UNITS_MAX;

/// An amount in a ledger's minor units (10^-scale of one unit of its currency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Units(pub u128);

/// Why a decimal amount cannot be booked on a ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount has more decimal places than the ledger's scale")]
    ScaleExceedsLedgerScale,
    #[error("amount exceeds the maximum of 2^96 - 1 minor units")]
    ExceedsMax,
}

/// Powers of ten up to 10^28, the largest scale a `Decimal` can carry.
const POWERS_OF_TEN: [u128; 29] = {
    let mut powers = [1u128; 29];
    let mut index = 1;
    while index < powers.len() {
        powers[index] = powers[index - 1] * 10;
        index += 1;
    }
    powers
};

impl Units {
    pub const ZERO: Units = Units(0);
    pub const MAX: Units = Units(AMOUNT_UNITS_MAX);

    /// Converts a client's decimal amount into minor units of a ledger with `scale` decimal places.
    pub fn from_decimal(amount: Decimal, scale: u8) -> Result<Units, AmountError> {
        if amount.is_zero() || amount.is_sign_negative() {
            return Err(AmountError::NotPositive);
        }
        let mantissa = amount.mantissa().unsigned_abs();
        let amount_scale = amount.scale() as usize;
        let ledger_scale = usize::from(scale);
        let units = if amount_scale <= ledger_scale {
            mantissa.checked_mul(POWERS_OF_TEN[ledger_scale - amount_scale]).ok_or(AmountError::ExceedsMax)?
        } else {
            // Trailing zeros beyond the ledger's scale are exact (`1.50` on a scale-1 ledger);
            // any other digit there would have to be rounded away, which a ledger must not do.
            let divisor = POWERS_OF_TEN[amount_scale - ledger_scale];
            if !mantissa.is_multiple_of(divisor) {
                return Err(AmountError::ScaleExceedsLedgerScale);
            }
            mantissa / divisor
        };
        if units > AMOUNT_UNITS_MAX {
            return Err(AmountError::ExceedsMax);
        }
        Ok(Units(units))
    }

    /// The exact decimal value of these units on a ledger with `scale` decimal places.
    pub fn to_decimal(self, scale: u8) -> Decimal {
        assert!(self.0 <= AMOUNT_UNITS_MAX, "units above the maximum: {}", self.0);
        let mantissa = i128::try_from(self.0).expect("bounded by AMOUNT_UNITS_MAX");
        Decimal::from_i128_with_scale(mantissa, u32::from(scale))
    }

    /// Adds within [`AMOUNT_UNITS_MAX`]; `None` when the sum would exceed it.
    pub fn checked_add(self, other: Units) -> Option<Units> {
        let sum = self.0 + other.0; // Both are below 2^96, so the u128 sum cannot wrap.
        (sum <= AMOUNT_UNITS_MAX).then_some(Units(sum))
    }

    /// Subtracts; the ledger only subtracts what it added before, so going below zero is a bug.
    pub fn minus(self, other: Units) -> Units {
        Units(self.0.checked_sub(other.0).expect("a balance went below zero"))
    }

    pub fn saturating_sub(self, other: Units) -> Units {
        Units(self.0.saturating_sub(other.0))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Units {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} units", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn decimal(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn converts_exact_amounts_at_the_ledger_scale() {
        assert_eq!(Units::from_decimal(decimal("12.5"), 2), Ok(Units(1_250)));
        assert_eq!(Units::from_decimal(decimal("12.50"), 2), Ok(Units(1_250)));
        assert_eq!(Units::from_decimal(decimal("1.500"), 1), Ok(Units(15)));
        assert_eq!(Units::from_decimal(decimal("7"), 0), Ok(Units(7)));
        assert_eq!(Units::from_decimal(decimal("0.000000000000000001"), 18), Ok(Units(1)));
    }

    #[test]
    fn rejects_amounts_that_would_need_rounding() {
        assert_eq!(Units::from_decimal(decimal("0.001"), 2), Err(AmountError::ScaleExceedsLedgerScale));
        assert_eq!(Units::from_decimal(decimal("1.5"), 0), Err(AmountError::ScaleExceedsLedgerScale));
    }

    #[test]
    fn rejects_zero_and_negative_amounts() {
        assert_eq!(Units::from_decimal(decimal("0"), 2), Err(AmountError::NotPositive));
        assert_eq!(Units::from_decimal(decimal("0.00"), 2), Err(AmountError::NotPositive));
        assert_eq!(Units::from_decimal(decimal("-0.01"), 2), Err(AmountError::NotPositive));
    }

    #[test]
    fn rejects_amounts_above_the_maximum() {
        // 2^96 - 1 units fit at scale 0; one more unit does not.
        assert_eq!(Units::from_decimal(Decimal::MAX, 0), Ok(Units::MAX));
        assert_eq!(Units::from_decimal(Decimal::MAX, 1), Err(AmountError::ExceedsMax));
        assert_eq!(Units::from_decimal(decimal("1"), 18).map(|units| units.0), Ok(10u128.pow(18)));
        assert_eq!(Units::from_decimal(decimal("100000000000"), 18), Err(AmountError::ExceedsMax));
    }

    #[test]
    fn round_trips_through_decimal() {
        for (units, scale) in [(1u128, 2u8), (1_250, 2), (AMOUNT_UNITS_MAX, 0), (AMOUNT_UNITS_MAX, 18)] {
            let decimal = Units(units).to_decimal(scale);
            assert_eq!(Units::from_decimal(decimal, scale), Ok(Units(units)));
        }
        assert_eq!(Units(1_250).to_decimal(2).to_string(), "12.50");
    }

    #[test]
    fn checked_add_stops_at_the_maximum() {
        assert_eq!(Units(AMOUNT_UNITS_MAX - 1).checked_add(Units(1)), Some(Units::MAX));
        assert_eq!(Units::MAX.checked_add(Units(1)), None);
    }
}
