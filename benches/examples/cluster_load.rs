//! A fixed load against a running cluster: `concurrency` clients each send requests of
//! `transfers_per_request` single-phase transfers until `requests` have been acknowledged; prints
//! transfers per second and request latency. Kept because the cluster figures in BENCHMARKS.md
//! before `tally-bench` existed were taken with it; `tally-bench` is the load generator.
//!
//! `scripts/cluster.sh up && cargo run --release -p tally-benches --example cluster_load -- --requests 40`

use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_client::RequestSigning;
use tally_proto::v1::write_request::Operation;

use clap::Parser;
use tally_proto::v1 as wire;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Arguments {
    #[arg(long, default_value = "127.0.0.1:7101")]
    endpoint: String,
    #[arg(long, default_value_t = 40)]
    requests: u64,
    #[arg(long, default_value_t = 4)]
    concurrency: u64,
    #[arg(long, default_value_t = 8_190)]
    transfers_per_request: u64,
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
}

fn id(value: u128) -> Option<wire::Uint128> {
    let high = u64::try_from(value >> 64).expect("the high half fits");
    let low = u64::try_from(value & u128::from(u64::MAX)).expect("the low half fits");
    Some(wire::Uint128 { high, low })
}

/// One write: signed (`Submit`) on a secured cluster, unsigned on a development one; its codes.
async fn write(
    client: &mut LedgerServiceClient<Channel>,
    signing: Option<&RequestSigning>,
    operation: Operation,
) -> Result<Vec<i32>, tonic::Status> {
    if let Some(signing) = signing {
        let message = signing.sign(operation, Duration::from_secs(60)).expect("a signature");
        return Ok(client.submit(message).await?.into_inner().results);
    }
    let response = match operation {
        Operation::CreateLedgers(request) => client.create_ledgers(request).await?,
        Operation::CreateAccounts(request) => client.create_accounts(request).await?,
        Operation::CreateTransfers(request) => client.create_transfers(request).await?,
    };
    Ok(response.into_inner().results)
}

async fn setup(client: &mut LedgerServiceClient<Channel>, signing: Option<&RequestSigning>, accounts: u64) {
    let ledger = wire::NewLedger { id: 1, currency: "EUR".into(), scale: 2, ..wire::NewLedger::default() };
    let ledgers = Operation::CreateLedgers(wire::CreateLedgersRequest { ledgers: vec![ledger] });
    write(client, signing, ledgers).await.expect("the ledger");
    let all: Vec<_> = (1..=u128::from(accounts))
        .map(|account| wire::NewAccount { id: id(account), ledger: 1, code: 1, ..wire::NewAccount::default() })
        .collect();
    for chunk in all.chunks(8_190) {
        let accounts = Operation::CreateAccounts(wire::CreateAccountsRequest { accounts: chunk.to_vec() });
        write(client, signing, accounts).await.expect("the accounts");
    }
}

#[tokio::main]
async fn main() {
    let arguments = Arguments::parse();
    // TLS from TALLY_CA, TALLY_CERT and TALLY_KEY, or TALLY_INSECURE_PLAINTEXT=1, as tally-bench.
    let security = tally_client::Security::from_env().expect("a TLS identity (TALLY_CA, TALLY_CERT, TALLY_KEY)");
    let channel = security.channel(&arguments.endpoint).expect("an endpoint");
    let mut client =
        LedgerServiceClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    // Writes signed with TALLY_SIGNING_KEY on a secured cluster, as tally-bench's.
    let signing = RequestSigning::from_env(&security).expect("a signing key").map(Arc::new);
    setup(&mut client, signing.as_deref(), arguments.accounts).await;
    // Ids unique to this run, so the example can run again on the same cluster.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_nanos() << 24;
    let per_request = u128::from(arguments.transfers_per_request);
    let accounts = u128::from(arguments.accounts);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..arguments.concurrency {
        let mut client = client.clone();
        let signing = signing.clone();
        let (requests, concurrency) = (arguments.requests, arguments.concurrency);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut request = worker;
            while request < requests {
                let first = run + u128::from(request) * per_request;
                let transfers = (first..first + per_request)
                    .map(|transfer| wire::NewTransfer {
                        id: id(transfer),
                        debit_account_id: id(1 + transfer % accounts),
                        credit_account_id: id(1 + (transfer * 7 + 1) % accounts),
                        amount: "1.00".into(),
                        ledger: 1,
                        code: 1,
                        ..wire::NewTransfer::default()
                    })
                    .collect();
                let sent = Instant::now();
                let operation = Operation::CreateTransfers(wire::CreateTransfersRequest { transfers });
                let response = write(&mut client, signing.as_deref(), operation).await;
                let results =
                    response.unwrap_or_else(|status| panic!("request failed: {} {}", status.code(), status.message()));
                assert!(results.iter().all(|code| *code == 0), "a transfer failed");
                latencies.push(sent.elapsed());
                request += concurrency;
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("a worker"));
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let transfers = arguments.requests * arguments.transfers_per_request;
    // Nearest-rank percentiles over the sorted latencies, in per mille.
    let percentile = |per_mille: usize| latencies[(latencies.len() * per_mille / 1_000).min(latencies.len() - 1)];
    println!(
        "{transfers} transfers in {seconds:.2} s: {:.0} transfers/s; request latency p50 {:?}, p99 {:?}",
        transfers as f64 / seconds,
        percentile(500),
        percentile(990)
    );
}
