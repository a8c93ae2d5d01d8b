//! Keys, signatures and a request's signed bytes: what verifies, and that everything else is
//! refused with an error that says why.

use tally_identity::request::{RequestSignError, RequestVerifyError};
use tally_identity::sign::VerifyError;
use tally_identity::{
    Algorithm, AwsLcVerifier, ClusterId, Domain, KeyError, MlDsaKeyPair, PublicKey, RequestSigner, Signer, Verifier,
    sign_request, signed_payload, verify_request,
};

fn key(algorithm: Algorithm, seed: u8) -> MlDsaKeyPair {
    MlDsaKeyPair::from_seed(algorithm, &[seed; 32]).unwrap()
}

#[test]
fn a_signature_verifies_with_its_key_and_payload_and_nothing_else() {
    for algorithm in Algorithm::ALL {
        let signer = key(algorithm, 1);
        let other = key(algorithm, 2);
        let payload = b"one hundred euros";
        let signature = signer.sign(Domain::Request, payload).unwrap();
        assert_eq!(signature.len(), algorithm.signature_bytes(), "{algorithm}");
        let verify = |key: &PublicKey, payload: &[u8], signature: &[u8]| {
            AwsLcVerifier.verify(key, Domain::Request, payload, signature)
        };
        assert_eq!(verify(signer.public_key(), payload, &signature), Ok(()), "{algorithm}");
        let bad = |result: Result<(), VerifyError>| matches!(result, Err(VerifyError::BadSignature { .. }));
        assert!(bad(verify(other.public_key(), payload, &signature)), "{algorithm}: another key");
        assert!(bad(verify(signer.public_key(), b"one hundred euro5", &signature)), "{algorithm}: another payload");
        let mut flipped = signature.clone();
        flipped[100] ^= 1;
        assert!(bad(verify(signer.public_key(), payload, &flipped)), "{algorithm}: a flipped bit");
        assert_eq!(
            verify(signer.public_key(), payload, &signature[1..]),
            Err(VerifyError::SignatureLength {
                algorithm,
                expected: algorithm.signature_bytes(),
                found: algorithm.signature_bytes() - 1
            })
        );
    }
}

#[test]
fn signing_is_randomised_and_both_signatures_verify() {
    let signer = key(Algorithm::MlDsa65, 3);
    let first = signer.sign(Domain::Request, b"payload").unwrap();
    let second = signer.sign(Domain::Request, b"payload").unwrap();
    assert_ne!(first, second, "hedged signing: the same bytes signed twice differ");
    for signature in [first, second] {
        assert_eq!(AwsLcVerifier.verify(signer.public_key(), Domain::Request, b"payload", &signature), Ok(()));
    }
}

#[test]
fn a_seed_always_makes_the_same_keys_and_an_exported_private_key_signs_as_the_original() {
    for algorithm in Algorithm::ALL {
        assert_eq!(key(algorithm, 4).public_key(), key(algorithm, 4).public_key(), "{algorithm}");
        assert_ne!(key(algorithm, 4).public_key(), key(algorithm, 5).public_key(), "{algorithm}");
        let original = MlDsaKeyPair::generate(algorithm).unwrap();
        let exported = original.expanded_private_key().unwrap();
        let imported = MlDsaKeyPair::from_expanded_private_key(algorithm, &exported).unwrap();
        assert_eq!(imported.public_key(), original.public_key(), "{algorithm}");
        let signature = imported.sign(Domain::Request, b"x").unwrap();
        assert_eq!(AwsLcVerifier.verify(original.public_key(), Domain::Request, b"x", &signature), Ok(()));
        let refused = MlDsaKeyPair::from_expanded_private_key(algorithm, &exported[1..]);
        assert!(matches!(refused, Err(KeyError::PrivateKey { .. })), "{algorithm}: a truncated private key");
    }
}

