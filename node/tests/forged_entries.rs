//! A faulty leader: three secured replicas in this process, and a test that takes the leader's Raft
//! handle to propose what no client could, entries forged past the gateway's checks. Every replica
//! refuses them when it applies them (a forged signature, a body changed after signing, an
//! approval by no operator), all end with the same digest, and the cluster keeps serving signed
//! requests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tally_consensus::signed_entry::{ChangeEntry, EntryApproval, EntryRequest, SignedEntry};
use tally_consensus::types::{ApplyResponse, LogPayload, encode};
use tally_identity::genesis::{Genesis, Operator};
use tally_identity::request::{RequestSigner, change_payload, sign_request};
use tally_identity::{Algorithm, ClusterId, Domain, MlDsaKeyPair, Signer};
use tally_node::NodeConfig;
use tally_node::config::{Limits, Member, RaftHandle, RaftSettings, StorageSettings};
use tally_proto::v1 as wire;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tokio::net::TcpListener;

const CLUSTER: ClusterId = ClusterId([0x5a; 16]);
const PRINCIPAL: u64 = 9;

fn key(algorithm: Algorithm, seed: u8) -> MlDsaKeyPair {
    MlDsaKeyPair::from_seed(algorithm, &[seed; 32]).unwrap()
}

fn now() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

fn create_ledger(id: u32) -> Vec<u8> {
    let ledgers = vec![wire::NewLedger { id, currency: "EUR".into(), scale: 2, ..Default::default() }];
    let operation = wire::write_request::Operation::CreateLedgers(wire::CreateLedgersRequest { ledgers });
    wire::WriteRequest { operation: Some(operation) }.encode_to_vec()
}

/// Principal 9's request naming `named`'s key, signed with `signer`'s.
fn request(request_id: u128, named: &MlDsaKeyPair, signer: &MlDsaKeyPair, body: Vec<u8>) -> EntryRequest {
    let deadline = now() + 60_000_000_000;
    let envelope = |key: &MlDsaKeyPair| RequestSigner {
        cluster: CLUSTER,
        principal: PRINCIPAL,
        key_id: key.public_key().key_id(),
        request_id,
        deadline_unix_nanoseconds: deadline,
    };
    let signature = sign_request(signer, &envelope(signer), &body).unwrap();
    EntryRequest { principal: PRINCIPAL, key_id: named.public_key().key_id().0, request_id, deadline, signature, body }
}

fn submitted(entry: &EntryRequest) -> wire::SignedRequest {
    wire::SignedRequest {
        principal: entry.principal,
        key_id: entry.key_id.to_vec(),
        request_id: tally_node::convert::uint128(entry.request_id),
        deadline_unix_nanoseconds: entry.deadline,
        signature: entry.signature.clone(),
        body: entry.body.clone(),
    }
}

