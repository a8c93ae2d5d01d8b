//! Opens a EUR ledger and two customer accounts on a running cluster.
//!
//!     scripts/quickstart.sh        # or scripts/cluster.sh up
//!     cargo run -p tally-client --example open_accounts

use tally_client::{Client, NewAccount, NewLedger, new_id};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints =
        std::env::var("TALLY_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into());
    let client = Client::connect_from_env(&endpoints.split(',').collect::<Vec<_>>()).await?;

    // Ledger 978 counts euros in cents. Creating it again answers `exists`, a success.
    let ledger = client.create_ledgers(&[NewLedger::new(978, "EUR", 2)]).await?;
    println!("ledger 978: {}", ledger[0].name());

    // A current account that may not be overdrawn and keeps its balance history, and a savings account.
    let (current, savings) = (new_id(), new_id());
    let accounts = [
        NewAccount::new(current, 978, 100).debits_must_not_exceed_credits().history(),
        NewAccount::new(savings, 978, 110).debits_must_not_exceed_credits(),
    ];
    let results = client.create_accounts(&accounts).await?;
    for (account, result) in accounts.iter().zip(&results) {
        println!("account {}: {} ({})", account.id, result.name(), result.description());
    }
    Ok(())
}
