//! A currency exchange as two linked transfers (EUR out, USD in): both apply or neither does.
//!
//!     cargo run -p tally-client --example currency_exchange

use std::str::FromStr;

use rust_decimal::Decimal;
use tally_client::{Client, NewAccount, NewLedger, NewTransfer, new_id};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints =
        std::env::var("TALLY_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into());
    let client = Client::connect_from_env(&endpoints.split(',').collect::<Vec<_>>()).await?;
    let amount = |text: &str| Decimal::from_str(text).expect("a decimal literal");
    client.create_ledgers(&[NewLedger::new(978, "EUR", 2), NewLedger::new(840, "USD", 2)]).await?;
    let (customer_eur, bank_eur, customer_usd, bank_usd) = (new_id(), new_id(), new_id(), new_id());
    client
        .create_accounts(&[
            NewAccount::new(customer_eur, 978, 100).debits_must_not_exceed_credits(),
            NewAccount::new(bank_eur, 978, 900),
            NewAccount::new(customer_usd, 840, 100),
            NewAccount::new(bank_usd, 840, 900),
        ])
        .await?;
    client.create_transfer(NewTransfer::new(new_id(), bank_eur, customer_eur, amount("200.00"), 978, 1)).await?;

    // 100.00 EUR at 1.0850: the customer's euros go to the bank, the bank's dollars to the customer.
    let exchange = [
        NewTransfer::new(new_id(), customer_eur, bank_eur, amount("100.00"), 978, 3).linked(),
        NewTransfer::new(new_id(), bank_usd, customer_usd, amount("108.50"), 840, 3),
    ];
    let results = client.create_transfers(&exchange).await?;
    println!("exchange: {} / {}", results[0].name(), results[1].name());

    // Too much: the euro leg fails for insufficient funds, so the dollar leg does not apply either.
    let too_much = [
        NewTransfer::new(new_id(), customer_eur, bank_eur, amount("500.00"), 978, 3).linked(),
        NewTransfer::new(new_id(), bank_usd, customer_usd, amount("542.50"), 840, 3),
    ];
    let results = client.create_transfers(&too_much).await?;
    println!("too much: {} / {}", results[0].name(), results[1].name());

    let eur = client.account(customer_eur).await?.expect("exists").credit_balance();
    let usd = client.account(customer_usd).await?.expect("exists").credit_balance();
    println!("customer holds {eur} EUR and {usd} USD");
    Ok(())
}
