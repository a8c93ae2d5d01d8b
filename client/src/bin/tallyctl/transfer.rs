//! `tallyctl transfer`: creating (one, or a batch from JSON), posting, voiding, showing and
//! listing transfers.

use std::io::Read;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tally_client::{AccountTransfersFilter, Client, NewTransfer, QueryFilter, TransferFlags, new_id};

use crate::common::{Failure, PageArgs, Printer, id_or_new, not_found, parse_amount, parse_id, usage, with_progress};
use crate::render;

#[derive(Debug, Subcommand)]
pub enum TransferCommand {
    /// Moves an amount from the debit to the credit account (with --pending, makes it pending:
    /// post or void it later).
    Create(CreateArgs),
    /// Creates several transfers in one request from a JSON array (a file, or - for stdin):
    /// objects with debit, credit, amount, ledger, code, and optionally id, pending_id, flags
    /// (names such as "linked", "pending") and timeout_seconds. Linked chains apply all or nothing.
    CreateBatch {
        #[arg(long)]
        file: String,
    },
    /// Posts a pending transfer: all of it, or --amount of it.
    Post {
        pending_id: String,
        #[arg(long)]
        amount: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
    /// Voids a pending transfer, releasing its amount.
    Void {
        pending_id: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Shows one transfer.
    Get { id: String },
    /// Lists transfers: of one account, or all (optionally of one ledger or code).
    List {
        #[arg(long)]
        account: Option<String>,
        #[arg(long, conflicts_with = "account")]
        ledger: Option<u32>,
        #[arg(long)]
        code: Option<u16>,
        #[command(flatten)]
        page: PageArgs,
    },
}

/// The arguments of `transfer create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    debit: String,
    #[arg(long)]
    credit: String,
    /// Exact decimal, such as 12.50.
    #[arg(long)]
    amount: String,
    #[arg(long)]
    ledger: u32,
    #[arg(long)]
    code: u16,
    /// Make the transfer pending (two-phase): post or void it later.
    #[arg(long)]
    pending: bool,
    /// With --pending: seconds until the pending transfer expires (0: never).
    #[arg(long, default_value = "0", requires = "pending")]
    timeout_seconds: u32,
    /// Move at most the amount, as much as the debit account allows.
    #[arg(long)]
    balancing_debit: bool,
    /// Move at most the amount, as much as the credit account allows.
    #[arg(long)]
    balancing_credit: bool,
}

pub async fn run(client: &Client, printer: &Printer, command: TransferCommand) -> Result<(), Failure> {
    match command {
        TransferCommand::Create(arguments) => submit(client, printer, vec![new_transfer(&arguments)?]).await,
        TransferCommand::CreateBatch { file } => submit(client, printer, transfers_from_file(&file)?).await,
        TransferCommand::Post { pending_id, amount, id } => {
            let mut post = NewTransfer::post(id_or_new("--id", id.as_ref())?, parse_id("pending id", &pending_id)?);
            if let Some(amount) = amount {
                post = post.amount(parse_amount("--amount", &amount)?);
            }
            submit(client, printer, vec![post]).await
        }
        TransferCommand::Void { pending_id, id } => {
            let void = NewTransfer::void(id_or_new("--id", id.as_ref())?, parse_id("pending id", &pending_id)?);
            submit(client, printer, vec![void]).await
        }
        TransferCommand::Get { id } => {
            let found = client.transfer(parse_id("transfer", &id)?).await?;
            let transfer = found.ok_or_else(|| not_found("transfer", &id))?;
            printer
                .print(render::transfer_json(&transfer), || render::transfers_table(std::slice::from_ref(&transfer)));
            Ok(())
        }
        TransferCommand::List { account, ledger, code, page } => {
            list(client, printer, account, ledger, code, page).await
        }
    }
}

/// Creates `transfers` in one request and prints each one's result.
async fn submit(client: &Client, printer: &Printer, transfers: Vec<NewTransfer>) -> Result<(), Failure> {
    let ids: Vec<String> = transfers.iter().map(|transfer| transfer.id.to_string()).collect();
    let codes = with_progress("waiting for the cluster", client.create_transfers(&transfers)).await?;
    printer.results(&ids, &codes)
}

fn new_transfer(arguments: &CreateArgs) -> Result<NewTransfer, Failure> {
    let mut transfer = NewTransfer::new(
        id_or_new("--id", arguments.id.as_ref())?,
        parse_id("--debit", &arguments.debit)?,
        parse_id("--credit", &arguments.credit)?,
        parse_amount("--amount", &arguments.amount)?,
        arguments.ledger,
        arguments.code,
    );
    if arguments.pending {
        transfer = transfer.pending(arguments.timeout_seconds);
    }
    if arguments.balancing_debit {
        transfer = transfer.balancing_debit();
    }
    if arguments.balancing_credit {
        transfer = transfer.balancing_credit();
    }
    Ok(transfer)
}

/// The transfers of a `create-batch` file (`-`: standard input).
fn transfers_from_file(file: &str) -> Result<Vec<NewTransfer>, Failure> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|read| text = read)
    };
    read.map_err(|error| usage(format!("--file {file}: {error}")))?;
    let values: Vec<Value> = serde_json::from_str(&text)
        .map_err(|error| usage(format!("--file {file}: not a JSON array of transfers: {error}")))?;
    let transfers = values
        .iter()
        .enumerate()
        .map(|(index, value)| transfer_from_json(index, value))
        .collect::<Result<Vec<_>, _>>()?;
    if transfers.is_empty() {
        return Err(usage(format!("--file {file}: no transfers")));
    }
    Ok(transfers)
}

