//! Signed requests on a secured three-replica cluster: every way a write can fail to be its
//! principal's is refused with its own error and changes no replica's state; a retry before the
//! deadline answers the first outcome; keys rotate and are revoked under load with nothing
//! acknowledged lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tally_client::registry::{Permission, PrincipalRole, RegistryChange};
use tally_client::{Client, Decimal, Error, NewTransfer, ResultCode};
use tally_identity::certs::Identity;
use tally_identity::request::{RequestSigner, sign_request};
use tally_identity::{MlDsaKeyPair, Signer};
use tally_proto::v1 as wire;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tally_tests::{LocalCluster, Settings, TEST_PRINCIPAL, create_ledger_and_accounts, serialised, transfer, uint128};
use tonic::Code;
use tonic::transport::Channel;

const LEADER_WITHIN: Duration = Duration::from_secs(30);
/// A principal with a narrow role: transfers on ledger 1, debiting accounts of code 1 only.
const CHANNEL: u64 = 3;

fn now_nanoseconds() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

/// A write signed by hand, so that each field can be made wrong on purpose.
fn signed(
    cluster: &LocalCluster,
    key: &MlDsaKeyPair,
    principal: u64,
    request_id: u128,
    deadline: u64,
    operation: wire::write_request::Operation,
) -> wire::SignedRequest {
    let body = wire::WriteRequest { operation: Some(operation) }.encode_to_vec();
    let signer = RequestSigner {
        cluster: cluster.certs().cluster,
        principal,
        key_id: key.public_key().key_id(),
        request_id,
        deadline_unix_nanoseconds: deadline,
    };
    let signature = sign_request(key, &signer, &body).unwrap();
    wire::SignedRequest {
        principal,
        key_id: signer.key_id.0.to_vec(),
        request_id: uint128(request_id),
        deadline_unix_nanoseconds: deadline,
        signature,
        body,
    }
}

fn transfers(transfers: Vec<wire::NewTransfer>) -> wire::write_request::Operation {
    wire::write_request::Operation::CreateTransfers(wire::CreateTransfersRequest { transfers })
}

async fn refused(client: &LedgerServiceClient<Channel>, request: wire::SignedRequest, code: Code, message: &str) {
    let status = client.clone().submit(request).await.expect_err(message);
    assert_eq!(status.code(), code, "{status}");
    assert!(status.message().contains(message), "expected {message:?} in {:?}", status.message());
}

