//! The committed approval vectors (`proto/vectors/registry-approval-v1.json`) still describe what
//! an operator signs to approve a registry change: the keys their seeds make, the signed bytes, and
//! signatures that verify in aws-lc-rs and in PQClean, while any byte changed does not.

mod support;

use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _};
use serde::Deserialize;
use support::{array, bytes};
use tally_identity::request::change_payload;
use tally_identity::sign::signed_message;
use tally_identity::{Algorithm, AwsLcVerifier, ClusterId, Domain, MlDsaKeyPair, PublicKey, Signer, Verifier};

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
    cluster_id: String,
    change_id: String,
    deadline_unix_nanoseconds: u64,
    change_bytes: String,
    signed_message: String,
    signature: String,
}

#[test]
fn the_committed_approval_vectors_describe_what_operators_sign_and_their_signatures_verify() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/vectors/registry-approval-v1.json");
    let document: Document = serde_json::from_str(&std::fs::read_to_string(path).expect("the vectors")).unwrap();
    assert!(!document.vectors.is_empty());
    for vector in document.vectors {
        let name = &vector.description;
        assert_eq!(vector.algorithm, Algorithm::MlDsa87.name(), "{name}");
        let key = MlDsaKeyPair::from_seed(Algorithm::MlDsa87, &array(&vector.seed)).unwrap();
        assert_eq!(key.public_key().as_bytes(), bytes(&vector.public_key).as_slice(), "{name}: the seed's key");
        let change = bytes(&vector.change_bytes);
        let payload = change_payload(
            &ClusterId(array(&vector.cluster_id)),
            u128::from_be_bytes(array(&vector.change_id)),
            vector.deadline_unix_nanoseconds,
            blake3::hash(&change).as_bytes(),
        );
        let message = signed_message(Domain::RegistryChange, &payload);
        assert_eq!(message, bytes(&vector.signed_message), "{name}: the signed bytes");
        let public_key = PublicKey::new(Algorithm::MlDsa87, bytes(&vector.public_key)).unwrap();
        let signature = bytes(&vector.signature);
        assert_eq!(AwsLcVerifier.verify(&public_key, Domain::RegistryChange, &payload, &signature), Ok(()), "{name}");
        let pqclean_signature = pqcrypto_mldsa::mldsa87::DetachedSignature::from_bytes(&signature).unwrap();
        let pqclean_key = pqcrypto_mldsa::mldsa87::PublicKey::from_bytes(public_key.as_bytes()).unwrap();
        assert!(
            pqcrypto_mldsa::mldsa87::verify_detached_signature(&pqclean_signature, &message, &pqclean_key).is_ok(),
            "{name}: PQClean verifies the committed approval"
        );
        // Approving one change is not approving another, nor signing a request.
        let other = change_payload(&ClusterId(array(&vector.cluster_id)), 7, 7, blake3::hash(b"other").as_bytes());
        assert!(AwsLcVerifier.verify(&public_key, Domain::RegistryChange, &other, &signature).is_err(), "{name}");
        assert!(AwsLcVerifier.verify(&public_key, Domain::Request, &payload, &signature).is_err(), "{name}");
    }
}
