//! Group commit under concurrent clients, with real `tally-node` processes: a request's answer
//! never depends on which other requests the leader joined it with.
//!
//! Clients send, all at once and all to the leader:
//! - open chains `[linked, linked]` (which must fail whole: `linked_event_failed`,
//!   `linked_event_chain_open`), debiting account 1;
//! - closed chains `[linked, plain]`, 1.00 each, from account 3 to 4 and from 5 to 6;
//! - single transfers of 1.00 from account 7 to 8.
//!
//! Every answer is checked against what the request must get alone, and at the end every balance
//! against the acknowledged requests: account 1 must not have moved at all. The run also checks
//! that the leader did join requests (fewer log entries than requests), or it would prove nothing.

use std::time::Duration;

use tally_proto::v1 as wire;
use tally_tests::{LocalCluster, Settings, create_ledger_and_accounts, retry, serialised, transfer, uint128};

const REQUESTS_PER_CLIENT: u128 = 60;
/// Requests each client keeps in flight at once: more than the leader's batches in flight (8), so
/// that requests queue behind them and get joined.
const REQUESTS_IN_FLIGHT_PER_CLIENT: u128 = 4;
const OPEN_CHAIN_CLIENTS: u128 = 4;
const CLOSED_CHAIN_CLIENTS: u128 = 4;
const SINGLE_CLIENTS: u128 = 8;

#[derive(Clone, Copy, Debug)]
enum Shape {
    OpenChain,
    ClosedChain,
    Single,
}

impl Shape {
    /// The events of request `request` of client `client`, with ids unique to them.
    fn events(self, client: u128, request: u128) -> Vec<wire::NewTransfer> {
        let id = 1_000_000 * (client + 1) + 10 * request;
        let linked = |mut transfer: wire::NewTransfer| {
            transfer.flags = 1; // linked
            transfer
        };
        match self {
            Shape::OpenChain => vec![linked(transfer(id, 1, 2, "3.00")), linked(transfer(id + 1, 1, 2, "4.00"))],
            Shape::ClosedChain => vec![linked(transfer(id, 3, 4, "1.00")), transfer(id + 1, 5, 6, "1.00")],
            Shape::Single => vec![transfer(id, 7, 8, "1.00")],
        }
    }

    /// What the request must get, applied alone (or, retried after it was applied, `exists`).
    fn expected(self, results: &[i32]) -> bool {
        use wire::ResultCode::{Exists, LinkedEventChainOpen, LinkedEventFailed, Ok};
        let is = |code: &i32, expected: &[wire::ResultCode]| expected.iter().any(|allowed| *allowed as i32 == *code);
        match self {
            Shape::OpenChain => results == [LinkedEventFailed as i32, LinkedEventChainOpen as i32],
            Shape::ClosedChain => results.len() == 2 && results.iter().all(|code| is(code, &[Ok, Exists])),
            Shape::Single => results.len() == 1 && is(&results[0], &[Ok, Exists]),
        }
    }
}