#[test]
fn public_keys_are_checked_for_length_and_key_ids_tell_algorithms_and_keys_apart() {
    let bytes = key(Algorithm::MlDsa65, 6).public_key().as_bytes().to_vec();
    assert_eq!(
        PublicKey::new(Algorithm::MlDsa87, bytes.clone()),
        Err(KeyError::PublicKeyLength { algorithm: Algorithm::MlDsa87, expected: 2592, found: 1952 })
    );
    let key_65 = PublicKey::new(Algorithm::MlDsa65, bytes).unwrap();
    assert_eq!(key_65.key_id(), key(Algorithm::MlDsa65, 6).public_key().key_id(), "a key id depends on the key only");
    assert_ne!(key_65.key_id(), key(Algorithm::MlDsa65, 7).public_key().key_id());
    assert_eq!(key_65.key_id().to_string().len(), 32, "16 bytes in hex");
    assert_eq!(Algorithm::from_code(87), Some(Algorithm::MlDsa87));
    assert_eq!(Algorithm::from_code(44), None, "ML-DSA-44 is not used");
}

fn request_signer(key: &MlDsaKeyPair) -> RequestSigner {
    RequestSigner {
        cluster: ClusterId([7; 16]),
        principal: 9,
        key_id: key.public_key().key_id(),
        request_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        deadline_unix_nanoseconds: 1_796_000_000_000_000_000,
    }
}

#[test]
fn a_request_signature_covers_every_field_and_the_request_bytes() {
    let key = key(Algorithm::MlDsa65, 8);
    let signer = request_signer(&key);
    let request = b"\x0a\x03abc";
    let signature = sign_request(&key, &signer, request).unwrap();
    assert_eq!(verify_request(&AwsLcVerifier, key.public_key(), &signer, request, &signature), Ok(()));
    let changed = [
        RequestSigner { cluster: ClusterId([8; 16]), ..signer },
        RequestSigner { principal: 10, ..signer },
        RequestSigner { request_id: signer.request_id + 1, ..signer },
        RequestSigner { deadline_unix_nanoseconds: signer.deadline_unix_nanoseconds + 1, ..signer },
    ];
    for other in changed {
        assert_ne!(signed_payload(&other, request), signed_payload(&signer, request), "{other:?}");
        let refused = verify_request(&AwsLcVerifier, key.public_key(), &other, request, &signature);
        assert!(matches!(refused, Err(RequestVerifyError::Signature(VerifyError::BadSignature { .. }))), "{other:?}");
    }
    let refused = verify_request(&AwsLcVerifier, key.public_key(), &signer, b"\x0a\x03abd", &signature);
    assert!(matches!(refused, Err(RequestVerifyError::Signature(_))), "other request bytes");
}

#[test]
fn a_request_names_the_key_that_signs_it() {
    let key = key(Algorithm::MlDsa65, 9);
    let other = self::key(Algorithm::MlDsa65, 10);
    let signer = request_signer(&key);
    let named = signer.key_id;
    assert_eq!(
        sign_request(&other, &signer, b"r"),
        Err(RequestSignError::WrongKey { named, held: other.public_key().key_id() })
    );
    let signature = sign_request(&key, &signer, b"r").unwrap();
    assert_eq!(
        verify_request(&AwsLcVerifier, other.public_key(), &signer, b"r", &signature),
        Err(RequestVerifyError::WrongKey { named, given: other.public_key().key_id() })
    );
}

#[test]
fn a_public_key_file_reads_back_as_the_same_key_and_nothing_else_passes_for_one() {
    for algorithm in Algorithm::ALL {
        let public_key = key(algorithm, 11).public_key().clone();
        let file = public_key.to_pem();
        assert!(file.starts_with("-----BEGIN TALLY ML-DSA PUBLIC KEY-----"), "{file}");
        assert_eq!(PublicKey::from_pem(&file), Ok(public_key.clone()), "{algorithm}");
    }
    let certificate = pem::encode(&pem::Pem::new("CERTIFICATE", vec![65; 1953]));
    assert!(matches!(PublicKey::from_pem(&certificate), Err(KeyError::NotAPublicKey(_))));
    let short = pem::encode(&pem::Pem::new("TALLY ML-DSA PUBLIC KEY", vec![65; 100]));
    assert!(matches!(PublicKey::from_pem(&short), Err(KeyError::PublicKeyLength { found: 99, .. })));
    let unknown = pem::encode(&pem::Pem::new("TALLY ML-DSA PUBLIC KEY", vec![44; 1313]));
    assert_eq!(PublicKey::from_pem(&unknown), Err(KeyError::UnknownAlgorithm(44)));
}
