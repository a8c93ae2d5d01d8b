//! An ordinary payment: the bank funds a customer, who pays another; then both balances.
//!
//!     cargo run -p tally-client --example payment

use std::str::FromStr;

use rust_decimal::Decimal;
use tally_client::{Client, NewAccount, NewLedger, NewTransfer, new_id};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints =
        std::env::var("TALLY_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into());
    let client = Client::connect_from_env(&endpoints.split(',').collect::<Vec<_>>()).await?;
    client.create_ledgers(&[NewLedger::new(978, "EUR", 2)]).await?;
    let (bank, alice, bob) = (new_id(), new_id(), new_id());
    client
        .create_accounts(&[
            NewAccount::new(bank, 978, 900),
            NewAccount::new(alice, 978, 100).debits_must_not_exceed_credits(),
            NewAccount::new(bob, 978, 100),
        ])
        .await?;

    let euros = |text: &str| Decimal::from_str(text).expect("a decimal literal");
    // Single calls: concurrent ones are packed into one request by the client.
    let funded = client.create_transfer(NewTransfer::new(new_id(), bank, alice, euros("250.00"), 978, 1)).await?;
    let paid = client.create_transfer(NewTransfer::new(new_id(), alice, bob, euros("42.10"), 978, 1)).await?;
    println!("funding: {}, payment: {}", funded.name(), paid.name());

    for (name, id) in [("alice", alice), ("bob", bob)] {
        let account = client.account(id).await?.expect("the account was just created");
        println!("{name}: {} EUR", account.credit_balance());
    }
    Ok(())
}
