//! Writes the registry-approval test vectors (`proto/vectors/registry-approval-v1.json`):
//!
//!     cargo run -p tally-identity --example approval_vectors > proto/vectors/registry-approval-v1.json
//!
//! As the request vectors: fixed seeds, so the same keys and signed bytes every run; new
//! signatures every run (ML-DSA signing is randomised), all valid.

use serde_json::json;
use tally_identity::request::change_payload;
use tally_identity::sign::signed_message;
use tally_identity::{Algorithm, ClusterId, Domain, MlDsaKeyPair, Signer};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A vector's inputs: its description, the operator key's seed, the change id, the deadline and the
/// change's bytes.
type Case = (&'static str, [u8; 32], u128, u64, Vec<u8>);

fn main() {
    let cases: [Case; 2] = [
        (
            "12 bytes standing for a tally.v1.RegistryChange (only their blake3 hash is signed)",
            [0x33; 32],
            0x0191_7f3a_5c2e_7b40_8a9d_1e2f_3a4b_5c6e,
            1_796_000_000_000_000_000,
            vec![0x0a, 0x0a, 0x08, 0x09, 0x12, 0x02, 0x08, 0x03, 0x1a, 0x00, 0x10, 0x01],
        ),
        ("an empty change", [0x44; 32], 1, u64::MAX, Vec::new()),
    ];
    let cluster = ClusterId(*b"tally-test-clstr");
    let vectors: Vec<_> = cases
        .iter()
        .map(|(description, seed, change_id, deadline, change)| {
            let key = MlDsaKeyPair::from_seed(Algorithm::MlDsa87, seed).expect("a seed of 32 bytes");
            let payload = change_payload(&cluster, *change_id, *deadline, blake3::hash(change).as_bytes());
            let signature = key.sign(Domain::RegistryChange, &payload).expect("signing in memory");
            json!({
                "description": description,
                "algorithm": Algorithm::MlDsa87.name(),
                "seed": hex(seed),
                "public_key": hex(key.public_key().as_bytes()),
                "cluster_id": hex(&cluster.0),
                "change_id": hex(&change_id.to_be_bytes()),
                "deadline_unix_nanoseconds": deadline,
                "change_bytes": hex(change),
                "signed_message": hex(&signed_message(Domain::RegistryChange, &payload)),
                "signature": hex(&signature),
            })
        })
        .collect();
    let document = json!({
        "about": "Tally operators' approvals of key-registry changes, version 1 (identity/src/request.rs, \
                  change_payload). signed_message is 'tally.registry-change.v1\\0' || cluster_id || change_id \
                  (u128 BE) || deadline_unix_nanoseconds (u64 BE) || blake3(change_bytes); signature is pure \
                  ML-DSA-87 (FIPS 204, empty context) over it. Keys come from FIPS 204 key generation with the \
                  given seed.",
        "vectors": vectors,
    });
    println!("{}", serde_json::to_string_pretty(&document).expect("JSON of strings and numbers"));
}