/// Registers principal 9 with every permission and `principal`'s key, approved by `approver`.
fn registration(change_id: u128, principal: &MlDsaKeyPair, approver: &MlDsaKeyPair) -> wire::RegistryChangeRequest {
    let change = wire::RegistryChange {
        change: Some(wire::registry_change::Change::RegisterPrincipal(wire::RegisterPrincipal {
            principal: PRINCIPAL,
            role: Some(wire::PrincipalRole { permissions: (1..=4).collect(), ..Default::default() }),
            key: Some(wire::PublicKey { algorithm: 65, raw: principal.public_key().as_bytes().to_vec() }),
        })),
    }
    .encode_to_vec();
    let deadline = now() + 600_000_000_000;
    let payload = change_payload(&CLUSTER, change_id, deadline, blake3::hash(&change).as_bytes());
    let signature = approver.sign(Domain::RegistryChange, &payload).unwrap();
    wire::RegistryChangeRequest {
        change_id: tally_node::convert::uint128(change_id),
        deadline_unix_nanoseconds: deadline,
        change,
        approvals: vec![wire::Approval { operator: 1, signature }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_refuses_at_apply_what_a_faulty_leader_forged_and_the_cluster_serves_on() {
    let directory = tempfile::tempdir().unwrap();
    let operator = key(Algorithm::MlDsa87, 1);
    let principal = key(Algorithm::MlDsa65, 9);
    let genesis = Genesis::new(CLUSTER, vec![Operator { id: 1, key: operator.public_key().clone() }], 1).unwrap();
    let genesis_file = directory.path().join("genesis.toml");
    std::fs::write(&genesis_file, genesis.to_toml()).unwrap();

    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addresses: Vec<String> = listeners.iter().map(|listener| listener.local_addr().unwrap().to_string()).collect();
    let members: Vec<Member> = addresses
        .iter()
        .enumerate()
        .map(|(index, address)| Member {
            id: index as u64 + 1,
            address: address.clone(),
            site: format!("site-{index}"),
        })
        .collect();
    let handles: Vec<RaftHandle> = (0..3).map(|_| RaftHandle::default()).collect();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let config = NodeConfig {
            cluster_name: "forged".into(),
            node_id: index as u64 + 1,
            site: members[index].site.clone(),
            listen_address: listener.local_addr().unwrap(),
            advertise_address: addresses[index].clone(),
            metrics_address: None,
            data_directory: directory.path().join(format!("node-{}", index + 1)),
            genesis_file: Some(genesis_file.clone()),
            tls: None,
            insecure_plaintext: true,
            initial_members: members.clone(),
            bootstrap: index == 0,
            clock: None,
            raft_handle: Some(handles[index].clone()),
            raft: RaftSettings {
                heartbeat_interval_ms: 50,
                election_timeout_min_ms: 300,
                election_timeout_max_ms: 600,
                ..RaftSettings::default()
            },
            limits: Limits { request_timeout_ms: 5_000, ..Limits::default() },
            group_commit: Default::default(),
            storage: StorageSettings { cache_bytes: 8 << 20, log_cache_bytes: 8 << 20, ..StorageSettings::default() },
            scheduling: Default::default(),
            memory: Default::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(tally_node::run(config, listener, None, async {
            let _ = stopped.await;
        })));
    }
    let admin = |index: usize| AdminServiceClient::connect(format!("http://{}", addresses[index]));
    let ledger = |index: usize| LedgerServiceClient::connect(format!("http://{}", addresses[index]));
    let mut leader = 0;
    for _ in 0..100 {
        leader = admin(0).await.unwrap().node_status(wire::NodeStatusRequest {}).await.unwrap().into_inner().leader_id;
        if leader != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(leader, 0, "a leader within 10 s");
    let via = usize::try_from(leader).unwrap() - 1;
    admin(via).await.unwrap().change_registry(registration(1, &principal, &operator)).await.unwrap();
    let honest = request(1, &principal, &principal, create_ledger(1));
    let answer = ledger(via).await.unwrap().submit(submitted(&honest)).await.unwrap().into_inner();
    assert_eq!(answer.results, [wire::ResultCode::Ok as i32]);

    // The leader, faulty, proposes what its gateway would have refused.
    let raft = handles[via].0.lock().unwrap().clone().expect("the leader's handle");
    let forger = key(Algorithm::MlDsa65, 66);
    let mut altered = request(3, &principal, &principal, create_ledger(3));
    altered.body = create_ledger(4);
    let forged =
        SignedEntry { timestamp: now(), requests: vec![request(2, &principal, &forger, create_ledger(2)), altered] };
    let written = raft.client_write(LogPayload::Signed(encode(&forged))).await.unwrap();
    let ApplyResponse::Signed { requests } = written.data else { panic!("{:?}", written.data) };
    let codes: Vec<Option<u8>> =
        requests.iter().map(|request| request.refusal.as_ref().map(|refusal| refusal.code)).collect();
    assert_eq!(codes, [Some(8), Some(8)], "signature_invalid, both");
    let not_an_operator = key(Algorithm::MlDsa87, 7);
    let mut change = registration(2, &key(Algorithm::MlDsa65, 10), &not_an_operator);
    let approvals = change
        .approvals
        .drain(..)
        .map(|approval| EntryApproval { operator: approval.operator, signature: approval.signature })
        .collect();
    let change = ChangeEntry {
        timestamp: now(),
        change_id: 2,
        deadline: change.deadline_unix_nanoseconds,
        body: change.change,
        approvals,
    };
    let written = raft.client_write(LogPayload::RegistryChange(encode(&change))).await.unwrap();
    assert!(
        matches!(&written.data, ApplyResponse::Changed { refusal: Some(refusal), .. } if refusal.code == 8),
        "{:?}",
        written.data
    );

    // The cluster serves on; every replica applied the same, and no forged write shows.
    let again = request(4, &principal, &principal, create_ledger(5));
    let mut answer = None;
    for _ in 0..50 {
        match ledger(via).await.unwrap().submit(submitted(&again)).await {
            Ok(response) => {
                answer = Some(response.into_inner());
                break;
            }
            // A batch stamped below the forged entry's timestamp is refused whole; group commit
            // takes the floor again and the retry applies.
            Err(status) if status.code() == tonic::Code::Aborted => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(status) => panic!("{status}"),
        }
    }
    assert_eq!(answer.expect("served").results, [wire::ResultCode::Ok as i32]);
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.clear();
        for index in 0..3 {
            statuses
                .push(admin(index).await.unwrap().node_status(wire::NodeStatusRequest {}).await.unwrap().into_inner());
        }
        if statuses
            .iter()
            .all(|status| (status.applied_index, &status.digest) == (statuses[0].applied_index, &statuses[0].digest))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(statuses.iter().all(|status| status.digest == statuses[0].digest), "every replica at one digest");
    let lookup = wire::LookupLedgersRequest { ids: vec![1, 2, 3, 4, 5] };
    let found: Vec<bool> = ledger(via)
        .await
        .unwrap()
        .lookup_ledgers(lookup)
        .await
        .unwrap()
        .into_inner()
        .ledgers
        .iter()
        .map(|ledger| ledger.found)
        .collect();
    assert_eq!(found, [true, false, false, false, true], "only what was signed");
    for stop in stops {
        let _ = stop.send(());
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("a replica stops in time").unwrap().unwrap();
    }
}
