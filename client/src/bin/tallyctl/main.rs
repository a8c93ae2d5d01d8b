//! `tallyctl`: the operators' command line for a Tally cluster.

mod render;

use std::future::Future;
use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_client::{
    AccountTransfersFilter, Client, Error, NewAccount, NewLedger, NewTransfer, QueryFilter, ResultCode, TransferFlags,
    Window, new_id,
};

/// Exit codes, also listed in `tallyctl --help`.
mod exit {
    /// A usage error: bad arguments or a request the cluster refused as malformed.
    pub const USAGE: u8 = 2;
    /// The ledger refused an event (a result code other than ok/exists), or a record was not found.
    pub const REJECTED: u8 = 3;
    /// The cluster could not be reached, or had no leader, before the deadline.
    pub const UNAVAILABLE: u8 = 4;
    /// Anything else the cluster answered that tallyctl cannot act on.
    pub const FAILED: u8 = 1;
}

const EXIT_CODES: &str = "Exit codes: 0 success; 1 other failure; 2 usage error (bad arguments or a malformed \
request, nothing applied); 3 the ledger rejected an event or a record was not found; 4 the cluster was \
unreachable or had no leader before the deadline.";

#[derive(Debug, Parser)]
#[command(name = "tallyctl", version, about = "Operate and use a Tally ledger cluster", after_help = EXIT_CODES)]
struct Cli {
    /// Replicas to talk to, comma-separated host:port (any replica serves; followers forward).
    #[arg(
        long,
        env = "TALLY_ENDPOINTS",
        value_delimiter = ',',
        global = true,
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105,127.0.0.1:7106,127.0.0.1:7107"
    )]
    endpoints: Vec<String>,
    /// How results are printed: a table for people, JSON for scripts.
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: Output,
    /// How long a command may take, retries included, in seconds.
    #[arg(long, default_value = "10", global = true)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Ledgers (one currency each).
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Transfers, including pending (two-phase) ones.
    #[command(subcommand)]
    Transfer(TransferCommand),
    /// An account's balances.
    Balance {
        /// The account id.
        account: String,
    },
    /// Prints a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Every member: role, term, log and applied index, replication lag, digest.
    Status,
    /// Voters and learners.
    Members,
    /// Adds a learner (a non-voting member that catches up at once).
    AddLearner {
        #[arg(long)]
        node_id: u64,
        /// Its gRPC address, host:port.
        #[arg(long)]
        address: String,
        #[arg(long)]
        site: String,
    },
    /// Makes a caught-up learner a voter.
    Promote { node_id: u64 },
    /// Removes a member from the voters (and the cluster, unless --keep-as-learner).
    Remove {
        node_id: u64,
        #[arg(long)]
        keep_as_learner: bool,
    },
    /// Hands leadership to another voter.
    TransferLeader { node_id: u64 },
    /// Builds a snapshot now, on one member or on every reachable one.
    Snapshot {
        #[arg(long)]
        node_id: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
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

#[derive(Debug, Args)]
struct PageArgs {
    /// Records to list, 1..=8190.
    #[arg(long, default_value = "100")]
    limit: u32,
    /// Newest first.
    #[arg(long)]
    reversed: bool,
}

impl PageArgs {
    fn window(&self) -> Window {
        Window { limit: self.limit, reversed: self.reversed, ..Window::default() }
    }
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
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

#[derive(Debug, Subcommand)]
enum TransferCommand {
    /// Moves (or with --pending, reserves) an amount from the debit to the credit account.
    Create {
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
        /// Reserve the amount (two-phase): post or void it later.
        #[arg(long)]
        pending: bool,
        /// With --pending: seconds until the reservation expires (0: never).
        #[arg(long, default_value = "0", requires = "pending")]
        timeout_seconds: u32,
        /// Move at most the amount, as much as the debit account allows.
        #[arg(long)]
        balancing_debit: bool,
        /// Move at most the amount, as much as the credit account allows.
        #[arg(long)]
        balancing_credit: bool,
    },
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
    /// Voids a pending transfer, releasing the reservation.
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

/// A failed command: its message and exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let code = match &error {
            Error::Unavailable { .. } => exit::UNAVAILABLE,
            Error::InvalidArgument(_) | Error::Usage(_) | Error::TooLarge(_) => exit::USAGE,
            Error::Server { .. } | Error::Protocol(_) => exit::FAILED,
        };
        Failure { code, message: error.to_string() }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: exit::USAGE, message: message.into() }
}

