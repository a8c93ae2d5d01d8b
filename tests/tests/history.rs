//! A concurrent history check. Clients send transfers over a few hot accounts (some with limits):
//! single transfers, closed and open linked chains, pending transfers and their posts and voids,
//! each to a replica chosen at random, while replicas are killed, paused and restarted. Every
//! operation is recorded (invoked, then ok with its results, failed, or unknown, with times). Then:
//! - every event acknowledged as applied is in the ledger once, and none acknowledged as failed;
//! - a failed operation changed nothing; an unknown one is in the log at most once;
//! - each ledger balances (debits equal credits, posted and pending), and no limit is broken;
//! - real-time order agrees with cluster time: an operation acknowledged before another was sent
//!   has the earlier timestamps;
//! - replaying the log's requests in order through a fresh ledger gives every acknowledged request
//!   the results its client got, and the cluster's balances and digest.
//!
//! The seed comes from `TALLY_SEED` or the clock, and is printed first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use openraft::storage::RaftLogReader;
use tally_consensus::log_store::RedbLogStore;
use tally_consensus::signed_entry::{ChangeEntry, MlDsaCheck, SignedEntry, genesis_registry};
use tally_consensus::types::{LogPayload, decode};
use tally_proto::v1 as wire;
use tally_state_machine::signed::{ChangeOutcome, RequestOutcome};
use tally_state_machine::{Operation, StateMachine, StorageRead, Units};
use tally_tests::{LocalCluster, Settings, retry, serialised, transfer, uint128};

/// The replicas' request timeout in this test: how long after its client gave up a request may
/// still be proposed.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
const CLIENTS: u64 = 8;
const RUN: Duration = Duration::from_secs(20);
/// Accounts 1 to 4 may not be overdrawn (debits must not exceed credits); 5 to 8 fund them.
const LIMITED: std::ops::RangeInclusive<u128> = 1..=4;
const ACCOUNTS: u128 = 8;
const LEADER_WITHIN: Duration = Duration::from_secs(30);
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
const OK: i32 = wire::ResultCode::Ok as i32;

#[derive(Clone, Debug)]
enum Outcome {
    Ok(Vec<i32>),
    /// Refused before it was proposed: it cannot have been applied.
    Failed(String),
    /// No answer, or one that does not say whether it was applied.
    Unknown(String),
}

#[derive(Clone, Debug)]
struct Recorded {
    client: u64,
    events: Vec<wire::NewTransfer>,
    invoked: Instant,
    completed: Instant,
    outcome: Outcome,
}

fn id_of(event: &wire::NewTransfer) -> u128 {
    let id = event.id.as_ref().expect("every event has an id");
    (u128::from(id.high) << 64) | u128::from(id.low)
}

fn from_wire_id(id: Option<&wire::Uint128>) -> u128 {
    id.map_or(0, |id| (u128::from(id.high) << 64) | u128::from(id.low))
}

fn cents(text: &str) -> u128 {
    let (units, fraction) = text.split_once('.').unwrap_or((text, "00"));
    units.parse::<u128>().unwrap() * 100 + fraction.parse::<u128>().unwrap()
}

