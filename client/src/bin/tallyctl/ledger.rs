//! `tallyctl ledger`: creating and listing ledgers.

use clap::Subcommand;
use serde_json::json;
use tally_client::{Client, NewLedger};

use crate::common::{Failure, PageArgs, Printer, with_progress};
use crate::render;

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Creates a ledger.
    Create {
        #[arg(long)]
        id: u32,
        /// ISO 4217 code, such as EUR.
        #[arg(long)]
        currency: String,
        /// Decimal places of the minor unit (2 for cents).
        #[arg(long)]
        scale: u32,
    },
    /// Lists ledgers, oldest first.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
}

pub async fn run(client: &Client, printer: &Printer, command: LedgerCommand) -> Result<(), Failure> {
    match command {
        LedgerCommand::Create { id, currency, scale } => {
            let codes = client.create_ledgers(&[NewLedger::new(id, &currency, scale)]).await?;
            printer.results(&[id.to_string()], &codes)
        }
        LedgerCommand::List { page } => {
            let page = with_progress("listing ledgers", client.query_ledgers(page.window())).await?;
            let json = json!({ "ledgers": page.records.iter().map(render::ledger_json).collect::<Vec<_>>(), "cursor": page.cursor });
            printer.print(json, || render::ledgers_table(&page.records));
            Ok(())
        }
    }
}
