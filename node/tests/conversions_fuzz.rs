//! Fuzzing the gateway's conversions from the wire with proptest: any bytes a client sends are
//! either converted into the ledger's events exactly or refused with an error naming the field,
//! and never panic. Inputs: arbitrary bytes decoded as each write request, valid encodings with
//! bytes flipped, and amounts drawn from the characters of decimal and scientific notation.
//!
//! `TALLY_FUZZ_CASES` sets the number of inputs of each kind (default 2,000); `scripts/fuzz.sh`
//! runs far more. `TALLY_SEED` replays a failure.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use prost::Message;
use tally_node::convert::{
    account_transfers_filter, decimal_from, field_filter, new_account, new_ledger, new_transfer, uint128,
};
use tally_proto::v1 as wire;

fn cases() -> u32 {
    std::env::var("TALLY_FUZZ_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(2_000)
}

fn runner() -> (TestRunner, u64) {
    let seed = std::env::var("TALLY_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(0x7A11_C0DE);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&u64::to_le_bytes(seed));
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    (TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)), seed)
}

/// Converts each event and counts the ones that convert; an error must name the field of the event
/// it is about (`{prefix}[{index}].…`).
fn convert_each<W, E>(
    events: &[W],
    prefix: &str,
    convert: impl Fn(&W, usize) -> Result<E, tally_node::convert::FieldError>,
) -> usize {
    let mut converted = 0;
    for (index, event) in events.iter().enumerate() {
        match convert(event, index) {
            Ok(_) => converted += 1,
            Err(error) => assert!(
                error.field.starts_with(&format!("{prefix}[{index}].")),
                "{error} does not name {prefix}[{index}]"
            ),
        }
    }
    converted
}

/// Decodes `bytes` as every request the gateway converts and converts what decodes; counts the
/// events converted.
fn convert_all(bytes: &[u8]) -> usize {
    let mut converted = 0;
    if let Ok(request) = wire::CreateTransfersRequest::decode(bytes) {
        converted += convert_each(&request.transfers, "transfers", new_transfer);
    }
    if let Ok(request) = wire::CreateAccountsRequest::decode(bytes) {
        converted += convert_each(&request.accounts, "accounts", new_account);
    }
    if let Ok(request) = wire::CreateLedgersRequest::decode(bytes) {
        converted += convert_each(&request.ledgers, "ledgers", new_ledger);
    }
    if let Ok(request) = wire::AccountTransfersRequest::decode(bytes) {
        let _ = account_transfers_filter(&request);
    }
    if let Ok(request) = wire::QueryRequest::decode(bytes) {
        let _ = field_filter(&request);
    }
    converted
}

fn valid_request() -> Vec<u8> {
    let transfer = wire::NewTransfer {
        id: uint128(7),
        debit_account_id: uint128(1),
        credit_account_id: uint128(2),
        amount: "12.50".into(),
        pending_id: None,
        ledger: 978,
        code: 1,
        flags: 3,
        timeout_seconds: 60,
        user_data_128: uint128(u128::MAX),
        user_data_64: 9,
        user_data_32: 10,
    };
    wire::CreateTransfersRequest { transfers: vec![transfer.clone(), transfer] }.encode_to_vec()
}

#[test]
fn arbitrary_request_bytes_convert_or_name_the_field_never_a_panic() {
    let (mut runner, seed) = runner();
    let result = runner.run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
        convert_all(&bytes);
        Ok(())
    });
    assert!(result.is_ok(), "with TALLY_SEED={seed}: {result:?}");
}

#[test]
fn flipped_valid_requests_convert_or_name_the_field_never_a_panic() {
    let valid = valid_request();
    assert_eq!(convert_all(&valid), 2, "the unflipped request converts");
    let (mut runner, seed) = runner();
    let flips = prop::collection::vec((any::<usize>(), 0u8..8), 1..4);
    let converted = std::cell::Cell::new(0);
    let result = runner.run(&flips, |flips| {
        let mut bytes = valid.clone();
        for (position, bit) in flips {
            let position = position % bytes.len();
            bytes[position] ^= 1 << bit;
        }
        converted.set(converted.get() + convert_all(&bytes));
        Ok(())
    });
    assert!(result.is_ok(), "with TALLY_SEED={seed}: {result:?}");
    assert!(converted.get() > 0, "no flipped request converted: the flips never got past decoding");
}

#[test]
fn an_amount_converts_only_when_it_is_exactly_digits_with_an_optional_point() {
    let (mut runner, seed) = runner();
    let amount = "[0-9.eE+\\- ,_]{0,36}";
    let result = runner.run(&amount, |text| {
        let grammar = !text.is_empty()
            && text.bytes().all(|byte| byte.is_ascii_digit() || byte == b'.')
            && text.bytes().filter(|byte| *byte == b'.').count() <= 1
            && text.bytes().any(|byte| byte.is_ascii_digit());
        match decimal_from(&text, || "amount".into()) {
            Ok(amount) => {
                prop_assert!(grammar, "{text:?} converted to {amount}");
                // Exact: the value has the text's digits and decimal places.
                let places = text.split_once('.').map_or(0, |(_, fraction)| fraction.len());
                prop_assert_eq!(amount.scale() as usize, places, "{:?}", text);
                let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                let digits = digits.trim_start_matches('0');
                let kept = amount.mantissa().to_string();
                prop_assert!(kept == digits || (digits.is_empty() && kept == "0"), "{text:?} became {amount}");
            }
            Err(error) => prop_assert_eq!(error.field, "amount"),
        }
        Ok(())
    });
    assert!(result.is_ok(), "with TALLY_SEED={seed}: {result:?}");
}
