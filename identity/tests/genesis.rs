//! A genesis file reads back to what was written, its fingerprint depends on its content and not
//! on the order of its operators, and every malformed genesis is refused with its reason.

use tally_identity::genesis::{Genesis, GenesisError, Operator};
use tally_identity::{Algorithm, ClusterId, KeyError, MlDsaKeyPair, Signer};

fn operator(id: u64, seed: u8) -> Operator {
    Operator { id, key: MlDsaKeyPair::from_seed(Algorithm::MlDsa87, &[seed; 32]).unwrap().public_key().clone() }
}

const CLUSTER: ClusterId = ClusterId([0x5a; 16]);

#[test]
fn a_genesis_reads_back_and_its_fingerprint_ignores_the_order_of_operators() {
    let genesis = Genesis::new(CLUSTER, vec![operator(2, 2), operator(1, 1), operator(3, 3)], 2).unwrap();
    assert_eq!(genesis.operators.iter().map(|operator| operator.id).collect::<Vec<_>>(), [1, 2, 3], "in id order");
    let file = genesis.to_toml();
    assert_eq!(Genesis::from_toml(&file), Ok(genesis.clone()));
    let reordered = Genesis::new(CLUSTER, vec![operator(3, 3), operator(1, 1), operator(2, 2)], 2).unwrap();
    assert_eq!(reordered.fingerprint(), genesis.fingerprint());
    let changes = [
        Genesis::new(ClusterId([0x5b; 16]), vec![operator(1, 1), operator(2, 2), operator(3, 3)], 2).unwrap(),
        Genesis::new(CLUSTER, vec![operator(1, 1), operator(2, 2), operator(3, 3)], 3).unwrap(),
        Genesis::new(CLUSTER, vec![operator(1, 1), operator(2, 2), operator(3, 4)], 2).unwrap(),
        Genesis::new(CLUSTER, vec![operator(1, 1), operator(2, 2), operator(4, 3)], 2).unwrap(),
        Genesis::new(CLUSTER, vec![operator(1, 1), operator(2, 2)], 2).unwrap(),
    ];
    for changed in changes {
        assert_ne!(changed.fingerprint(), genesis.fingerprint(), "{changed:?}");
    }
}

#[test]
fn a_malformed_genesis_is_refused_with_its_reason() {
    let three = || vec![operator(1, 1), operator(2, 2), operator(3, 3)];
    assert_eq!(Genesis::new(CLUSTER, Vec::new(), 1), Err(GenesisError::OperatorCount(0)));
    assert_eq!(Genesis::new(CLUSTER, three(), 0), Err(GenesisError::Threshold { required: 0, operators: 3 }));
    assert_eq!(Genesis::new(CLUSTER, three(), 4), Err(GenesisError::Threshold { required: 4, operators: 3 }));
    assert_eq!(Genesis::new(CLUSTER, vec![operator(1, 1), operator(1, 2)], 1), Err(GenesisError::OperatorId(1)));
    assert_eq!(Genesis::new(CLUSTER, vec![operator(0, 1)], 1), Err(GenesisError::OperatorId(0)));
    assert_eq!(
        Genesis::new(CLUSTER, vec![operator(1, 1), operator(2, 1)], 1),
        Err(GenesisError::SharedKey { first: 1, second: 2 })
    );
    let principal_key = MlDsaKeyPair::from_seed(Algorithm::MlDsa65, &[9; 32]).unwrap().public_key().clone();
    assert_eq!(
        Genesis::new(CLUSTER, vec![Operator { id: 1, key: principal_key }], 1),
        Err(GenesisError::OperatorAlgorithm { id: 1, algorithm: Algorithm::MlDsa65 })
    );

    let file = Genesis::new(CLUSTER, three(), 2).unwrap().to_toml();
    let bad_cluster = file.replace(&"5a".repeat(16), "not hex");
    assert_eq!(Genesis::from_toml(&bad_cluster), Err(GenesisError::ClusterId("not hex".to_owned())));
    let unknown_field = format!("{file}\nsurprise = 1\n");
    assert!(matches!(Genesis::from_toml(&unknown_field), Err(GenesisError::Syntax(_))), "unknown fields are refused");
    let key_pem = operator(2, 2).key.to_pem();
    let short_key = pem::encode(&pem::Pem::new("TALLY ML-DSA PUBLIC KEY", vec![87; 100]));
    let bad_key = file.replace(&key_pem, &short_key);
    assert!(
        matches!(
            Genesis::from_toml(&bad_key),
            Err(GenesisError::OperatorKey { id: 2, error: KeyError::PublicKeyLength { found: 99, .. } })
        ),
        "a damaged key names its operator"
    );
}
