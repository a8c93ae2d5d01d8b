//! `tallyctl account` and `tallyctl balance`: creating, showing and listing accounts, and their
//! balances now and after each change.

use clap::Subcommand;
use serde_json::json;
use tally_client::{Client, NewAccount, QueryFilter};

use crate::common::{Failure, PageArgs, Printer, id_or_new, not_found, parse_id, with_progress};
use crate::render;

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Creates an account (with a new time-ordered id unless --id is given).
    Create {
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        ledger: u32,
        /// The account's type in your chart of accounts; non-zero.
        #[arg(long)]
        code: u16,
        /// Refuse transfers that would leave debits above credits (no overdraft).
        #[arg(long)]
        debits_must_not_exceed_credits: bool,
        #[arg(long)]
        credits_must_not_exceed_debits: bool,
        /// Keep the balance after every change (for `account history`).
        #[arg(long)]
        history: bool,
    },
    /// Shows one account.
    Get { id: String },
    /// Lists accounts, optionally of one ledger or code.
    List {
        #[arg(long)]
        ledger: Option<u32>,
        #[arg(long)]
        code: Option<u16>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// An account's balance after each change (accounts created with --history).
    History {
        id: String,
        #[command(flatten)]
        page: PageArgs,
    },
}

/// The flags of `account create`.
#[derive(Clone, Copy, Debug)]
struct AccountFlags {
    debits_must_not_exceed_credits: bool,
    credits_must_not_exceed_debits: bool,
    history: bool,
}

pub async fn run(client: &Client, printer: &Printer, command: AccountCommand) -> Result<(), Failure> {
    match command {
        AccountCommand::Create {
            id,
            ledger,
            code,
            debits_must_not_exceed_credits,
            credits_must_not_exceed_debits,
            history,
        } => {
            let flags = AccountFlags { debits_must_not_exceed_credits, credits_must_not_exceed_debits, history };
            create(client, printer, id, ledger, code, flags).await
        }
        AccountCommand::Get { id } => {
            let found = client.account(parse_id("account", &id)?).await?;
            let account = found.ok_or_else(|| not_found("account", &id))?;
            printer.print(render::account_json(&account), || render::accounts_table(std::slice::from_ref(&account)));
            Ok(())
        }
        AccountCommand::List { ledger, code, page } => {
            let filter = QueryFilter { ledger, code, window: page.window(), ..QueryFilter::default() };
            let page = with_progress("listing accounts", client.query_accounts(filter)).await?;
            let accounts: Vec<_> = page.records.iter().map(render::account_json).collect();
            printer.print(json!({ "accounts": accounts, "cursor": page.cursor }), || {
                render::accounts_table(&page.records)
            });
            Ok(())
        }
        AccountCommand::History { id, page } => history(client, printer, &id, page).await,
    }
}

async fn create(
    client: &Client,
    printer: &Printer,
    id: Option<String>,
    ledger: u32,
    code: u16,
    flags: AccountFlags,
) -> Result<(), Failure> {
    let mut account = NewAccount::new(id_or_new("--id", id.as_ref())?, ledger, code);
    if flags.debits_must_not_exceed_credits {
        account = account.debits_must_not_exceed_credits();
    }
    if flags.credits_must_not_exceed_debits {
        account = account.credits_must_not_exceed_debits();
    }
    if flags.history {
        account = account.history();
    }
    let codes = client.create_accounts(std::slice::from_ref(&account)).await?;
    printer.results(&[account.id.to_string()], &codes)
}

async fn history(client: &Client, printer: &Printer, id: &str, page: PageArgs) -> Result<(), Failure> {
    let account_id = parse_id("account", id)?;
    let page = with_progress("reading the history", client.account_balances(account_id, page.window())).await?;
    let json = json!({
        "account_id": account_id.to_string(),
        "balances": page.records.iter().map(render::balance_history_json).collect::<Vec<_>>(),
        "cursor": page.cursor,
    });
    printer.print(json, || render::balance_history_table(&page.records));
    Ok(())
}

/// `tallyctl balance`: an account's balances now.
pub async fn balance(client: &Client, printer: &Printer, account: &str) -> Result<(), Failure> {
    let id = parse_id("account", account)?;
    let found = with_progress("reading the balance", client.account(id)).await?;
    let account = found.ok_or_else(|| not_found("account", account))?;
    printer.print(render::balance_json(&account), || render::balance_table(&account));
    Ok(())
}
