//! What every command family shares: failures and exit codes, argument parsing, paging, progress
//! and printing.

use std::fs;
use std::future::Future;
use std::io::IsTerminal;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use rust_decimal::Decimal;
use serde_json::Value;
use tally_client::{Error, ResultCode, Window, new_id};

use crate::render;

/// Exit codes, also listed in `tallyctl --help`.
pub mod exit {
    /// A usage error: bad arguments or a request the cluster refused as malformed.
    pub const USAGE: u8 = 2;
    /// The ledger refused an event (a result code other than ok/exists), or a record was not found.
    pub const REJECTED: u8 = 3;
    /// The cluster could not be reached, or had no leader, before the deadline.
    pub const UNAVAILABLE: u8 = 4;
    /// Anything else the cluster answered that tallyctl cannot act on.
    pub const FAILED: u8 = 1;
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PageArgs {
    /// Records to list, 1..=8190.
    #[arg(long, default_value = "100")]
    pub limit: u32,
    /// Newest first.
    #[arg(long)]
    pub reversed: bool,
}

impl PageArgs {
    pub fn window(&self) -> Window {
        Window { limit: self.limit, reversed: self.reversed, ..Window::default() }
    }
}

/// A failed command: its message and exit code.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let code = match &error {
            Error::Unavailable { .. } => exit::UNAVAILABLE,
            Error::InvalidArgument(_) | Error::Usage(_) | Error::TooLarge(_) => exit::USAGE,
            Error::Unauthenticated(_) | Error::PermissionDenied(_) => exit::REJECTED,
            Error::Server { .. } | Error::Protocol(_) => exit::FAILED,
        };
        Failure { code, message: error.to_string() }
    }
}

pub fn usage(message: impl Into<String>) -> Failure {
    Failure { code: exit::USAGE, message: message.into() }
}

pub fn not_found(what: &str, id: &str) -> Failure {
    Failure { code: exit::REJECTED, message: format!("{what} {id} was not found") }
}

pub fn parse_id(field: &str, text: &str) -> Result<u128, Failure> {
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
pub fn parse_amount(field: &str, text: &str) -> Result<Decimal, Failure> {
    tally_client::parse_amount(text).map_err(|error| usage(format!("{field}: {error}")))
}

pub fn id_or_new(field: &str, text: Option<&String>) -> Result<u128, Failure> {
    text.map_or_else(|| Ok(new_id()), |text| parse_id(field, text))
}

/// Runs `work` with a spinner on stderr if it takes longer than a second (and stderr is a terminal).
pub async fn with_progress<T>(message: &str, work: impl Future<Output = T>) -> T {
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

pub struct Printer {
    pub output: Output,
}

impl Printer {
    pub fn print(&self, json: Value, table: impl FnOnce() -> String) {
        match self.output {
            Output::Json => println!("{json}"),
            Output::Table => println!("{}", table()),
        }
    }

    /// Prints a write's results; fails with REJECTED if any event was refused.
    pub fn results(&self, ids: &[String], codes: &[ResultCode]) -> Result<(), Failure> {
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

pub fn failed(what: String) -> Failure {
    Failure { code: exit::FAILED, message: what }
}

/// Refuses, before anything is written, when any of `files` exists: tallyctl never overwrites a
/// key, a certificate or a genesis.
pub fn refuse_existing(files: &[PathBuf]) -> Result<(), Failure> {
    match files.iter().find(|file| file.exists()) {
        Some(file) => Err(usage(format!("{} exists already; nothing was written", file.display()))),
        None => Ok(()),
    }
}

/// Writes a file that must not exist yet, fsynced; a key only its owner can read.
pub fn write_new(file: &Path, bytes: &[u8], secret: bool) -> Result<(), Failure> {
    let failure = |error: std::io::Error| failed(format!("cannot write {}: {error}", file.display()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true).mode(if secret { 0o600 } else { 0o644 });
    let mut out = options.open(file).map_err(failure)?;
    out.write_all(bytes).map_err(failure)?;
    out.sync_all().map_err(failure)
}

/// Replaces `file` with `bytes` in one step (a new file beside it, fsynced, then renamed over
/// it): a replica watching the file reads the old contents or the new, never half of them.
pub fn replace_atomically(file: &Path, bytes: &[u8], secret: bool) -> Result<(), Failure> {
    let failure = |error: std::io::Error| failed(format!("cannot write {}: {error}", file.display()));
    let mut staged = file.as_os_str().to_owned();
    staged.push(".staged");
    let staged = std::path::PathBuf::from(staged);
    let _ = fs::remove_file(&staged);
    write_new(&staged, bytes, secret)?;
    fs::rename(&staged, file).map_err(failure)?;
    if let Some(parent) = file.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        fs::File::open(parent).and_then(|directory| directory.sync_all()).map_err(failure)?;
    }
    Ok(())
}
