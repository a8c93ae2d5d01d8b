//! What the vector tests share: reading the committed files' hex fields.

pub fn bytes(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex")).collect()
}

pub fn array<const N: usize>(hex: &str) -> [u8; N] {
    bytes(hex).try_into().expect("the field's length")
}