/// Registers `principal` (its certificate issued) with `role` and its key of generation 1.
async fn register(cluster: &LocalCluster, principal: u64, role: PrincipalRole) {
    cluster.certs().issue(Identity::Principal(principal));
    let key = cluster.certs().signing_key(principal, 1).public_key().clone();
    let change = cluster.certs().approved(&RegistryChange::RegisterPrincipal { principal, role, key });
    cluster.client().await.with_deadline(Duration::from_secs(20)).change_registry(&change).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_that_is_not_its_principals_is_refused_with_its_own_error_and_changes_nothing() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, 4).await;
    let channel_role = PrincipalRole {
        permissions: vec![Permission::CreateTransfers],
        ledgers: vec![1],
        debit_account_codes: vec![1],
    };
    register(&cluster, CHANNEL, channel_role).await;
    // Account 5 has code 2: the channel may not debit it.
    let client = cluster.client().await.with_deadline(Duration::from_secs(20));
    let vault = tally_client::NewAccount { id: 5, ledger: 1, code: 2, ..Default::default() };
    assert_eq!(client.create_accounts(&[vault]).await.unwrap(), [ResultCode::Ok]);
    let (_, digest_before) = cluster.wait_converged(&cluster.ids(), Duration::from_secs(20)).await;

    let certs = cluster.certs();
    let as_test = cluster.ledger(leader).await;
    let as_channel = LedgerServiceClient::new(certs.channel(&cluster.address(leader), CHANNEL));
    let via_follower = LedgerServiceClient::new(
        certs.channel(&cluster.address(cluster.ids().into_iter().find(|id| *id != leader).unwrap()), CHANNEL),
    );
    let key = certs.signing_key(CHANNEL, 1);
    let deadline = now_nanoseconds() + 60_000_000_000;
    let pay = |id: u128, debit: u128| transfers(vec![transfer(id, debit, 2, "1.00")]);

    // Unsigned.
    let unsigned = wire::CreateTransfersRequest { transfers: vec![transfer(100, 1, 2, "1.00")] };
    let status = as_test.clone().create_transfers(unsigned).await.expect_err("an unsigned write");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("signed requests only"), "{status}");
    // Signed by the channel, sent over the test principal's certificate, directly and forwarded.
    let request = signed(&cluster, &key, CHANNEL, 1, deadline, pay(100, 1));
    refused(
        &as_test,
        request.clone(),
        Code::Unauthenticated,
        "certificate for principal 1 does not match request principal 3",
    )
    .await;
    // Wrongly signed: the body changed after signing.
    let mut tampered = request.clone();
    tampered.body = wire::WriteRequest { operation: Some(pay(100, 3)) }.encode_to_vec();
    refused(&as_channel, tampered, Code::Unauthenticated, "signature does not verify").await;
    refused(
        &via_follower,
        {
            let mut forged = request.clone();
            forged.signature[10] ^= 1;
            forged
        },
        Code::Unauthenticated,
        "signature does not verify",
    )
    .await;
    // An unregistered key; another cluster's signature.
    let unknown = certs.signing_key(CHANNEL, 2);
    refused(
        &as_channel,
        signed(&cluster, &unknown, CHANNEL, 2, deadline, pay(101, 1)),
        Code::Unauthenticated,
        "holds no key",
    )
    .await;
    // Deadlines: passed, or too far ahead.
    let past = signed(&cluster, &key, CHANNEL, 3, now_nanoseconds() - 1_000_000_000, pay(102, 1));
    refused(&as_channel, past, Code::InvalidArgument, "deadline passed").await;
    let far = signed(&cluster, &key, CHANNEL, 4, now_nanoseconds() + 600_000_000_000, pay(103, 1));
    refused(&as_channel, far, Code::InvalidArgument, "ahead").await;
    // Outside the role: another operation, another ledger's... an account code it may not debit.
    let accounts = wire::write_request::Operation::CreateAccounts(wire::CreateAccountsRequest {
        accounts: vec![wire::NewAccount { id: uint128(9), ledger: 1, code: 1, ..Default::default() }],
    });
    refused(
        &as_channel,
        signed(&cluster, &key, CHANNEL, 5, deadline, accounts),
        Code::PermissionDenied,
        "principal 3 may not create_accounts",
    )
    .await;
    let debit_vault = signed(&cluster, &key, CHANNEL, 6, deadline, pay(104, 5));
    refused(&as_channel, debit_vault, Code::PermissionDenied, "principal 3 may not debit account code 2 on ledger 1")
        .await;
    let (_, digest_after) = cluster.wait_converged(&cluster.ids(), Duration::from_secs(20)).await;
    assert_eq!(digest_after, digest_before, "no refused write reached any replica's ledger");

    // A signed write applies; its retry before the deadline gets the first outcome, applied once;
    // its id with other bytes is refused.
    let request = signed(&cluster, &key, CHANNEL, 7, deadline, pay(105, 1));
    let first = as_channel.clone().submit(request.clone()).await.unwrap().into_inner();
    assert_eq!((first.results.clone(), first.repeated), (vec![ResultCode::Ok as i32], false));
    let again = via_follower.clone().submit(request.clone()).await.unwrap().into_inner();
    assert_eq!((again.results, again.repeated), (first.results, true), "a retry answers the first outcome");
    refused(
        &as_channel,
        signed(&cluster, &key, CHANNEL, 7, deadline, pay(106, 1)),
        Code::InvalidArgument,
        "already sent request id",
    )
    .await;
    let account = client.account(2).await.unwrap().unwrap();
    assert_eq!(account.credits_posted, Decimal::new(100, 2), "the transfer applied once");

    // Reads by role: the channel has no read permission; an auditor of ledger 2 sees only ledger
    // 2's records, through the leader and through a follower alike.
    let lookup = || wire::LookupRequest { ids: vec![uint128(1).unwrap(), uint128(6).unwrap()] };
    let status = as_channel.clone().lookup_accounts(lookup()).await.expect_err("no read permission");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("principal 3 may not read"), "{status}");
    let ledger_two = tally_client::NewLedger { id: 2, currency: "USD".into(), scale: 2, ..Default::default() };
    assert_eq!(client.create_ledgers(&[ledger_two]).await.unwrap(), [ResultCode::Ok]);
    let in_two = tally_client::NewAccount { id: 6, ledger: 2, code: 1, ..Default::default() };
    assert_eq!(client.create_accounts(&[in_two]).await.unwrap(), [ResultCode::Ok]);
    const AUDITOR: u64 = 4;
    register(
        &cluster,
        AUDITOR,
        PrincipalRole { permissions: vec![Permission::Read], ledgers: vec![2], ..Default::default() },
    )
    .await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    for via in [leader, follower] {
        let mut auditor = LedgerServiceClient::new(certs.channel(&cluster.address(via), AUDITOR));
        let found: Vec<bool> = auditor
            .lookup_accounts(lookup())
            .await
            .unwrap()
            .into_inner()
            .accounts
            .iter()
            .map(|lookup| lookup.found)
            .collect();
        assert_eq!(found, [false, true], "via {via}: account 1 is on ledger 1, which the auditor may not read");
        let page = auditor
            .query_accounts(wire::QueryRequest {
                window: Some(wire::Window { limit: 100, ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.accounts.iter().all(|account| account.ledger == 2) && page.accounts.len() == 1, "{page:?}");
        let refused =
            auditor.submit(signed(&cluster, &certs.signing_key(AUDITOR, 1), AUDITOR, 1, deadline, pay(200, 1))).await;
        assert_eq!(refused.expect_err("read-only").code(), Code::PermissionDenied);
    }

    // Operating the cluster is a permission of its own: neither the channel nor the auditor may
    // move leadership or build snapshots; the test principal, whose role has it, may.
    for (principal, via) in [(CHANNEL, leader), (AUDITOR, follower)] {
        let mut admin = AdminServiceClient::new(certs.channel(&cluster.address(via), principal));
        let moved = admin.transfer_leader(wire::TransferLeaderRequest { node_id: follower }).await;
        let refused = moved.expect_err("no operate permission");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        let expected =
            format!("principal {principal} may not hand leadership over (its role has no operate permission)");
        assert!(refused.message().contains(&expected), "{refused}");
        let refused = admin.trigger_snapshot(wire::TriggerSnapshotRequest {}).await.expect_err("no operate permission");
        assert!(refused.message().contains(&format!("principal {principal} may not build a snapshot")), "{refused}");
    }
    assert_eq!(cluster.node_status(follower).await.unwrap().leader_id, leader, "leadership did not move");
    let built = cluster.admin(follower).await.trigger_snapshot(wire::TriggerSnapshotRequest {}).await;
    assert!(built.expect("the test principal may operate").into_inner().snapshot_index > 0);
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(20)).await;
}

/// Sixteen callers write through the SDK while the channel rotates its key (add the new, move the
/// callers, retire the old) and then revokes the new one: every acknowledged transfer is in the
/// ledger, the old key's writes stop with `KeyRetired`, the new key's with `KeyRevoked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_are_revoked_under_load_with_nothing_acknowledged_lost() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, 2).await;
    let role = PrincipalRole { permissions: vec![Permission::CreateTransfers, Permission::Read], ..Default::default() };
    register(&cluster, CHANNEL, role).await;
    let endpoints: Vec<String> = cluster.ids().iter().map(|id| cluster.address(*id)).collect();
    let connect = async |generation: u8| {
        let security = cluster.certs().security(CHANNEL);
        Client::connect_signed(&endpoints, security, Some(cluster.certs().signing(CHANNEL, generation)))
            .await
            .unwrap()
            .with_deadline(Duration::from_secs(20))
    };
    let old = connect(1).await;
    let new = connect(2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..16u128 {
        // Half the callers move to the new key once it is added; the rest stay on the old.
        let (stop, acknowledged, refusals) = (Arc::clone(&stop), Arc::clone(&acknowledged), Arc::clone(&refusals));
        let clients = (old.clone(), new.clone());
        let moves = writer % 2 == 0;
        let moved = Arc::new(AtomicBool::new(false));
        writers.push((
            Arc::clone(&moved),
            tokio::spawn(async move {
                let mut id = 1_000_000 * (writer + 1);
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let client = if moves && moved.load(Ordering::Relaxed) { &clients.1 } else { &clients.0 };
                    let transfer = NewTransfer {
                        id,
                        debit_account_id: 1,
                        credit_account_id: 2,
                        amount: Some(Decimal::new(1, 2)),
                        ledger: 1,
                        code: 1,
                        ..Default::default()
                    };
                    match client.create_transfer(transfer).await {
                        Ok(ResultCode::Ok) => acknowledged.lock().unwrap().push(id),
                        Ok(code) => panic!("transfer {id}: {code:?}"),
                        Err(Error::Unauthenticated(message)) => {
                            refusals.lock().unwrap().push(message);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(error) => panic!("transfer {id}: {error}"),
                    }
                }
            }),
        ));
    }
    let change = |change: RegistryChange| cluster.certs().approved(&change);
    let admin = cluster.client().await.with_deadline(Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new_key = cluster.certs().signing_key(CHANNEL, 2).public_key().clone();
    let (old_id, new_id) = (cluster.certs().signing_key(CHANNEL, 1).public_key().key_id(), new_key.key_id());
    admin.change_registry(&change(RegistryChange::AddKey { principal: CHANNEL, key: new_key })).await.unwrap();
    for (moved, _) in &writers {
        moved.store(true, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.change_registry(&change(RegistryChange::RetireKey { principal: CHANNEL, key_id: old_id })).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.change_registry(&change(RegistryChange::RevokeKey { principal: CHANNEL, key_id: new_id })).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for (_, writer) in writers {
        writer.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 50, "the load ran: {} transfers", acknowledged.len());
    let refusals = refusals.lock().unwrap().clone();
    assert!(refusals.iter().any(|message| message.contains("is retired")), "old-key writes stop: {refusals:?}");
    assert!(refusals.iter().any(|message| message.contains("is revoked")), "new-key writes stop: {refusals:?}");
    assert!(
        refusals.iter().all(|message| message.contains("is retired") || message.contains("is revoked")),
        "{refusals:?}"
    );
    let reader = cluster.client().await.with_deadline(Duration::from_secs(20));
    for chunk in acknowledged.chunks(1_000) {
        let found = reader.lookup_transfers(chunk).await.unwrap();
        assert!(found.iter().all(Option::is_some), "an acknowledged transfer is missing");
    }
    let registry = reader.registry().await.unwrap();
    let channel = registry.principals.iter().find(|principal| principal.id == CHANNEL).unwrap();
    let statuses: Vec<i32> = channel.keys.iter().map(|key| key.status).collect();
    assert_eq!(statuses, [wire::KeyStatus::Retired as i32, wire::KeyStatus::Revoked as i32], "both keys are kept");
    assert!(registry.principals.iter().any(|principal| principal.id == TEST_PRINCIPAL));
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(20)).await;
}