async fn balances(
    client: &mut wire::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>,
) -> Vec<(String, String)> {
    let ids = (1..=8).map(uint128).map(Option::unwrap).collect();
    let accounts = client.lookup_accounts(wire::LookupRequest { ids }).await.unwrap().into_inner().accounts;
    accounts
        .into_iter()
        .map(|found| {
            let account = found.account.expect("every account exists");
            (account.debits_posted, account.credits_posted)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_open_chains_never_touch_other_requests_or_move_money() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    create_ledger_and_accounts(&cluster, leader, 10).await;
    let entries_before = cluster.node_status(leader).await.expect("the leader answers").applied_index;

    let shapes = [
        (Shape::OpenChain, OPEN_CHAIN_CLIENTS),
        (Shape::ClosedChain, CLOSED_CHAIN_CLIENTS),
        (Shape::Single, SINGLE_CLIENTS),
    ];
    let mut clients = Vec::new();
    let mut client_number = 0;
    for (shape, count) in shapes {
        for _ in 0..count {
            let ledger = cluster.ledger(leader).await;
            let client = client_number;
            client_number += 1;
            for lane in 0..REQUESTS_IN_FLIGHT_PER_CLIENT {
                let ledger = ledger.clone();
                let signing = cluster.signing();
                clients.push(tokio::spawn(async move {
                    for request in (lane..REQUESTS_PER_CLIENT).step_by(REQUESTS_IN_FLIGHT_PER_CLIENT as usize) {
                        let events = shape.events(client, request);
                        let response = retry(|| {
                            let transfers = events.clone();
                            let operation =
                                wire::write_request::Operation::CreateTransfers(wire::CreateTransfersRequest {
                                    transfers,
                                });
                            tally_tests::signed_write(ledger.clone(), &signing, operation)
                        })
                        .await;
                        assert!(
                            shape.expected(&response.results),
                            "client {client} request {request} ({shape:?}) got {:?}",
                            response.results
                        );
                    }
                }));
            }
        }
    }
    for client in clients {
        client.await.expect("a client task");
    }

    let requests = (OPEN_CHAIN_CLIENTS + CLOSED_CHAIN_CLIENTS + SINGLE_CLIENTS) * REQUESTS_PER_CLIENT;
    let entries = cluster.node_status(leader).await.expect("the leader answers").applied_index - entries_before;
    assert!(
        u128::from(entries) < requests,
        "{entries} log entries for {requests} requests: the leader joined none, so the test proved nothing"
    );

    let closed = format!("{}.00", CLOSED_CHAIN_CLIENTS * REQUESTS_PER_CLIENT);
    let single = format!("{}.00", SINGLE_CLIENTS * REQUESTS_PER_CLIENT);
    let zero = "0.00".to_owned();
    let expected = vec![
        (zero.clone(), zero.clone()),
        (zero.clone(), zero.clone()),
        (closed.clone(), zero.clone()),
        (zero.clone(), closed.clone()),
        (closed.clone(), zero.clone()),
        (zero.clone(), closed.clone()),
        (single.clone(), zero.clone()),
        (zero.clone(), single.clone()),
    ];
    let mut ledger = cluster.ledger(leader).await;
    assert_eq!(balances(&mut ledger).await, expected, "(debits posted, credits posted) of accounts 1-8");
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(60)).await;
    a_malformed_call_fails_alone_in_the_sdks_batches(&cluster).await;
}

/// The SDK's automatic batcher joins concurrent single calls into one request, which a replica
/// refuses whole for one malformed event: the SDK checks each call before it joins a batch, so
/// the malformed one fails alone and the calls beside it apply.
async fn a_malformed_call_fails_alone_in_the_sdks_batches(cluster: &LocalCluster) {
    use tally_client::{Client, Decimal, Error, NewTransfer, ResultCode};
    let endpoints: Vec<String> = cluster.ids().iter().map(|id| cluster.address(*id)).collect();
    let client = Client::connect_signed(&endpoints, cluster.security(), Some(cluster.signing()))
        .await
        .unwrap()
        .with_deadline(Duration::from_secs(20));
    let mut calls = Vec::new();
    for index in 0..64i64 {
        let client = client.clone();
        // Call 17 debits a negative amount; the others 0.01 each, from account 9 to 10.
        let cents = if index == 17 { -100 } else { 1 };
        let id = 900_000_000 + index as u128;
        let transfer = NewTransfer::new(id, 9, 10, Decimal::new(cents, 2), 1, 1);
        calls.push(tokio::spawn(async move { client.create_transfer(transfer).await }));
    }
    for (index, call) in calls.into_iter().enumerate() {
        match call.await.unwrap() {
            Err(Error::InvalidArgument(message)) if index == 17 => assert!(message.contains("negative"), "{message}"),
            Ok(ResultCode::Ok) if index != 17 => {}
            other => panic!("call {index} got {other:?}"),
        }
    }
    let stats = client.batching_stats();
    assert!(stats.requests < 63, "the 63 calls went out in {} requests: none was batched", stats.requests);
    let mut ledger = cluster.ledger(cluster.ids()[0]).await;
    let ids = vec![uint128(10).unwrap()];
    let account = ledger.lookup_accounts(wire::LookupRequest { ids }).await.unwrap().into_inner().accounts;
    assert_eq!(account[0].account.as_ref().unwrap().credits_posted, "0.63");
}
