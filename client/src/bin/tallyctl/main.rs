//! `tallyctl`: the operators' command line for a Tally cluster.
//!
//! # Layout
//! - this file: the command line, and dispatch to a module per command family.
//! - `cluster`, `ledger`, `account` (with `balance`), `transfer`, `certs`, `keys`, `genesis`: each
//!   family's commands, one short handler per command.
//! - `common`: failures and exit codes, argument parsing, paging, progress and printing.
//! - `render`: tables for people and JSON for scripts.

mod account;
mod certs;
mod cluster;
mod common;
mod genesis;
mod keys;
mod ledger;
mod registry;
mod render;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use tally_client::{Client, ClientTls, RequestSigning, Security, TlsFiles};

use common::{Failure, Output, Printer, exit, usage};

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
    /// The cluster CA's certificate (`tallyctl certs init` writes ca.pem).
    #[arg(long, env = "TALLY_CA", global = true)]
    ca: Option<PathBuf>,
    /// The principal's certificate tallyctl presents (`tallyctl certs issue principal`).
    #[arg(long, env = "TALLY_CERT", global = true)]
    cert: Option<PathBuf>,
    /// The principal's private key.
    #[arg(long, env = "TALLY_KEY", global = true)]
    key: Option<PathBuf>,
    /// Connect without TLS: only a development cluster started with insecure_plaintext accepts it.
    #[arg(long, env = "TALLY_INSECURE_PLAINTEXT", global = true, value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    insecure_plaintext: bool,
    /// The principal's sealed ML-DSA-65 signing key: a secured cluster takes signed writes only.
    #[arg(long, env = "TALLY_SIGNING_KEY", global = true)]
    signing_key: Option<PathBuf>,
    /// A file whose first line is the signing key's passphrase.
    #[arg(long, env = "TALLY_SIGNING_PASSPHRASE_FILE", global = true)]
    signing_passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Ledgers (one currency each).
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Accounts.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Transfers, including pending (two-phase) ones.
    #[command(subcommand)]
    Transfer(transfer::TransferCommand),
    /// An account's balances.
    Balance {
        /// The account id.
        account: String,
    },
    /// The cluster's certificate authority and certificates (no cluster needed).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// The cluster's genesis file: its id and its operators' keys (no cluster needed).
    #[command(subcommand)]
    Genesis(genesis::GenesisCommand),
    /// ML-DSA signing keys for principals and operators (no cluster needed).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The key registry: maker-checker changes (propose, approve, submit) and what it holds.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Prints a shell completion script.
    Completions { shell: clap_complete::Shell },
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
    match cli.command {
        Command::Certs(command) => return certs::run(&Printer { output: cli.output }, command),
        Command::Keys(command) => return keys::run(&Printer { output: cli.output }, command),
        Command::Genesis(command) => return genesis::run(&Printer { output: cli.output }, command),
        Command::Registry(command) if !command.needs_cluster() => {
            return registry::run_offline(&Printer { output: cli.output }, command);
        }
        _ => {}
    }
    if !(cli.timeout.is_finite() && cli.timeout > 0.0 && cli.timeout <= 3_600.0) {
        return Err(usage(format!("--timeout: {} is not a number of seconds in (0, 3600]", cli.timeout)));
    }
    let security = match (cli.insecure_plaintext, cli.ca, cli.cert, cli.key) {
        (true, None, None, None) => Security::InsecurePlaintext,
        (true, ..) => return Err(usage("--insecure-plaintext and --ca/--cert/--key: choose one")),
        (false, Some(ca), Some(certificate), Some(key)) => Security::Tls(Box::new(ClientTls::load(TlsFiles {
            ca,
            certificate,
            key,
            revocation_list: None,
            fallback: None,
        })?)),
        (false, ..) => {
            return Err(usage(
                "the cluster serves TLS: give --ca, --cert and --key (or TALLY_CA, TALLY_CERT, TALLY_KEY) for a \
                 principal's certificate, or --insecure-plaintext for a development cluster",
            ));
        }
    };
    let signing = match (&cli.signing_key, &cli.signing_passphrase_file) {
        (None, _) => None,
        (Some(key), Some(passphrase)) => Some(RequestSigning::for_security(&security, key, passphrase)?),
        (Some(_), None) => {
            return Err(usage("--signing-key needs --signing-passphrase-file (or TALLY_SIGNING_PASSPHRASE_FILE)"));
        }
    };
    let client = Client::connect_signed(&cli.endpoints, security, signing)
        .await?
        .with_deadline(Duration::from_secs_f64(cli.timeout));
    let printer = Printer { output: cli.output };
    match cli.command {
        Command::Cluster(command) => cluster::run(&client, &printer, command).await,
        Command::Ledger(command) => ledger::run(&client, &printer, command).await,
        Command::Account(command) => account::run(&client, &printer, command).await,
        Command::Transfer(command) => transfer::run(&client, &printer, command).await,
        Command::Balance { account } => account::balance(&client, &printer, &account).await,
        Command::Registry(command) => registry::run(&client, &printer, command).await,
        Command::Completions { .. } | Command::Certs(_) | Command::Keys(_) | Command::Genesis(_) => {
            unreachable!("handled above")
        }
    }
}