async fn list(
    client: &Client,
    printer: &Printer,
    account: Option<String>,
    ledger: Option<u32>,
    code: Option<u16>,
    page: PageArgs,
) -> Result<(), Failure> {
    let page = match account {
        Some(account) => {
            let filter = AccountTransfersFilter {
                code,
                ..AccountTransfersFilter::new(parse_id("--account", &account)?, page.window())
            };
            with_progress("listing transfers", client.account_transfers(filter)).await?
        }
        None => {
            let filter = QueryFilter { ledger, code, window: page.window(), ..QueryFilter::default() };
            with_progress("listing transfers", client.query_transfers(filter)).await?
        }
    };
    let transfers: Vec<_> = page.records.iter().map(render::transfer_json).collect();
    printer.print(json!({ "transfers": transfers, "cursor": page.cursor }), || render::transfers_table(&page.records));
    Ok(())
}

/// A transfer of a `create-batch` file.
fn transfer_from_json(index: usize, value: &Value) -> Result<NewTransfer, Failure> {
    let field = |name: &str| value.get(name).filter(|value| !value.is_null());
    let text = |name: &str| -> Result<Option<String>, Failure> {
        match field(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(other) => Err(usage(format!("transfer {index}: {name} is {other}, not a string or number"))),
        }
    };
    let number = |name: &str| -> Result<u64, Failure> {
        match field(name) {
            None => Ok(0),
            Some(value) => {
                value.as_u64().ok_or_else(|| usage(format!("transfer {index}: {name} is not a whole number")))
            }
        }
    };
    let id_field = |name: &str| -> Result<u128, Failure> {
        text(name)?.map_or(Ok(0), |text| parse_id(&format!("transfer {index}: {name}"), &text))
    };
    let mut flags = TransferFlags::empty();
    if let Some(names) = field("flags") {
        let names =
            names.as_array().ok_or_else(|| usage(format!("transfer {index}: flags must be an array of names")))?;
        for name in names {
            let name = name.as_str().unwrap_or_default();
            let flag = TransferFlags::from_name(&name.to_ascii_uppercase())
                .ok_or_else(|| usage(format!("transfer {index}: unknown flag {name:?}")))?;
            flags |= flag;
        }
    }
    // A JSON number is read as a binary float, which cannot hold most decimal amounts exactly.
    let amount = match field("amount") {
        None => None,
        Some(Value::String(text)) => Some(parse_amount(&format!("transfer {index}: amount"), text)?),
        Some(other) => {
            return Err(usage(format!("transfer {index}: amount is {other}; write it as a string, such as \"12.50\"")));
        }
    };
    let narrow = |name: &str, value: u64, max: u64| {
        if value > max { Err(usage(format!("transfer {index}: {name} {value} is above {max}"))) } else { Ok(value) }
    };
    let id = match text("id")? {
        Some(text) => parse_id(&format!("transfer {index}: id"), &text)?,
        None => new_id(),
    };
    Ok(NewTransfer {
        id,
        debit_account_id: id_field("debit")?,
        credit_account_id: id_field("credit")?,
        amount,
        pending_id: id_field("pending_id")?,
        ledger: u32::try_from(narrow("ledger", number("ledger")?, u64::from(u32::MAX))?).unwrap_or_default(),
        code: u16::try_from(narrow("code", number("code")?, u64::from(u16::MAX))?).unwrap_or_default(),
        flags,
        timeout_seconds: u32::try_from(narrow("timeout_seconds", number("timeout_seconds")?, u64::from(u32::MAX))?)
            .unwrap_or_default(),
        ..NewTransfer::default()
    })
}