fn not_found(what: &str, id: &str) -> Failure {
    Failure { code: exit::REJECTED, message: format!("{what} {id} was not found") }
}

fn parse_id(field: &str, text: &str) -> Result<u128, Failure> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u128::from_str_radix(hex, 16),
        None => text.parse(),
    };
    match parsed {
        Ok(0) | Err(_) => {
            Err(usage(format!("{field}: {text:?} is not an id (a non-zero 128-bit integer, decimal or 0x hex)")))
        }
        Ok(id) => Ok(id),
    }
}

/// An amount in the wire's grammar (digits with an optional '.'), parsed exactly: `1e5` or `-5`
/// is an operator's typo, and must never move money.
fn parse_amount(field: &str, text: &str) -> Result<Decimal, Failure> {
    tally_client::parse_amount(text).map_err(|error| usage(format!("{field}: {error}")))
}

fn id_or_new(field: &str, text: Option<&String>) -> Result<u128, Failure> {
    text.map_or_else(|| Ok(new_id()), |text| parse_id(field, text))
}

/// Runs `work` with a spinner on stderr if it takes longer than a second (and stderr is a terminal).
async fn with_progress<T>(message: &str, work: impl Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let bar = indicatif::ProgressBar::hidden();
    let shown = {
        let bar = bar.clone();
        let message = message.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_message(message);
            bar.enable_steady_tick(Duration::from_millis(100));
        })
    };
    let result = work.await;
    shown.abort();
    bar.finish_and_clear();
    result
}

struct Printer {
    output: Output,
}

impl Printer {
    fn print(&self, json: Value, table: impl FnOnce() -> String) {
        match self.output {
            Output::Json => println!("{json}"),
            Output::Table => println!("{}", table()),
        }
    }

