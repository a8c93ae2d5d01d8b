//! `tallyctl genesis`: the cluster's genesis file, made from its cluster id and the operators'
//! public key files, and shown with the fingerprint every replica will compare.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;
use tally_identity::genesis::{Genesis, Operator};
use tally_identity::{ClusterId, PublicKey};

use crate::common::{Failure, Printer, refuse_existing, usage, write_new};
use crate::render;

#[derive(Debug, Subcommand)]
pub enum GenesisCommand {
    /// Writes a genesis file: the cluster id and the operators' ML-DSA-87 public keys.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// The cluster id's file, as `certs init` wrote it.
        #[arg(long)]
        cluster_id_file: PathBuf,
        /// An operator, ID=PUBLIC_KEY_FILE (repeatable; keys from `keys generate --algorithm ml-dsa-87`).
        #[arg(long = "operator", required = true)]
        operators: Vec<String>,
        /// Operators who must sign a change to operators, membership or the key registry.
        #[arg(long)]
        required: usize,
    },
    /// Checks a genesis file and shows its cluster id, operators and fingerprint.
    Show { file: PathBuf },
}

pub fn run(printer: &Printer, command: GenesisCommand) -> Result<(), Failure> {
    match command {
        GenesisCommand::Init { out, cluster_id_file, operators, required } => {
            refuse_existing(std::slice::from_ref(&out))?;
            let cluster = read_cluster_id(&cluster_id_file)?;
            let operators = operators.iter().map(|operator| read_operator(operator)).collect::<Result<Vec<_>, _>>()?;
            let genesis = Genesis::new(cluster, operators, required).map_err(|error| usage(error.to_string()))?;
            write_new(&out, genesis.to_toml().as_bytes(), false)?;
            show(printer, &genesis);
            Ok(())
        }
        GenesisCommand::Show { file } => {
            let text = read(&file)?;
            let genesis = Genesis::from_toml(&text).map_err(|error| usage(format!("{}: {error}", file.display())))?;
            show(printer, &genesis);
            Ok(())
        }
    }
}

fn read(file: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|error| usage(format!("cannot read {}: {error}", file.display())))
}

fn read_cluster_id(file: &Path) -> Result<ClusterId, Failure> {
    let text = read(file)?;
    ClusterId::from_hex(text.trim())
        .ok_or_else(|| usage(format!("{}: not a cluster id (32 hex digits)", file.display())))
}

/// `ID=PUBLIC_KEY_FILE`.
fn read_operator(argument: &str) -> Result<Operator, Failure> {
    let (id, file) = argument
        .split_once('=')
        .ok_or_else(|| usage(format!("--operator {argument:?}: write it as ID=PUBLIC_KEY_FILE")))?;
    let id: u64 = id.parse().map_err(|_| usage(format!("--operator {argument:?}: {id:?} is not an operator id")))?;
    let file = Path::new(file);
    let key = PublicKey::from_pem(&read(file)?).map_err(|error| usage(format!("{}: {error}", file.display())))?;
    Ok(Operator { id, key })
}

fn show(printer: &Printer, genesis: &Genesis) {
    let cluster = genesis.cluster.to_string();
    let fingerprint = genesis.fingerprint_hex();
    let operators: Vec<_> = genesis
        .operators
        .iter()
        .map(|operator| json!({ "id": operator.id, "key_id": operator.key.key_id().to_string() }))
        .collect();
    let json = json!({
        "cluster_id": cluster,
        "fingerprint": fingerprint,
        "operator_signatures_required": genesis.operator_signatures_required,
        "operators": operators,
    });
    printer.print(json, || {
        let rows = genesis
            .operators
            .iter()
            .map(|operator| vec![operator.id.to_string(), operator.key.key_id().to_string()])
            .collect();
        format!(
            "cluster {cluster}, fingerprint {fingerprint}, {} of {} operators sign changes\n{}",
            genesis.operator_signatures_required,
            genesis.operators.len(),
            render::table(&["OPERATOR", "KEY ID"], rows)
        )
    });
}
