//! aws-lc-rs and PQClean (through `pqcrypto-mldsa`) are two independent ML-DSA implementations:
//! keys and signatures made by either must work in the other, both ways, for ML-DSA-65 and
//! ML-DSA-87. A disagreement means one of them is not FIPS 204.

use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _, SecretKey as _};
use tally_identity::sign::signed_message;
use tally_identity::{Algorithm, AwsLcVerifier, Domain, MlDsaKeyPair, PublicKey, Signer, Verifier};

/// One PQClean parameter set, as plain bytes.
struct Pqclean {
    keypair: fn() -> (Vec<u8>, Vec<u8>),
    sign: fn(&[u8], &[u8]) -> Vec<u8>,
    verify: fn(&[u8], &[u8], &[u8]) -> bool,
}

fn pqclean(algorithm: Algorithm) -> Pqclean {
    macro_rules! scheme {
        ($module:ident) => {{
            use pqcrypto_mldsa::$module as scheme;
            Pqclean {
                keypair: || {
                    let (public, secret) = scheme::keypair();
                    (public.as_bytes().to_vec(), secret.as_bytes().to_vec())
                },
                sign: |message, secret| {
                    let secret = scheme::SecretKey::from_bytes(secret).unwrap();
                    scheme::detached_sign(message, &secret).as_bytes().to_vec()
                },
                verify: |message, signature, public| {
                    let signature = scheme::DetachedSignature::from_bytes(signature).unwrap();
                    let public = scheme::PublicKey::from_bytes(public).unwrap();
                    scheme::verify_detached_signature(&signature, message, &public).is_ok()
                },
            }
        }};
    }
    match algorithm {
        Algorithm::MlDsa65 => scheme!(mldsa65),
        Algorithm::MlDsa87 => scheme!(mldsa87),
    }
}

#[test]
fn keys_made_by_pqclean_sign_and_verify_in_aws_lc_rs_and_back() {
    for algorithm in Algorithm::ALL {
        let pqclean = pqclean(algorithm);
        let (public, secret) = (pqclean.keypair)();
        let imported = MlDsaKeyPair::from_expanded_private_key(algorithm, &secret).unwrap();
        assert_eq!(imported.public_key().as_bytes(), public.as_slice(), "{algorithm}: the same public key");
        let message = signed_message(Domain::Request, b"from pqclean");
        let by_pqclean = (pqclean.sign)(&message, &secret);
        let key = PublicKey::new(algorithm, public.clone()).unwrap();
        assert_eq!(AwsLcVerifier.verify(&key, Domain::Request, b"from pqclean", &by_pqclean), Ok(()), "{algorithm}");
        let by_aws_lc = imported.sign(Domain::Request, b"from pqclean").unwrap();
        assert!((pqclean.verify)(&message, &by_aws_lc, &public), "{algorithm}: aws-lc-rs's signature in PQClean");
        assert!(!(pqclean.verify)(&signed_message(Domain::Request, b"other"), &by_aws_lc, &public), "{algorithm}");
    }
}

#[test]
fn keys_made_by_aws_lc_rs_sign_and_verify_in_pqclean_and_back() {
    for algorithm in Algorithm::ALL {
        let pqclean = pqclean(algorithm);
        let key_pair = MlDsaKeyPair::generate(algorithm).unwrap();
        let public = key_pair.public_key().as_bytes().to_vec();
        let secret = key_pair.expanded_private_key().unwrap();
        let message = signed_message(Domain::Request, b"from aws-lc-rs");
        let by_aws_lc = key_pair.sign(Domain::Request, b"from aws-lc-rs").unwrap();
        assert!((pqclean.verify)(&message, &by_aws_lc, &public), "{algorithm}: aws-lc-rs's signature in PQClean");
        let by_pqclean = (pqclean.sign)(&message, &secret);
        let verified = AwsLcVerifier.verify(key_pair.public_key(), Domain::Request, b"from aws-lc-rs", &by_pqclean);
        assert_eq!(verified, Ok(()), "{algorithm}: PQClean's signature, with aws-lc-rs's key, in aws-lc-rs");
        let mut flipped = by_pqclean.clone();
        flipped[0] ^= 0x80;
        assert!(AwsLcVerifier.verify(key_pair.public_key(), Domain::Request, b"from aws-lc-rs", &flipped).is_err());
    }
}
