//! Currency codes. A ledger holds exactly one currency, named by its ISO 4217 alphabetic code.

use std::fmt;
use std::str::FromStr;

/// Three bytes naming a currency. Any bytes can be carried (they arrive from the wire as such);
/// the ledger accepts a ledger only when [`Currency::is_iso_4217`] holds.
/// The default, `[0, 0, 0]`, is deliberately not a valid code.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(pub [u8; 3]);

/// ISO 4217 list one as published in 2025, sorted, plus the codes withdrawn since 2023 (ANG, BGN,
/// SLL, ZWL) so that balances kept in them stay bookable while they are wound down. Funds codes
/// (BOV, CHE, ...) and the X-codes for metals and special drawing rights are included: banks book them.
const ISO_4217_CODES: [&[u8; 3]; 181] = [
    b"AED", b"AFN", b"ALL", b"AMD", b"ANG", b"AOA", b"ARS", b"AUD", b"AWG", b"AZN", b"BAM", b"BBD", b"BDT", b"BGN",
    b"BHD", b"BIF", b"BMD", b"BND", b"BOB", b"BOV", b"BRL", b"BSD", b"BTN", b"BWP", b"BYN", b"BZD", b"CAD", b"CDF",
    b"CHE", b"CHF", b"CHW", b"CLF", b"CLP", b"CNY", b"COP", b"COU", b"CRC", b"CUP", b"CVE", b"CZK", b"DJF", b"DKK",
    b"DOP", b"DZD", b"EGP", b"ERN", b"ETB", b"EUR", b"FJD", b"FKP", b"GBP", b"GEL", b"GHS", b"GIP", b"GMD", b"GNF",
    b"GTQ", b"GYD", b"HKD", b"HNL", b"HTG", b"HUF", b"IDR", b"ILS", b"INR", b"IQD", b"IRR", b"ISK", b"JMD", b"JOD",
    b"JPY", b"KES", b"KGS", b"KHR", b"KMF", b"KPW", b"KRW", b"KWD", b"KYD", b"KZT", b"LAK", b"LBP", b"LKR", b"LRD",
    b"LSL", b"LYD", b"MAD", b"MDL", b"MGA", b"MKD", b"MMK", b"MNT", b"MOP", b"MRU", b"MUR", b"MVR", b"MWK", b"MXN",
    b"MXV", b"MYR", b"MZN", b"NAD", b"NGN", b"NIO", b"NOK", b"NPR", b"NZD", b"OMR", b"PAB", b"PEN", b"PGK", b"PHP",
    b"PKR", b"PLN", b"PYG", b"QAR", b"RON", b"RSD", b"RUB", b"RWF", b"SAR", b"SBD", b"SCR", b"SDG", b"SEK", b"SGD",
    b"SHP", b"SLE", b"SLL", b"SOS", b"SRD", b"SSP", b"STN", b"SVC", b"SYP", b"SZL", b"THB", b"TJS", b"TMT", b"TND",
    b"TOP", b"TRY", b"TTD", b"TWD", b"TZS", b"UAH", b"UGX", b"USD", b"USN", b"UYI", b"UYU", b"UYW", b"UZS", b"VED",
    b"VES", b"VND", b"VUV", b"WST", b"XAF", b"XAG", b"XAU", b"XBA", b"XBB", b"XBC", b"XBD", b"XCD", b"XCG", b"XDR",
    b"XOF", b"XPD", b"XPF", b"XPT", b"XSU", b"XTS", b"XUA", b"XXX", b"YER", b"ZAR", b"ZMW", b"ZWG", b"ZWL",
];

/// Why text is not a currency code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("currency {0:?} is not three upper-case letters")]
    Malformed(String),
    #[error("currency {0:?} is not an ISO 4217 code")]
    NotIso4217(String),
}

impl Currency {
    /// The code as text, when it is three ASCII letters.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok().filter(|text| text.bytes().all(|byte| byte.is_ascii_uppercase()))
    }

    pub fn is_iso_4217(&self) -> bool {
        ISO_4217_CODES.iter().any(|code| **code == self.0)
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;

    /// Parses an ISO 4217 code such as `USD`. Lower case is refused rather than folded, so that
    /// what a client sent is what the ledger stores.
    fn from_str(text: &str) -> Result<Currency, CurrencyError> {
        let bytes: [u8; 3] = text.as_bytes().try_into().map_err(|_| CurrencyError::Malformed(text.to_owned()))?;
        if !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError::Malformed(text.to_owned()));
        }
        let currency = Currency(bytes);
        if !currency.is_iso_4217() {
            return Err(CurrencyError::NotIso4217(text.to_owned()));
        }
        Ok(currency)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => formatter.write_str(text),
            None => write!(formatter, "{:?}", self.0),
        }
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Currency({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_and_unique() {
        assert!(ISO_4217_CODES.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn parses_iso_codes_and_refuses_others() {
        assert_eq!("AED".parse::<Currency>().unwrap().to_string(), "AED");
        assert!("JPY".parse::<Currency>().is_ok());
        assert!("XAU".parse::<Currency>().is_ok());
        assert_eq!("usd".parse::<Currency>(), Err(CurrencyError::Malformed("usd".into())));
        assert_eq!("USDT".parse::<Currency>(), Err(CurrencyError::Malformed("USDT".into())));
        assert_eq!("ABC".parse::<Currency>(), Err(CurrencyError::NotIso4217("ABC".into())));
    }

    #[test]
    fn raw_bytes_are_carried_but_not_valid() {
        let currency = Currency([0, 1, 2]);
        assert!(!currency.is_iso_4217());
        assert_eq!(currency.as_str(), None);
        assert_eq!(currency.to_string(), "[0, 1, 2]");
    }
}
