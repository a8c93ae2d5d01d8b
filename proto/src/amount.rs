//! The wire's grammar for amounts, shared by the gateway, the SDK and `tallyctl`.
//!
//! An amount travels as a decimal string: digits with at most one `.`, no sign, no exponent, no
//! separators (`12.50`). It must parse exactly: `rust_decimal` rounds digits it cannot hold
//! (`1.00000000000000000000000000001` would become `1.0000000000000000000000000000`, and a ledger
//! would book 1.00), so an amount with more digits than a `Decimal` holds exactly is refused, never
//! rounded. Whether the amount suits a ledger (positive, within its scale and maximum) is the
//! ledger's to decide, with a result code.

use std::str::FromStr;

use rust_decimal::Decimal;

/// Decimal places a `Decimal` can carry.
pub const AMOUNT_DECIMAL_PLACES_MAX: usize = 28;

/// Why a text is not an amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmountSyntaxError {
    /// Not digits with an optional `.`: a sign, an exponent, a separator, or nothing at all.
    NotDecimal { text: String },
    /// More decimal places than [`AMOUNT_DECIMAL_PLACES_MAX`].
    TooManyDecimalPlaces { text: String, places: usize },
    /// More significant digits than a `Decimal` holds exactly (above 79228162514264337593543950335
    /// with the decimal point removed).
    TooLarge { text: String },
}

impl std::fmt::Display for AmountSyntaxError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AmountSyntaxError::NotDecimal { text } => write!(
                formatter,
                "{text:?} is not a decimal amount: digits with an optional '.', such as 12.50 (no sign, exponent or separators)"
            ),
            AmountSyntaxError::TooManyDecimalPlaces { text, places } => write!(
                formatter,
                "{text:?} has {places} decimal places; an amount has at most {AMOUNT_DECIMAL_PLACES_MAX}"
            ),
            AmountSyntaxError::TooLarge { text } => write!(
                formatter,
                "{text:?} is too large: an amount's digits, without the point, are at most {}",
                Decimal::MAX
            ),
        }
    }
}

impl std::error::Error for AmountSyntaxError {}

/// Parses an amount in the wire's grammar, exactly.
pub fn parse_amount(text: &str) -> Result<Decimal, AmountSyntaxError> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
        return Err(AmountSyntaxError::NotDecimal { text: text.to_owned() });
    }
    if fraction.len() > AMOUNT_DECIMAL_PLACES_MAX {
        return Err(AmountSyntaxError::TooManyDecimalPlaces { text: text.to_owned(), places: fraction.len() });
    }
    let too_large = || AmountSyntaxError::TooLarge { text: text.to_owned() };
    let amount = Decimal::from_str(text).map_err(|_| too_large())?;
    // Exact, or rounded: the parsed value must keep every digit and the scale that were written.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let kept = amount.mantissa().to_string();
    let exact = amount.scale() as usize == fraction.len() && (kept == digits || (digits.is_empty() && kept == "0"));
    if !exact {
        return Err(too_large());
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_the_wire_grammar_parse_exactly() {
        for (text, expected) in [
            ("12.50", "12.50"),
            ("0", "0"),
            ("007.5", "7.5"),
            ("5.", "5"),
            (".25", "0.25"),
            ("79228162514264337593543950335", "79228162514264337593543950335"),
            ("7922816251426433759354395033.5", "7922816251426433759354395033.5"),
            ("0.0000000000000000000000000001", "0.0000000000000000000000000001"),
        ] {
            assert_eq!(parse_amount(text).map(|amount| amount.to_string()), Ok(expected.to_owned()), "{text}");
        }
    }

    #[test]
    fn signs_exponents_and_separators_are_not_amounts() {
        for text in ["", ".", "1e5", "1E5", "-5", "+5", "1,000.00", "1 000", "1.2.3", "12.50 ", "0x10", "١٢"] {
            assert!(matches!(parse_amount(text), Err(AmountSyntaxError::NotDecimal { .. })), "{text:?}");
        }
        let error = parse_amount("1e5").unwrap_err().to_string();
        assert!(error.contains("no sign, exponent"), "{error}");
    }

    #[test]
    fn digits_a_decimal_cannot_hold_are_refused_never_rounded() {
        for text in
            ["79228162514264337593543950336", "1234567890123456789012345678.12", "9.0000000000000000000000000001"]
        {
            let error = parse_amount(text).unwrap_err();
            assert!(matches!(error, AmountSyntaxError::TooLarge { .. }), "{text}: {error:?}");
            assert!(error.to_string().contains("too large"), "{error}");
        }
        let error = parse_amount("1.00000000000000000000000000001").unwrap_err();
        assert_eq!(
            error,
            AmountSyntaxError::TooManyDecimalPlaces { text: "1.00000000000000000000000000001".into(), places: 29 }
        );
    }
}
