//! A two-phase card payment: an authorisation makes a pending transfer, the capture posts less than
//! it (the rest is released), and a second authorisation is voided.
//!
//!     cargo run -p tally-client --example card_authorisation

use std::str::FromStr;

use rust_decimal::Decimal;
use tally_client::{Client, NewAccount, NewLedger, NewTransfer, new_id};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints =
        std::env::var("TALLY_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into());
    let client = Client::connect_from_env(&endpoints.split(',').collect::<Vec<_>>()).await?;
    let euros = |text: &str| Decimal::from_str(text).expect("a decimal literal");
    client.create_ledgers(&[NewLedger::new(978, "EUR", 2)]).await?;
    let (bank, card, merchant) = (new_id(), new_id(), new_id());
    client
        .create_accounts(&[
            NewAccount::new(bank, 978, 900),
            NewAccount::new(card, 978, 100).debits_must_not_exceed_credits(),
            NewAccount::new(merchant, 978, 200),
        ])
        .await?;
    client.create_transfer(NewTransfer::new(new_id(), bank, card, euros("100.00"), 978, 1)).await?;

    // Authorise 60.00 at a fuel pump for at most an hour, then capture what was pumped.
    let fuel = new_id();
    let authorised =
        client.create_transfer(NewTransfer::new(fuel, card, merchant, euros("60.00"), 978, 2).pending(3_600)).await?;
    let held = client.account(card).await?.expect("exists");
    println!("authorised: {}; available now {} EUR", authorised.name(), held.available_credit_balance());
    let captured = client.create_transfer(NewTransfer::post(new_id(), fuel).amount(euros("47.85"))).await?;
    println!("captured 47.85: {}", captured.name());

    // A hotel authorisation that is cancelled: voiding releases the whole pending amount.
    let hotel = new_id();
    client.create_transfer(NewTransfer::new(hotel, card, merchant, euros("30.00"), 978, 2).pending(0)).await?;
    let voided = client.create_transfer(NewTransfer::void(new_id(), hotel)).await?;
    println!("hotel authorisation voided: {}", voided.name());

    let card_now = client.account(card).await?.expect("exists");
    println!("card balance {} EUR, pending {} EUR", card_now.credit_balance(), card_now.debits_pending);
    Ok(())
}