    /// Prints a write's results; fails with REJECTED if any event was refused.
    fn results(&self, ids: &[String], codes: &[ResultCode]) -> Result<(), Failure> {
        self.print(render::results_json(ids, codes), || render::results_table(ids, codes));
        let refused: Vec<String> = ids
            .iter()
            .zip(codes)
            .filter(|(_, code)| !code.is_success())
            .map(|(id, code)| format!("{id}: {} ({})", code.name(), code.description()))
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Failure { code: exit::REJECTED, message: format!("rejected: {}", refused.join("; ")) })
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { exit::USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tallyctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "tallyctl", &mut std::io::stdout());
        return Ok(());
    }
    if !(cli.timeout.is_finite() && cli.timeout > 0.0 && cli.timeout <= 3_600.0) {
        return Err(usage(format!("--timeout: {} is not a number of seconds in (0, 3600]", cli.timeout)));
    }
    let client = Client::connect(&cli.endpoints).await?.with_deadline(Duration::from_secs_f64(cli.timeout));
    let printer = Printer { output: cli.output };
    match cli.command {
        Command::Cluster(command) => cluster(&client, &printer, command).await,
        Command::Ledger(command) => ledger(&client, &printer, command).await,
        Command::Account(command) => account(&client, &printer, command).await,
        Command::Transfer(command) => transfer(&client, &printer, command).await,
        Command::Balance { account } => {
            let id = parse_id("account", &account)?;
            let found = with_progress("reading the balance", client.account(id)).await?;
            let account = found.ok_or_else(|| not_found("account", &account))?;
            printer.print(render::balance_json(&account), || render::balance_table(&account));
            Ok(())
        }
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

async fn cluster(client: &Client, printer: &Printer, command: ClusterCommand) -> Result<(), Failure> {
    match command {
        ClusterCommand::Status => {
            let status = with_progress("asking every member", client.cluster_status()).await?;
            printer.print(render::cluster_status_json(&status), || render::cluster_status_table(&status));
        }
        ClusterCommand::Members => {
            let status = with_progress("asking every member", client.cluster_status()).await?;
            let voters: Vec<u64> = status.nodes.iter().filter(|node| node.voter).map(|node| node.id).collect();
            let learners: Vec<u64> = status.nodes.iter().filter(|node| !node.voter).map(|node| node.id).collect();
            let json = json!({ "leader_id": status.leader_id, "voters": voters, "learners": learners });
            printer.print(json, || {
                let rows = status
                    .nodes
                    .iter()
                    .map(|node| {
                        vec![
                            node.id.to_string(),
                            if node.voter { "voter" } else { "learner" }.to_owned(),
                            node.site.clone(),
                            node.address.clone(),
                            if node.id == status.leader_id { "leader" } else { "" }.to_owned(),
                        ]
                    })
                    .collect();
                render::table(&["ID", "MEMBERSHIP", "SITE", "ADDRESS", ""], rows)
            });
        }
        ClusterCommand::AddLearner { node_id, address, site } => {
            let membership = with_progress("adding the learner", client.add_learner(node_id, &address, &site)).await?;
            printer.print(render::membership_json(&membership), || membership_table(&membership));
        }
        ClusterCommand::Promote { node_id } => {
            let status = client.cluster_status().await?;
            if !status.nodes.iter().any(|node| node.id == node_id) {
                return Err(usage(format!("node {node_id} is not a member; add it with `cluster add-learner` first")));
            }
            let mut voters: Vec<u64> = status.nodes.iter().filter(|node| node.voter).map(|node| node.id).collect();
            if voters.contains(&node_id) {
                return Err(usage(format!("node {node_id} is already a voter")));
            }
            voters.push(node_id);
            let membership = with_progress("changing the voters", client.change_membership(&voters, true)).await?;
            printer.print(render::membership_json(&membership), || membership_table(&membership));
        }
        ClusterCommand::Remove { node_id, keep_as_learner } => {
            let status = client.cluster_status().await?;
            if !status.nodes.iter().any(|node| node.id == node_id) {
                return Err(usage(format!("node {node_id} is not a member")));
            }
            let voters: Vec<u64> =
                status.nodes.iter().filter(|node| node.voter && node.id != node_id).map(|node| node.id).collect();
            let membership =
                with_progress("changing the voters", client.change_membership(&voters, keep_as_learner)).await?;
            printer.print(render::membership_json(&membership), || membership_table(&membership));
        }
        ClusterCommand::TransferLeader { node_id } => {
            let leader = with_progress("moving leadership", client.transfer_leader(node_id)).await?;
            printer.print(json!({ "leader_id": leader }), || format!("leader is now node {leader}"));
        }
        ClusterCommand::Snapshot { node_id } => {
            let status = client.cluster_status().await?;
            let targets: Vec<_> =
                status.nodes.iter().filter(|node| node.reachable && node_id.is_none_or(|id| id == node.id)).collect();
            if targets.is_empty() {
                return Err(match node_id {
                    Some(id) => usage(format!("node {id} is not a reachable member")),
                    None => usage("no member is reachable"),
                });
            }
            let bar = if std::io::stderr().is_terminal() && targets.len() > 1 {
                indicatif::ProgressBar::new(targets.len() as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            let mut built = Vec::new();
            for node in targets {
                bar.set_message(format!("node {}", node.id));
                let index = client.trigger_snapshot(&node.address).await?;
                built.push((node.id, index));
                bar.inc(1);
            }
            bar.finish_and_clear();
            let json = json!({ "snapshots": built.iter().map(|(id, index)| json!({"node_id": id, "snapshot_index": index})).collect::<Vec<_>>() });
            printer.print(json, || {
                render::table(
                    &["NODE", "SNAPSHOT INDEX"],
                    built.iter().map(|(id, index)| vec![id.to_string(), index.to_string()]).collect(),
                )
            });
        }
    }
    Ok(())
}

fn membership_table(membership: &tally_client::Membership) -> String {
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    render::table(
        &["LEADER", "VOTERS", "LEARNERS", "LOG INDEX"],
        vec![vec![
            membership.leader_id.to_string(),
            ids(&membership.voters),
            ids(&membership.learners),
            membership.log_index.to_string(),
        ]],
    )
}

async fn ledger(client: &Client, printer: &Printer, command: LedgerCommand) -> Result<(), Failure> {
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

async fn account(client: &Client, printer: &Printer, command: AccountCommand) -> Result<(), Failure> {
    match command {
        AccountCommand::Create {
            id,
            ledger,
            code,
            debits_must_not_exceed_credits,
            credits_must_not_exceed_debits,
            history,
        } => {
            let mut account = NewAccount::new(id_or_new("--id", id.as_ref())?, ledger, code);
            if debits_must_not_exceed_credits {
                account = account.debits_must_not_exceed_credits();
            }
            if credits_must_not_exceed_debits {
                account = account.credits_must_not_exceed_debits();
            }
            if history {
                account = account.history();
            }
            let codes = client.create_accounts(std::slice::from_ref(&account)).await?;
            printer.results(&[account.id.to_string()], &codes)
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
            let json = json!({ "accounts": page.records.iter().map(render::account_json).collect::<Vec<_>>(), "cursor": page.cursor });
            printer.print(json, || render::accounts_table(&page.records));
            Ok(())
        }
        AccountCommand::History { id, page } => {
            let account_id = parse_id("account", &id)?;
            let page = with_progress("reading the history", client.account_balances(account_id, page.window())).await?;
            let json = json!({
                "account_id": account_id.to_string(),
                "balances": page.records.iter().map(render::balance_history_json).collect::<Vec<_>>(),
                "cursor": page.cursor,
            });
            printer.print(json, || render::balance_history_table(&page.records));
            Ok(())
        }
    }
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

async fn transfer(client: &Client, printer: &Printer, command: TransferCommand) -> Result<(), Failure> {
    let submit = |transfers: Vec<NewTransfer>| async move {
        let ids: Vec<String> = transfers.iter().map(|transfer| transfer.id.to_string()).collect();
        let codes = with_progress("waiting for the cluster", client.create_transfers(&transfers)).await?;
        printer.results(&ids, &codes)
    };
    match command {
        TransferCommand::Create {
            id,
            debit,
            credit,
            amount,
            ledger,
            code,
            pending,
            timeout_seconds,
            balancing_debit,
            balancing_credit,
        } => {
            let mut transfer = NewTransfer::new(
                id_or_new("--id", id.as_ref())?,
                parse_id("--debit", &debit)?,
                parse_id("--credit", &credit)?,
                parse_amount("--amount", &amount)?,
                ledger,
                code,
            );
            if pending {
                transfer = transfer.pending(timeout_seconds);
            }
            if balancing_debit {
                transfer = transfer.balancing_debit();
            }
            if balancing_credit {
                transfer = transfer.balancing_credit();
            }
            submit(vec![transfer]).await
        }
        TransferCommand::CreateBatch { file } => {
            let mut text = String::new();
            let read = if file == "-" {
                std::io::stdin().read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(&file).map(|read| text = read)
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
            submit(transfers).await
        }
        TransferCommand::Post { pending_id, amount, id } => {
            let mut post = NewTransfer::post(id_or_new("--id", id.as_ref())?, parse_id("pending id", &pending_id)?);
            if let Some(amount) = amount {
                post = post.amount(parse_amount("--amount", &amount)?);
            }
            submit(vec![post]).await
        }
        TransferCommand::Void { pending_id, id } => {
            submit(vec![NewTransfer::void(id_or_new("--id", id.as_ref())?, parse_id("pending id", &pending_id)?)]).await
        }
        TransferCommand::Get { id } => {
            let found = client.transfer(parse_id("transfer", &id)?).await?;
            let transfer = found.ok_or_else(|| not_found("transfer", &id))?;
            printer
                .print(render::transfer_json(&transfer), || render::transfers_table(std::slice::from_ref(&transfer)));
            Ok(())
        }
        TransferCommand::List { account, ledger, code, page } => {
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
            let json = json!({ "transfers": page.records.iter().map(render::transfer_json).collect::<Vec<_>>(), "cursor": page.cursor });
            printer.print(json, || render::transfers_table(&page.records));
            Ok(())
        }
    }
}
