//! The committed request-signature vectors (`proto/vectors/request-signature-v1.json`), which
//! clients in other languages test against, still describe what this crate signs and verifies: the
//! keys their seeds make, the key ids, the signed bytes, and signatures that verify (in aws-lc-rs
//! and in PQClean), while a vector with any byte changed does not.

mod support;

use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _};
use serde::Deserialize;
use support::{array, bytes};
use tally_identity::sign::signed_message;
use tally_identity::{
    Algorithm, AwsLcVerifier, ClusterId, Domain, KeyId, MlDsaKeyPair, PublicKey, RequestSigner, Signer, signed_payload,
    verify_request,
};

#[derive(Deserialize)]
struct Document {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    description: String,
    algorithm: String,
    seed: String,
    public_key: String,
    key_id: String,
    cluster_id: String,
    principal: u64,
    request_id: String,
    deadline_unix_nanoseconds: u64,
    request_bytes: String,
    signed_message: String,
    signature: String,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/vectors/request-signature-v1.json");
    let text = std::fs::read_to_string(path).expect("the committed vectors");
    let document: Document = serde_json::from_str(&text).expect("the vectors' JSON");
    assert!(!document.vectors.is_empty());
    document.vectors
}

#[test]
fn the_committed_vectors_describe_what_tally_signs_and_their_signatures_verify() {
    for vector in vectors() {
        let name = &vector.description;
        assert_eq!(vector.algorithm, Algorithm::MlDsa65.name(), "{name}");
        let key = MlDsaKeyPair::from_seed(Algorithm::MlDsa65, &array(&vector.seed)).unwrap();
        assert_eq!(key.public_key().as_bytes(), bytes(&vector.public_key).as_slice(), "{name}: the seed's key");
        assert_eq!(key.public_key().key_id(), KeyId(array(&vector.key_id)), "{name}: the key id");
        let signer = RequestSigner {
            cluster: ClusterId(array(&vector.cluster_id)),
            principal: vector.principal,
            key_id: KeyId(array(&vector.key_id)),
            request_id: u128::from_be_bytes(array(&vector.request_id)),
            deadline_unix_nanoseconds: vector.deadline_unix_nanoseconds,
        };
        let request = bytes(&vector.request_bytes);
        let message = signed_message(Domain::Request, &signed_payload(&signer, &request));
        assert_eq!(message, bytes(&vector.signed_message), "{name}: the signed bytes");
        let public_key = PublicKey::new(Algorithm::MlDsa65, bytes(&vector.public_key)).unwrap();
        let signature = bytes(&vector.signature);
        assert_eq!(verify_request(&AwsLcVerifier, &public_key, &signer, &request, &signature), Ok(()), "{name}");
        let pqclean_signature = pqcrypto_mldsa::mldsa65::DetachedSignature::from_bytes(&signature).unwrap();
        let pqclean_key = pqcrypto_mldsa::mldsa65::PublicKey::from_bytes(public_key.as_bytes()).unwrap();
        assert!(
            pqcrypto_mldsa::mldsa65::verify_detached_signature(&pqclean_signature, &message, &pqclean_key).is_ok(),
            "{name}: PQClean verifies the committed signature"
        );
        // Any byte of the request or of the signature changed, and it no longer verifies.
        let mut other_request = request.clone();
        other_request.push(0);
        assert!(verify_request(&AwsLcVerifier, &public_key, &signer, &other_request, &signature).is_err(), "{name}");
        let mut other_signature = signature.clone();
        other_signature[signature.len() / 2] ^= 1;
        assert!(verify_request(&AwsLcVerifier, &public_key, &signer, &request, &other_signature).is_err(), "{name}");
    }
}
