//! A key file opens with its passphrase to the key it sealed, and with nothing else: a wrong
//! passphrase, a changed byte anywhere (the header included), or a file of another kind is refused
//! with its reason.

use tally_identity::key_file::{self, KeyFileError, PBKDF2_ITERATIONS};
use tally_identity::{Algorithm, AwsLcVerifier, Domain, Signer, Verifier};

const PASSPHRASE: &str = "correct horse battery staple";

/// The file with `change` applied to its binary contents.
fn altered(file: &str, change: impl FnOnce(&mut Vec<u8>)) -> String {
    let parsed = pem::parse(file).unwrap();
    let mut contents = parsed.contents().to_vec();
    change(&mut contents);
    pem::encode(&pem::Pem::new(parsed.tag(), contents))
}

#[test]
fn a_key_file_opens_with_its_passphrase_to_the_same_key() {
    for algorithm in Algorithm::ALL {
        let (key, file) = key_file::generate(algorithm, PASSPHRASE).unwrap();
        assert!(file.starts_with("-----BEGIN TALLY ENCRYPTED ML-DSA KEY-----"), "{file}");
        let opened = key_file::open(&file, PASSPHRASE).unwrap();
        assert_eq!(opened.public_key(), key.public_key(), "{algorithm}");
        let signature = opened.sign(Domain::Request, b"payload").unwrap();
        assert_eq!(AwsLcVerifier.verify(key.public_key(), Domain::Request, b"payload", &signature), Ok(()));
    }
}

#[test]
fn a_wrong_passphrase_or_any_changed_byte_does_not_open_it() {
    let (_, file) = key_file::generate(Algorithm::MlDsa65, PASSPHRASE).unwrap();
    assert_eq!(key_file::open(&file, "correct horse battery stapl3").err(), Some(KeyFileError::WrongPassphrase));
    // The salt, the nonce, the sealed seed and its tag: each byte is authenticated.
    for at in [5 + 4, 5 + 4 + 16, 37, 37 + 31, 37 + 32 + 15] {
        let changed = altered(&file, |contents| contents[at] ^= 1);
        assert_eq!(key_file::open(&changed, PASSPHRASE).err(), Some(KeyFileError::WrongPassphrase), "byte {at}");
    }
    let other_algorithm = altered(&file, |contents| contents[4] = 87);
    assert_eq!(key_file::open(&other_algorithm, PASSPHRASE).err(), Some(KeyFileError::WrongPassphrase));
    let fewer_iterations = altered(&file, |contents| contents[5..9].copy_from_slice(&1_000u32.to_be_bytes()));
    assert_eq!(key_file::open(&fewer_iterations, PASSPHRASE).err(), Some(KeyFileError::Iterations(1_000)));
    let more_iterations =
        altered(&file, |contents| contents[5..9].copy_from_slice(&(PBKDF2_ITERATIONS + 1).to_be_bytes()));
    assert_eq!(key_file::open(&more_iterations, PASSPHRASE).err(), Some(KeyFileError::WrongPassphrase));
}

#[test]
fn short_passphrases_and_files_of_other_kinds_are_refused() {
    assert_eq!(key_file::generate(Algorithm::MlDsa65, "short").err(), Some(KeyFileError::PassphraseTooShort));
    let certificate = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0; 10]));
    assert!(matches!(key_file::open(&certificate, PASSPHRASE), Err(KeyFileError::NotAKeyFile(_))));
    assert!(matches!(key_file::open("not PEM at all", PASSPHRASE), Err(KeyFileError::NotAKeyFile(_))));
    let (_, file) = key_file::generate(Algorithm::MlDsa65, PASSPHRASE).unwrap();
    let truncated = altered(&file, |contents| contents.truncate(40));
    assert!(matches!(key_file::open(&truncated, PASSPHRASE), Err(KeyFileError::NotAKeyFile(_))));
}
