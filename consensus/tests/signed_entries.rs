//! Signed entries as a replica applies them, with real ML-DSA keys: what a faulty or hostile
//! leader could put in the log (a forged signature, a body changed after signing, an unsigned
//! batch, an approval short of the threshold) is refused at apply and changes nothing, while
//! honest entries around it apply; the registry survives a restart.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use prost::Message;
use tally_consensus::raft_state_machine::LedgerStateMachine;
use tally_consensus::signed_entry::{ChangeEntry, EntryApproval, EntryRequest, SignedEntry, genesis_registry};
use tally_consensus::type_config::Entry;
use tally_consensus::types::{ApplyResponse, LogPayload, encode};
use tally_identity::genesis::{Genesis, Operator};
use tally_identity::request::{RequestSigner, change_payload, sign_request};
use tally_identity::{Algorithm, ClusterId, Domain, MlDsaKeyPair, Signer};
use tally_proto::v1 as wire;
use tally_state_machine::codec::encode_batch;
use tally_state_machine::{Batch, Currency, LedgerQueries, NewLedger, Operation};

const CACHE_BYTES: usize = 8 * 1024 * 1024;
const CLUSTER: ClusterId = ClusterId([0x42; 16]);
const NOW: u64 = 1_800_000_000_000_000_000;
const MINUTE: u64 = 60_000_000_000;

fn key(algorithm: Algorithm, seed: u8) -> MlDsaKeyPair {
    MlDsaKeyPair::from_seed(algorithm, &[seed; 32]).unwrap()
}

fn genesis() -> Genesis {
    Genesis::new(CLUSTER, vec![Operator { id: 1, key: key(Algorithm::MlDsa87, 1).public_key().clone() }], 1).unwrap()
}

fn entry(index: u64, payload: LogPayload) -> Entry {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(payload) }
}

/// Registers principal 9 with every permission and `principal_key`, approved by `approver`.
fn registration(index: u64, principal_key: &MlDsaKeyPair, approver: &MlDsaKeyPair) -> Entry {
    let permissions = (1..=4).collect();
    let change = wire::RegistryChange {
        change: Some(wire::registry_change::Change::RegisterPrincipal(wire::RegisterPrincipal {
            principal: 9,
            role: Some(wire::PrincipalRole { permissions, ..Default::default() }),
            key: Some(wire::PublicKey { algorithm: 65, raw: principal_key.public_key().as_bytes().to_vec() }),
        })),
    };
    let body = change.encode_to_vec();
    let (change_id, deadline) = (u128::from(index), NOW + 10 * MINUTE);
    let payload = change_payload(&CLUSTER, change_id, deadline, blake3::hash(&body).as_bytes());
    let signature = approver.sign(Domain::RegistryChange, &payload).unwrap();
    let change = ChangeEntry {
        timestamp: NOW + index,
        change_id,
        deadline,
        body,
        approvals: vec![EntryApproval { operator: 1, signature }],
    };
    entry(index, LogPayload::RegistryChange(encode(&change)))
}

fn create_ledger(id: u32) -> Vec<u8> {
    let ledgers = vec![wire::NewLedger { id, currency: "EUR".into(), scale: 2, ..Default::default() }];
    let operation = wire::write_request::Operation::CreateLedgers(wire::CreateLedgersRequest { ledgers });
    wire::WriteRequest { operation: Some(operation) }.encode_to_vec()
}

/// A request of principal 9 naming `named`'s key id, signed with `signer` over `body`.
fn request(request_id: u128, named: &MlDsaKeyPair, signer: &MlDsaKeyPair, body: Vec<u8>) -> EntryRequest {
    let envelope = RequestSigner {
        cluster: CLUSTER,
        principal: 9,
        key_id: named.public_key().key_id(),
        request_id,
        deadline_unix_nanoseconds: NOW + MINUTE,
    };
    // Signed as `signer` would, whatever key it names: a forger's signature.
    let honest = RequestSigner { key_id: signer.public_key().key_id(), ..envelope };
    let signature = sign_request(signer, &honest, &body).unwrap();
    EntryRequest {
        principal: 9,
        key_id: envelope.key_id.0,
        request_id,
        deadline: envelope.deadline_unix_nanoseconds,
        signature,
        body,
    }
}

fn signed(index: u64, requests: Vec<EntryRequest>) -> Entry {
    entry(index, LogPayload::Signed(encode(&SignedEntry { timestamp: NOW + 1_000 * index, requests })))
}

fn refusal_codes(response: &ApplyResponse) -> Vec<Option<u8>> {
    let ApplyResponse::Signed { requests } = response else { panic!("not a signed response: {response:?}") };
    requests.iter().map(|request| request.refusal.as_ref().map(|refusal| refusal.code)).collect()
}

fn ledgers(machine: &LedgerStateMachine) -> Vec<u32> {
    machine.with_ledger(|ledger| {
        ledger.storage().lookup_ledgers(&[1, 2, 3, 4, 5]).unwrap().iter().flatten().map(|ledger| ledger.id).collect()
    })
}

#[tokio::test]
async fn a_replica_refuses_at_apply_what_a_faulty_leader_forged_and_applies_what_was_signed() {
    let directory = tempfile::tempdir().unwrap();
    let principal = key(Algorithm::MlDsa65, 9);
    let forger = key(Algorithm::MlDsa65, 66);
    let not_an_operator = key(Algorithm::MlDsa87, 7);
    let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    machine.secure(genesis_registry(&genesis()));

    // A registration approved by someone who is no operator's key is refused; the operator's applies.
    let responses = machine
        .apply([
            registration(1, &principal, &not_an_operator),
            registration(2, &principal, &key(Algorithm::MlDsa87, 1)),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&responses[0], ApplyResponse::Changed { refusal: Some(refusal), .. } if refusal.message.contains("approval does not verify")),
        "{:?}",
        responses[0]
    );
    assert_eq!(responses[1], ApplyResponse::Changed { repeated: false, refusal: None });

    // One entry: an honest request, a forged signature, a body changed after signing, then an
    // unsigned plain batch in an entry of its own.
    let mut altered = request(3, &principal, &principal, create_ledger(3));
    altered.body = create_ledger(4);
    let unsigned = {
        let batch = Batch::new(
            NOW + 10_000,
            Operation::CreateLedgers(vec![NewLedger {
                id: 5,
                currency: Currency(*b"EUR"),
                scale: 2,
                ..Default::default()
            }]),
        );
        let mut bytes = Vec::new();
        encode_batch(&batch, &mut bytes);
        entry(4, LogPayload::Batch(bytes))
    };
    let forged = vec![
        request(1, &principal, &principal, create_ledger(1)),
        request(2, &principal, &forger, create_ledger(2)),
        altered,
    ];
    let responses = machine.apply([signed(3, forged), unsigned]).await.unwrap();
    assert_eq!(
        refusal_codes(&responses[0]),
        [None, Some(8), Some(8)],
        "signature_invalid for the forged and the altered"
    );
    assert!(
        matches!(&responses[1], ApplyResponse::Refused { reason } if reason.contains("unsigned")),
        "{:?}",
        responses[1]
    );
    assert_eq!(ledgers(&machine), [1], "only the signed request changed the ledger");

    // After a restart the registry is the one the log built: the principal's key still signs.
    drop(machine);
    let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    machine.secure(genesis_registry(&genesis()));
    let responses =
        machine.apply([signed(5, vec![request(4, &principal, &principal, create_ledger(2))])]).await.unwrap();
    assert_eq!(refusal_codes(&responses[0]), [None]);
    assert_eq!(ledgers(&machine), [1, 2]);
}
