//! Writes the request-signature test vectors (`proto/vectors/request-signature-v1.json`):
//!
//!     cargo run -p tally-identity --example request_vectors > proto/vectors/request-signature-v1.json
//!
//! Keys come from fixed seeds, so every run gives the same keys, ids and signed bytes. ML-DSA
//! signing is randomised, so each run gives new signatures, all valid: the committed ones are what
//! a client in another language checks its verifier against, and its signer's output must verify
//! with the committed public key.

use serde_json::json;
use tally_identity::sign::signed_message;
use tally_identity::{Algorithm, ClusterId, Domain, MlDsaKeyPair, RequestSigner, Signer, sign_request, signed_payload};

/// A vector's inputs: its description, the key's seed, the principal, the request id, the
/// deadline and the request's bytes.
type Case = (&'static str, [u8; 32], u64, u128, u64, Vec<u8>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn main() {
    let cases: [Case; 2] = [
        (
            "30 bytes standing for a request's protobuf encoding (only their blake3 hash is signed)",
            [0x11; 32],
            9,
            0x0191_7f3a_5c2e_7b40_8a9d_1e2f_3a4b_5c6d,
            1_796_000_000_000_000_000,
            vec![
                0x0a, 0x1c, 0x0a, 0x04, 0x08, 0x01, 0x10, 0x02, 0x12, 0x04, 0x08, 0x00, 0x10, 0x03, 0x1a, 0x04, 0x08,
                0x00, 0x10, 0x04, 0x22, 0x05, 0x31, 0x32, 0x2e, 0x35, 0x30, 0x28, 0xd2, 0x07,
            ],
        ),
        ("an empty request", [0x22; 32], 1, 1, u64::MAX, Vec::new()),
    ];
    let vectors: Vec<_> = cases
        .iter()
        .map(|(description, seed, principal, request_id, deadline, request)| {
            let key = MlDsaKeyPair::from_seed(Algorithm::MlDsa65, seed).expect("a seed of 32 bytes");
            let signer = RequestSigner {
                cluster: ClusterId(*b"tally-test-clstr"),
                principal: *principal,
                key_id: key.public_key().key_id(),
                request_id: *request_id,
                deadline_unix_nanoseconds: *deadline,
            };
            let signature = sign_request(&key, &signer, request).expect("signing in memory");
            json!({
                "description": description,
                "algorithm": Algorithm::MlDsa65.name(),
                "seed": hex(seed),
                "public_key": hex(key.public_key().as_bytes()),
                "key_id": hex(&signer.key_id.0),
                "cluster_id": hex(&signer.cluster.0),
                "principal": principal,
                "request_id": hex(&request_id.to_be_bytes()),
                "deadline_unix_nanoseconds": deadline,
                "request_bytes": hex(request),
                "signed_message": hex(&signed_message(Domain::Request, &signed_payload(&signer, request))),
                "signature": hex(&signature),
            })
        })
        .collect();
    let document = json!({
        "about": "Tally request signatures, version 1 (identity/src/request.rs). signed_message is \
                  'tally.request.v1\\0' || cluster_id || principal (u64 BE) || key_id || request_id \
                  (u128 BE) || deadline_unix_nanoseconds (u64 BE) || blake3(request_bytes); signature \
                  is pure ML-DSA-65 (FIPS 204, empty context) over it. key_id is the first 16 bytes of \
                  blake3 derive_key('tally 2026-12 key id v1', [65] || public_key). Keys come from \
                  FIPS 204 key generation with the given seed.",
        "vectors": vectors,
    });
    println!("{}", serde_json::to_string_pretty(&document).expect("JSON of strings and numbers"));
}
