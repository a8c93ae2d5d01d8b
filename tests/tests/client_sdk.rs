//! The Rust SDK against real `tally-node` processes: a stream of single calls through a leader
//! SIGKILL, with automatic batching, leader discovery and retries bounded by the caller's deadline.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tally_client::{
    AccountTransfersFilter, Client, Error, NewAccount, NewLedger, NewTransfer, PendingStatus, ResultCode, Window,
    new_id,
};
use tally_tests::{LocalCluster, Settings, serialised};

const SITES: [&str; 7] = ["a", "a", "a", "b", "b", "b", "c"];
const LEDGER: u32 = 978;
const LEADER_WITHIN: Duration = Duration::from_secs(30);

fn amount(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

async fn client_of(cluster: &LocalCluster, deadline: Duration) -> Client {
    let endpoints: Vec<String> = cluster.ids().iter().map(|id| cluster.address(*id)).collect();
    Client::connect_signed(&endpoints, cluster.security(), Some(cluster.signing()))
        .await
        .unwrap()
        .with_deadline(deadline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_calls_through_a_leader_kill_succeed_once_or_fail_clearly_before_their_deadline() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&SITES, Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    let client = client_of(&cluster, Duration::from_secs(20)).await;
    let ledgers = client.create_ledgers(&[NewLedger::new(LEDGER, "EUR", 2)]).await.unwrap();
    assert_eq!(ledgers, [ResultCode::Ok]);
    let (source, sink) = (new_id(), new_id());
    let accounts = [NewAccount::new(source, LEDGER, 1), NewAccount::new(sink, LEDGER, 1)];
    assert_eq!(client.create_accounts(&accounts).await.unwrap(), [ResultCode::Ok, ResultCode::Ok]);

    // 40 tasks, each a stream of single transfers of 1.00 with a 4 s deadline per call.
    const TASKS: usize = 40;
    const CALLS: usize = 150;
    let deadline = Duration::from_secs(4);
    let calls = client.with_deadline(deadline);
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let calls = calls.clone();
        let outcomes = Arc::clone(&outcomes);
        tasks.push(tokio::spawn(async move {
            for _ in 0..CALLS {
                let id = new_id();
                let started = Instant::now();
                let result = calls.create_transfer(NewTransfer::new(id, source, sink, amount("1.00"), LEDGER, 1)).await;
                outcomes.lock().unwrap().push((id, started, started.elapsed(), result));
            }
        }));
    }
    // The leader dies with a quarter of the calls answered, the rest still to come.
    while outcomes.lock().unwrap().len() < TASKS * CALLS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill(leader);
    let killed = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    assert_eq!(outcomes.len(), TASKS * CALLS);

    let mut acknowledged = Vec::new();
    let mut failed = Vec::new();
    for (id, _, elapsed, result) in &outcomes {
        assert!(
            *elapsed < deadline + Duration::from_millis(500),
            "a call took {elapsed:?}, past its {deadline:?} deadline"
        );
        match result {
            Ok(code) => {
                // `Exists` when the SDK resent a request whose first answer was lost with the leader:
                // applied once either way (the balances below count every id once).
                assert!(matches!(code, ResultCode::Ok | ResultCode::Exists), "{}", code.description());
                acknowledged.push(*id);
            }
            Err(error @ Error::Unavailable { .. }) => {
                assert!(error.to_string().contains("did not answer within"), "{error}");
                failed.push(*id);
            }
            Err(error) => panic!("a failure that is neither success nor a clear unavailability: {error}"),
        }
    }
    assert!(acknowledged.len() > TASKS * CALLS / 2, "most calls succeed across the failover: {}", acknowledged.len());
    let after_the_kill = outcomes.iter().filter(|(_, started, _, result)| *started > killed && result.is_ok()).count();
    eprintln!(
        "{} acknowledged, {} unavailable, {after_the_kill} started after the kill and succeeded; slowest call {:?}",
        acknowledged.len(),
        failed.len(),
        outcomes.iter().map(|(_, _, elapsed, _)| *elapsed).max().unwrap_or_default()
    );
    assert!(after_the_kill > TASKS, "calls went on succeeding after the leader died: {after_the_kill}");
    let stats = client.batching_stats();
    assert_eq!(stats.events, (TASKS * CALLS) as u64);
    assert!(stats.requests * 4 < stats.events, "concurrent single calls were batched: {stats:?}");

    // Every acknowledged transfer is there; every failed one is retried with its id, safely.
    for chunk in acknowledged.chunks(1_000) {
        let found = client.lookup_transfers(chunk).await.unwrap();
        assert!(found.iter().all(Option::is_some), "an acknowledged transfer is missing");
    }
    for id in &failed {
        let code =
            client.create_transfer(NewTransfer::new(*id, source, sink, amount("1.00"), LEDGER, 1)).await.unwrap();
        assert!(matches!(code, ResultCode::Ok | ResultCode::Exists), "{code:?}");
    }
    // Each id moved 1.00 exactly once.
    let sink_account = client.account(sink).await.unwrap().unwrap();
    assert_eq!(sink_account.credits_posted, Decimal::from(TASKS * CALLS));
    assert_eq!(client.account(source).await.unwrap().unwrap().debits_posted, Decimal::from(TASKS * CALLS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_cover_two_phase_transfers_linked_chains_and_queries() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    cluster.wait_for_leader(LEADER_WITHIN).await;
    let client = client_of(&cluster, Duration::from_secs(10)).await;
    client.create_ledgers(&[NewLedger::new(LEDGER, "EUR", 2), NewLedger::new(840, "USD", 2)]).await.unwrap();
    let [customer, shop, bank_eur, customer_usd, bank_usd] = [new_id(), new_id(), new_id(), new_id(), new_id()];
    let codes = client
        .create_accounts(&[
            NewAccount::new(customer, LEDGER, 100).debits_must_not_exceed_credits().history(),
            NewAccount::new(shop, LEDGER, 200),
            NewAccount::new(bank_eur, LEDGER, 900),
            NewAccount::new(customer_usd, 840, 100),
            NewAccount::new(bank_usd, 840, 900),
        ])
        .await
        .unwrap();
    assert!(codes.iter().all(|code| code.is_success()), "{codes:?}");
    let funding = NewTransfer::new(new_id(), bank_eur, customer, amount("100.00"), LEDGER, 1);
    assert_eq!(client.create_transfer(funding).await.unwrap(), ResultCode::Ok);

    // A card authorisation of 80.00, captured for 64.30.
    let authorisation = new_id();
    let hold = NewTransfer::new(authorisation, customer, shop, amount("80.00"), LEDGER, 2).pending(3_600);
    assert_eq!(client.create_transfer(hold).await.unwrap(), ResultCode::Ok);
    let held = client.account(customer).await.unwrap().unwrap();
    assert_eq!((held.debits_pending, held.available_credit_balance()), (amount("80.00"), amount("20.00")));
    let capture = NewTransfer::post(new_id(), authorisation).amount(amount("64.30"));
    assert_eq!(client.create_transfer(capture).await.unwrap(), ResultCode::Ok);
    let resolved = client.transfer(authorisation).await.unwrap().unwrap();
    assert_eq!(resolved.pending_status, Some(PendingStatus::Posted));
    let void_after_post = client.create_transfer(NewTransfer::void(new_id(), authorisation)).await.unwrap();
    assert_eq!(void_after_post, ResultCode::PendingTransferAlreadyPosted, "{}", void_after_post.description());

    // An overdraft: refused with a code, nothing changed.
    let overdraft = NewTransfer::new(new_id(), customer, shop, amount("1000.00"), LEDGER, 1);
    let refused = client.create_transfer(overdraft).await.unwrap();
    assert_eq!(refused, ResultCode::ExceedsCredits);
    assert!(refused.description().contains("insufficient funds"));

    // An exchange as two linked transfers; the second fails, so neither applies.
    let sell = NewTransfer::new(new_id(), customer, bank_eur, amount("10.00"), LEDGER, 3).linked();
    let buy_too_much = NewTransfer::new(new_id(), bank_usd, customer_usd, amount("10.85"), 841, 3);
    let chain = client.create_transfers(&[sell.clone(), buy_too_much]).await.unwrap();
    assert_eq!(chain, [ResultCode::LinkedEventFailed, ResultCode::LedgerNotFound]);
    let buy = NewTransfer::new(new_id(), bank_usd, customer_usd, amount("10.85"), 840, 3);
    let sell_again = NewTransfer { id: new_id(), ..sell.clone() };
    assert_eq!(client.create_transfers(&[sell_again, buy]).await.unwrap(), [ResultCode::Ok, ResultCode::Ok]);
    let linked_single = client.create_transfer(sell).await.unwrap_err();
    assert!(matches!(linked_single, Error::Usage(_)), "{linked_single}");

    let customer_now = client.account(customer).await.unwrap().unwrap();
    assert_eq!(customer_now.credit_balance(), amount("25.70"));
    let page = client.account_transfers(AccountTransfersFilter::new(customer, Window::last(2))).await.unwrap();
    assert_eq!(page.records.len(), 2);
    assert!(page.records[0].timestamp > page.records[1].timestamp, "newest first");
    let history = client.account_balances(customer, Window::first(100)).await.unwrap();
    assert_eq!(history.records.last().unwrap().credits_posted, amount("100.00"));
    assert_eq!(client.lookup_accounts(&[customer, 12_345]).await.unwrap()[1], None);

    // A malformed request names its field and applies nothing.
    let negative = NewTransfer::new(new_id(), customer, shop, amount("-5.00"), LEDGER, 1);
    let error = client.create_transfers(&[negative]).await.unwrap_err();
    assert!(matches!(&error, Error::InvalidArgument(message) if message.contains("amount")), "{error}");
    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|node| node.reachable && node.voter));
}
