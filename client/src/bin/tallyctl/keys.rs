//! `tallyctl keys`: ML-DSA signing keys for principals (ML-DSA-65) and operators (ML-DSA-87).
//!
//! `generate` writes the private key sealed with a passphrase (`FILE`, readable by its owner
//! only) and the public key beside it (`FILE.pub`), which is what gets registered. The passphrase
//! comes from `TALLY_KEY_PASSPHRASE` or from the first line of `--passphrase-file`, never from the
//! command line, where other users of the host could read it. Nothing is ever overwritten.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use serde_json::json;
use tally_identity::key_file;
use tally_identity::{Algorithm, PublicKey, Signer};

use crate::common::{Failure, Printer, refuse_existing, usage, write_new};
use crate::render;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyAlgorithm {
    /// For principals' request signatures.
    #[value(name = "ml-dsa-65")]
    MlDsa65,
    /// For operators (and the cluster CA).
    #[value(name = "ml-dsa-87")]
    MlDsa87,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Makes a key pair: FILE (sealed with the passphrase) and FILE.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "ml-dsa-65")]
        algorithm: KeyAlgorithm,
        /// A file whose first line is the passphrase (default: $TALLY_KEY_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Shows a public key file's algorithm and key id.
    Show { public_key: PathBuf },
}

pub fn run(printer: &Printer, command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Generate { out, algorithm, passphrase_file } => {
            let algorithm = match algorithm {
                KeyAlgorithm::MlDsa65 => Algorithm::MlDsa65,
                KeyAlgorithm::MlDsa87 => Algorithm::MlDsa87,
            };
            generate(printer, &out, algorithm, passphrase_file.as_deref())
        }
        KeysCommand::Show { public_key } => {
            let text = std::fs::read_to_string(&public_key)
                .map_err(|error| usage(format!("cannot read {}: {error}", public_key.display())))?;
            let key =
                PublicKey::from_pem(&text).map_err(|error| usage(format!("{}: {error}", public_key.display())))?;
            print_key(printer, &key, &[public_key]);
            Ok(())
        }
    }
}

pub fn passphrase(file: Option<&Path>) -> Result<String, Failure> {
    match file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|error| usage(format!("--passphrase-file {}: {error}", file.display())))?;
            Ok(text.lines().next().unwrap_or_default().to_owned())
        }
        None => std::env::var("TALLY_KEY_PASSPHRASE")
            .map_err(|_| usage("no passphrase: set TALLY_KEY_PASSPHRASE or give --passphrase-file")),
    }
}

fn generate(
    printer: &Printer,
    out: &Path,
    algorithm: Algorithm,
    passphrase_file: Option<&Path>,
) -> Result<(), Failure> {
    let passphrase = passphrase(passphrase_file)?;
    let public_file = PathBuf::from(format!("{}.pub", out.display()));
    refuse_existing(&[out.to_owned(), public_file.clone()])?;
    let (key, sealed) = key_file::generate(algorithm, &passphrase).map_err(|error| usage(error.to_string()))?;
    write_new(out, sealed.as_bytes(), true)?;
    write_new(&public_file, key.public_key().to_pem().as_bytes(), false)?;
    print_key(printer, key.public_key(), &[out.to_owned(), public_file]);
    Ok(())
}

fn print_key(printer: &Printer, key: &PublicKey, files: &[PathBuf]) {
    let files: Vec<String> = files.iter().map(|file| file.display().to_string()).collect();
    let (algorithm, key_id) = (key.algorithm().name(), key.key_id().to_string());
    printer.print(json!({ "algorithm": algorithm, "key_id": key_id, "files": files }), || {
        render::table(
            &["ALGORITHM", "KEY ID", "FILES"],
            vec![vec![algorithm.to_owned(), key_id.clone(), files.join(" ")]],
        )
    });
}