/// One client's operations until `stop`: random kinds over the hot accounts, through random replicas.
async fn client(
    number: u64,
    seed: u64,
    replicas: Vec<wire::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>>,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Recorded>>>,
    signing: tally_client::RequestSigning,
) {
    let mut random = fastrand::Rng::with_seed(seed ^ number.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut next_id = u128::from(number) * 1_000_000_000 + 1_000_000;
    let mut pending: Vec<u128> = Vec::new();
    let mut fresh = || {
        next_id += 1;
        next_id
    };
    while !stop.load(Ordering::Relaxed) {
        let pick_pair = |random: &mut fastrand::Rng| {
            let debit = random.u128(1..=ACCOUNTS);
            let credit = loop {
                let credit = random.u128(1..=ACCOUNTS);
                if credit != debit {
                    break credit;
                }
            };
            (debit, credit)
        };
        let amount = |random: &mut fastrand::Rng| format!("{}.{:02}", random.u32(0..5), random.u32(1..100));
        let events: Vec<wire::NewTransfer> = match random.u8(0..10) {
            0..=3 => {
                let (debit, credit) = pick_pair(&mut random);
                vec![transfer(fresh(), debit, credit, &amount(&mut random))]
            }
            4 | 5 => {
                let length = random.usize(2..=3);
                (0..length)
                    .map(|index| {
                        let (debit, credit) = pick_pair(&mut random);
                        let flags = if index + 1 < length { 1 } else { 0 };
                        wire::NewTransfer { flags, ..transfer(fresh(), debit, credit, &amount(&mut random)) }
                    })
                    .collect()
            }
            // A chain left open at the request's end: it must fail whole.
            6 => (0..2)
                .map(|_| {
                    let (debit, credit) = pick_pair(&mut random);
                    wire::NewTransfer { flags: 1, ..transfer(fresh(), debit, credit, &amount(&mut random)) }
                })
                .collect(),
            7 | 8 => {
                let (debit, credit) = pick_pair(&mut random);
                let id = fresh();
                pending.push(id);
                vec![wire::NewTransfer { flags: 2, ..transfer(id, debit, credit, &amount(&mut random)) }]
            }
            _ => match pending.pop() {
                Some(pending_id) => {
                    let flags = if random.bool() { 4 } else { 8 };
                    vec![wire::NewTransfer {
                        id: uint128(fresh()),
                        pending_id: uint128(pending_id),
                        flags,
                        ..wire::NewTransfer::default()
                    }]
                }
                None => continue,
            },
        };
        let mut replica = replicas[random.usize(0..replicas.len())].clone();
        let operation =
            wire::write_request::Operation::CreateTransfers(wire::CreateTransfersRequest { transfers: events.clone() });
        let mut request = tonic::Request::new(signing.sign(operation, Duration::from_secs(3)).unwrap());
        request.set_timeout(Duration::from_secs(3));
        let invoked = Instant::now();
        let answer = replica.submit(request).await;
        let completed = Instant::now();
        let outcome = match answer {
            Ok(response) => Outcome::Ok(response.into_inner().results),
            Err(status) if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted) => {
                Outcome::Failed(status.to_string())
            }
            Err(status) => Outcome::Unknown(status.to_string()),
        };
        if matches!(outcome, Outcome::Unknown(_)) {
            // Not knowing helps nobody; a moment for the cluster to settle.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        history.lock().unwrap().push(Recorded { client: number, events, invoked, completed, outcome });
    }
}

fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// Kills, pauses and restarts replicas until `RUN` has passed; at most one is down at a time.
async fn nemesis(cluster: &mut LocalCluster, seed: u64, until: Instant) -> Vec<String> {
    let mut random = fastrand::Rng::with_seed(seed);
    let mut done = Vec::new();
    while Instant::now() + Duration::from_secs(4) < until {
        tokio::time::sleep(Duration::from_millis(random.u64(1_500..3_000))).await;
        let target = match random.u8(0..3) {
            // The leader, whoever it is now.
            0 => cluster.wait_for_leader(LEADER_WITHIN).await,
            _ => random.u64(1..=3),
        };
        if random.bool() {
            cluster.kill(target);
            done.push(format!("kill {target}"));
            tokio::time::sleep(Duration::from_millis(random.u64(500..2_000))).await;
            cluster.restart(target);
        } else {
            let pid = cluster.pid(target).expect("every replica runs between faults");
            signal(pid, "STOP");
            done.push(format!("pause {target}"));
            tokio::time::sleep(Duration::from_millis(random.u64(500..2_500))).await;
            signal(pid, "CONT");
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_history_under_faults_is_linearizable_and_replays_to_the_same_ledger() {
    let _turn = serialised().await;
    let seed = std::env::var("TALLY_SEED")
        .ok()
        .map(|text| text.parse::<u64>().expect("TALLY_SEED is a decimal u64"))
        .unwrap_or_else(|| {
            u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos())
        });
    println!("history seed: {seed} (TALLY_SEED={seed} repeats it)");
    // No snapshot, so the whole log stays for the replay.
    let settings =
        Settings { snapshot_after_entries: 10_000_000, request_timeout_ms: REQUEST_TIMEOUT_MS, ..Settings::default() };
    let mut cluster = LocalCluster::start(&["a", "b", "c"], settings);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;

    // The ledger, hot accounts (1-4 limited), and their first funds from 5-8.
    let setup = cluster.writer(leader).await;
    let ledger = wire::NewLedger { id: 1, currency: "EUR".into(), scale: 2, ..wire::NewLedger::default() };
    retry(|| {
        let (mut client, ledger) = (setup.clone(), ledger.clone());
        async move { client.create_ledgers(wire::CreateLedgersRequest { ledgers: vec![ledger] }).await }
    })
    .await;
    let accounts: Vec<wire::NewAccount> = (1..=ACCOUNTS)
        .map(|id| wire::NewAccount {
            id: uint128(id),
            ledger: 1,
            code: 1,
            flags: if LIMITED.contains(&id) { 2 } else { 0 },
            ..wire::NewAccount::default()
        })
        .collect();
    retry(|| {
        let (mut client, accounts) = (setup.clone(), accounts.clone());
        async move { client.create_accounts(wire::CreateAccountsRequest { accounts }).await }
    })
    .await;
    let funding: Vec<wire::NewTransfer> = LIMITED.map(|id| transfer(id, id + 4, id, "20.00")).collect();
    let funded = retry(|| {
        let (mut client, transfers) = (setup.clone(), funding.clone());
        async move { client.create_transfers(wire::CreateTransfersRequest { transfers }).await }
    })
    .await;
    assert!(funded.results.iter().all(|code| *code == OK || *code == 1), "{:?}", funded.results);

    let mut replicas = Vec::new();
    for id in cluster.ids() {
        replicas.push(cluster.ledger(id).await);
    }
    let (stop, history) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|number| {
            let (stop, history) = (Arc::clone(&stop), Arc::clone(&history));
            tokio::spawn(client(number, seed, replicas.clone(), stop, history, cluster.signing()))
        })
        .collect();
    let faults = nemesis(&mut cluster, seed, Instant::now() + RUN).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let history = history.lock().unwrap().clone();
    println!("faults: {faults:?}");
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    // A request its client gave up on may still wait in a leader's group commit and be proposed
    // up to its request timeout later: let those land before taking the cluster's state.
    tokio::time::sleep(Duration::from_millis(REQUEST_TIMEOUT_MS + 1_000)).await;
    let (applied, digest) = cluster.wait_converged(&[1, 2, 3], CONVERGE_WITHIN).await;

    let count = |matches: fn(&Outcome) -> bool| history.iter().filter(|recorded| matches(&recorded.outcome)).count();
    let acknowledged = count(|outcome| matches!(outcome, Outcome::Ok(_)));
    println!(
        "history: {} operations, {acknowledged} acknowledged, {} failed, {} unknown",
        history.len(),
        count(|outcome| matches!(outcome, Outcome::Failed(_))),
        count(|outcome| matches!(outcome, Outcome::Unknown(_)))
    );
    let unknown: BTreeSet<&str> = history
        .iter()
        .filter_map(|recorded| match &recorded.outcome {
            Outcome::Unknown(reason) => Some(reason.as_str()),
            _ => None,
        })
        .take(5)
        .collect();
    println!("some unknown outcomes: {unknown:?}");
    assert!(acknowledged > 100, "too few operations were acknowledged to check anything");
    assert!(!faults.is_empty(), "no fault was injected");

    // The ledger as it ends: every transfer the history names, and every account.
    let mut reader = cluster.ledger(leader).await;
    let ids: Vec<u128> = history.iter().flat_map(|recorded| recorded.events.iter().map(id_of)).collect();
    let mut found: BTreeMap<u128, wire::Transfer> = BTreeMap::new();
    for chunk in ids.chunks(8_000) {
        let request = wire::LookupRequest { ids: chunk.iter().map(|id| uint128(*id).unwrap()).collect() };
        let answer = reader.lookup_transfers(request).await.unwrap().into_inner();
        for (id, lookup) in chunk.iter().zip(answer.transfers) {
            if lookup.found {
                found.insert(*id, lookup.transfer.unwrap());
            }
        }
    }
    let request = wire::LookupRequest { ids: (1..=ACCOUNTS).map(|id| uint128(id).unwrap()).collect() };
    let accounts: Vec<wire::Account> = reader
        .lookup_accounts(request)
        .await
        .unwrap()
        .into_inner()
        .accounts
        .into_iter()
        .map(|lookup| lookup.account.expect("every account exists"))
        .collect();

    // Acknowledged events are there, with their fields; failed ones are not.
    for recorded in &history {
        match &recorded.outcome {
            Outcome::Ok(results) => {
                assert_eq!(results.len(), recorded.events.len(), "{recorded:?}");
                for (event, code) in recorded.events.iter().zip(results) {
                    let id = id_of(event);
                    if *code == OK {
                        let transfer = found.get(&id).unwrap_or_else(|| panic!("acknowledged {id} is missing"));
                        if event.flags & (4 | 8) == 0 {
                            assert_eq!(transfer.amount, event.amount, "transfer {id}");
                            assert_eq!(
                                from_wire_id(transfer.debit_account_id.as_ref()),
                                from_wire_id(event.debit_account_id.as_ref())
                            );
                        }
                    } else {
                        assert!(!found.contains_key(&id), "transfer {id} failed with {code} and was applied");
                        assert_ne!(*code, wire::ResultCode::Exists as i32, "a fresh id cannot exist already");
                    }
                }
                if recorded.events.iter().all(|event| event.flags & 1 == 1) {
                    assert!(results.iter().all(|code| *code != OK), "an open chain was applied: {recorded:?}");
                }
            }
            Outcome::Failed(reason) => {
                for event in &recorded.events {
                    assert!(!found.contains_key(&id_of(event)), "refused ({reason}) and applied: {recorded:?}");
                }
            }
            Outcome::Unknown(_) => {}
        }
    }

    // Each ledger balances, and no limited account is overdrawn.
    let sum = |field: fn(&wire::Account) -> &String| accounts.iter().map(|account| cents(field(account))).sum::<u128>();
    assert_eq!(sum(|account| &account.debits_posted), sum(|account| &account.credits_posted));
    assert_eq!(sum(|account| &account.debits_pending), sum(|account| &account.credits_pending));
    for account in &accounts[..LIMITED.count()] {
        let debits = cents(&account.debits_posted) + cents(&account.debits_pending);
        assert!(debits <= cents(&account.credits_posted), "account overdrawn: {account:?}");
    }

    // Real time agrees with cluster time: sorted by completion, an operation acknowledged before
    // another was invoked has all its timestamps below the other's.
    let stamped: Vec<(Instant, Instant, u64, u64)> = history
        .iter()
        .filter(|recorded| matches!(recorded.outcome, Outcome::Ok(_)))
        .filter_map(|recorded| {
            let stamps: Vec<u64> = recorded
                .events
                .iter()
                .filter_map(|event| found.get(&id_of(event)))
                .map(|transfer| transfer.timestamp)
                .collect();
            Some((recorded.invoked, recorded.completed, *stamps.iter().min()?, *stamps.iter().max()?))
        })
        .collect();
    let mut by_completion = stamped.clone();
    by_completion.sort_by_key(|(_, completed, _, _)| *completed);
    let mut by_invocation = stamped;
    by_invocation.sort_by_key(|(invoked, _, _, _)| *invoked);
    let (mut before, mut latest) = (0, 0u64);
    for (invoked, _, first, _) in &by_invocation {
        while before < by_completion.len() && by_completion[before].1 < *invoked {
            latest = latest.max(by_completion[before].3);
            before += 1;
        }
        assert!(latest < *first, "an operation sent after another was acknowledged has an earlier timestamp");
    }

    // The replay: the log of replica 1, request by request, through a fresh ledger.
    let ids_in_history: BTreeMap<u128, &Recorded> =
        history.iter().map(|recorded| (id_of(&recorded.events[0]), recorded)).collect();
    let directory = cluster.data_directory(1);
    for id in cluster.ids() {
        cluster.terminate(id, Duration::from_secs(10));
    }
    let mut log = RedbLogStore::open(&directory.join("raft-log.redb"), 8 * 1024 * 1024).unwrap();
    let entries = log.try_get_log_entries(1..).await.unwrap();
    // The replay checks every signature again, as an auditor would, from the genesis alone.
    let genesis = std::fs::read_to_string(cluster.certs().genesis_file()).unwrap();
    let genesis = tally_identity::genesis::Genesis::from_toml(&genesis).unwrap();
    let mut ledger = StateMachine::new().with_genesis(genesis_registry(&genesis));
    let (mut replayed, mut applied_once) = (0, BTreeSet::new());
    for entry in entries {
        let index = entry.log_id.index;
        // The replay ends where the digest was taken.
        if index > applied {
            break;
        }
        let EntryPayload::Normal(payload) = entry.payload else { continue };
        // Each applied request's transfers with their codes.
        let mut requests: Vec<(Vec<tally_state_machine::NewTransfer>, Vec<tally_state_machine::ResultCode>)> =
            Vec::new();
        match payload {
            LogPayload::Batch(bytes) => {
                let batch = tally_state_machine::codec::decode_batch(&bytes).unwrap();
                assert!(matches!(batch.operation, Operation::ExpirePendingTransfers), "an unsigned client batch");
                ledger.apply(&batch).expect("every batch in the log applies");
            }
            LogPayload::RegistryChange(bytes) => {
                let change: ChangeEntry = decode(&bytes, "change").unwrap();
                let outcome = ledger.apply_change(&change.to_change(index), &MlDsaCheck).unwrap();
                assert_eq!(outcome, ChangeOutcome::Applied, "the harness's registration");
            }
            LogPayload::Signed(bytes) => {
                let signed: SignedEntry = decode(&bytes, "signed entry").unwrap();
                let batch = signed.to_batch(index);
                let outcomes = ledger.apply_signed(&batch, &MlDsaCheck).expect("every signed entry applies");
                for (request, outcome) in batch.requests.into_iter().zip(outcomes) {
                    let (Ok(Operation::CreateTransfers(events)), RequestOutcome::Applied(results)) =
                        (request.operation, outcome)
                    else {
                        continue;
                    };
                    requests.push((events, results));
                }
            }
        }
        for (events, results) in requests {
            for (event, code) in events.iter().zip(&results) {
                if *code == tally_state_machine::ResultCode::Ok {
                    assert!(applied_once.insert(event.id), "transfer {} applied twice", event.id);
                }
            }
            if let Some(recorded) = ids_in_history.get(&events[0].id)
                && let Outcome::Ok(acknowledged) = &recorded.outcome
            {
                let codes: Vec<i32> = results.iter().map(|code| *code as i32).collect();
                assert_eq!(&codes, acknowledged, "client {}'s request replays differently", recorded.client);
                replayed += 1;
            }
        }
    }
    assert_eq!(replayed, acknowledged, "every acknowledged request is in the log");
    assert_eq!(ledger.digest().to_vec(), digest, "the replay ends at the cluster's digest");
    for account in &accounts {
        let id = from_wire_id(account.id.as_ref());
        let replay = ledger.storage().account_get(id).unwrap();
        assert_eq!(replay.debits_posted, Units(cents(&account.debits_posted)), "account {id}");
        assert_eq!(replay.credits_posted, Units(cents(&account.credits_posted)), "account {id}");
        assert_eq!(replay.debits_pending, Units(cents(&account.debits_pending)), "account {id}");
        assert_eq!(replay.credits_pending, Units(cents(&account.credits_pending)), "account {id}");
    }
}
