//! `tallyctl registry`: the key registry's maker-checker changes, and what it holds.
//!
//! One operator proposes a change into a JSON file (`propose`, no cluster needed); as many
//! operators as the genesis requires add their approval to it in turn (`approve`, each with their
//! own ML-DSA-87 key, no cluster needed); anyone sends it (`submit`). `show` lists the operators,
//! and every principal with its role and keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tally_client::Client;
use tally_client::registry::{Permission, PrincipalRole, ProposedChange, RegistryChange};
use tally_identity::genesis::Genesis;
use tally_identity::{KeyId, PublicKey};

use crate::common::{Failure, Printer, refuse_existing, replace_atomically, usage, write_new};
use crate::render;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PermissionName {
    CreateLedgers,
    CreateAccounts,
    CreateTransfers,
    Read,
    /// Leadership transfers and snapshots.
    Operate,
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    /// What the principal may do (repeat for several).
    #[arg(long = "permission", value_enum, required = true)]
    permissions: Vec<PermissionName>,
    /// A ledger the principal may use (repeat; none: all).
    #[arg(long = "ledger")]
    ledgers: Vec<u32>,
    /// An account code the principal may debit (repeat; none: any).
    #[arg(long = "debit-code")]
    debit_codes: Vec<u16>,
}

impl RoleArgs {
    fn role(&self) -> PrincipalRole {
        let permissions = self
            .permissions
            .iter()
            .map(|permission| match permission {
                PermissionName::CreateLedgers => Permission::CreateLedgers,
                PermissionName::CreateAccounts => Permission::CreateAccounts,
                PermissionName::CreateTransfers => Permission::CreateTransfers,
                PermissionName::Read => Permission::Read,
                PermissionName::Operate => Permission::Operate,
            })
            .collect();
        PrincipalRole { permissions, ledgers: self.ledgers.clone(), debit_account_codes: self.debit_codes.clone() }
    }
}

#[derive(Debug, Subcommand)]
pub enum Change {
    /// A new principal with its role and first key (its `.pub` file).
    Register {
        #[arg(long)]
        principal: u64,
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        role: RoleArgs,
    },
    /// Another key for a principal (the first step of a rotation).
    AddKey {
        #[arg(long)]
        principal: u64,
        #[arg(long)]
        key: PathBuf,
    },
    /// A key that signs nothing new (the last step of a rotation).
    RetireKey {
        #[arg(long)]
        principal: u64,
        #[arg(long)]
        key_id: String,
    },
    /// A key that signs nothing new, at once.
    RevokeKey {
        #[arg(long)]
        principal: u64,
        #[arg(long)]
        key_id: String,
    },
    /// A principal's new role.
    SetRole {
        #[arg(long)]
        principal: u64,
        #[command(flatten)]
        role: RoleArgs,
    },
    /// Another operator, with its ML-DSA-87 public key file.
    AddOperator {
        #[arg(long)]
        operator: u64,
        #[arg(long)]
        key: PathBuf,
    },
    /// An operator that approves nothing from now on.
    RemoveOperator {
        #[arg(long)]
        operator: u64,
    },
    /// How many operators must approve a change.
    SetApprovalsRequired {
        #[arg(long)]
        required: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Proposes a change into a new file, for operators to approve (no cluster needed).
    Propose {
        /// The cluster's genesis file (it names the cluster).
        #[arg(long)]
        genesis: PathBuf,
        /// Where to write the proposal.
        #[arg(long)]
        out: PathBuf,
        /// How long the change may wait for its approvals, at most 24.
        #[arg(long, default_value_t = 1.0)]
        valid_hours: f64,
        #[command(subcommand)]
        change: Change,
    },
    /// Adds an operator's approval to a proposal file (no cluster needed).
    Approve {
        file: PathBuf,
        #[arg(long)]
        operator: u64,
        /// The operator's sealed ML-DSA-87 key.
        #[arg(long)]
        key: PathBuf,
        /// A file whose first line is the key's passphrase (default: $TALLY_KEY_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Sends an approved proposal to the cluster.
    Submit { file: PathBuf },
    /// The operators, and every principal with its role and keys.
    Show,
}

impl RegistryCommand {
    /// Whether the command needs a cluster.
    pub fn needs_cluster(&self) -> bool {
        matches!(self, RegistryCommand::Submit { .. } | RegistryCommand::Show)
    }
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|error| usage(format!("cannot read {}: {error}", path.display())))
}

fn public_key(path: &Path) -> Result<PublicKey, Failure> {
    PublicKey::from_pem(&read(path)?).map_err(|error| usage(format!("{}: {error}", path.display())))
}

fn key_id(text: &str) -> Result<KeyId, Failure> {
    let bad = || usage(format!("--key-id: {text:?} is not 32 hex digits"));
    if text.len() != 32 {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * index..2 * index + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(KeyId(id))
}

/// An operator's sealed ML-DSA-87 key, opened with the passphrase in `passphrase_file` (or
/// `$TALLY_KEY_PASSPHRASE`).
pub fn operator_key(path: &Path, passphrase_file: Option<&Path>) -> Result<tally_identity::MlDsaKeyPair, Failure> {
    let passphrase = crate::keys::passphrase(passphrase_file)?;
    tally_identity::key_file::open(&read(path)?, &passphrase)
        .map_err(|error| usage(format!("{}: {error}", path.display())))
}

fn proposal(path: &Path) -> Result<ProposedChange, Failure> {
    ProposedChange::from_json(&read(path)?).map_err(|error| usage(format!("{}: {error}", path.display())))
}

pub fn print_proposal(printer: &Printer, proposed: &ProposedChange, file: &Path) {
    let approvals: Vec<u64> = proposed.approvals.iter().map(|(operator, _)| *operator).collect();
    let value = json!({
        "file": file.display().to_string(),
        "summary": proposed.summary,
        "change_id": format!("{:032x}", proposed.change_id),
        "approved_by": approvals,
    });
    printer.print(value, || {
        let approved: Vec<String> = approvals.iter().map(u64::to_string).collect();
        render::table(
            &["FILE", "CHANGE", "APPROVED BY"],
            vec![vec![file.display().to_string(), proposed.summary.clone(), approved.join(", ")]],
        )
    });
}

/// `propose` and `approve`, which need no cluster.
pub fn run_offline(printer: &Printer, command: RegistryCommand) -> Result<(), Failure> {
    match command {
        RegistryCommand::Propose { genesis, out, valid_hours, change } => {
            let genesis = Genesis::from_toml(&read(&genesis)?)
                .map_err(|error| usage(format!("{}: {error}", genesis.display())))?;
            refuse_existing(std::slice::from_ref(&out))?;
            if !(valid_hours.is_finite() && valid_hours > 0.0 && valid_hours <= 24.0) {
                return Err(usage(format!("--valid-hours: {valid_hours} is not in (0, 24]")));
            }
            let change = match change {
                Change::Register { principal, key, role } => {
                    RegistryChange::RegisterPrincipal { principal, role: role.role(), key: public_key(&key)? }
                }
                Change::AddKey { principal, key } => RegistryChange::AddKey { principal, key: public_key(&key)? },
                Change::RetireKey { principal, key_id: id } => {
                    RegistryChange::RetireKey { principal, key_id: key_id(&id)? }
                }
                Change::RevokeKey { principal, key_id: id } => {
                    RegistryChange::RevokeKey { principal, key_id: key_id(&id)? }
                }
                Change::SetRole { principal, role } => RegistryChange::SetRole { principal, role: role.role() },
                Change::AddOperator { operator, key } => {
                    RegistryChange::AddOperator { operator, key: public_key(&key)? }
                }
                Change::RemoveOperator { operator } => RegistryChange::RemoveOperator { operator },
                Change::SetApprovalsRequired { required } => RegistryChange::SetApprovalsRequired { required },
            };
            let validity = Duration::from_secs_f64(valid_hours * 3600.0);
            let proposed = ProposedChange::new(genesis.cluster, &change, validity).map_err(Failure::from)?;
            write_new(&out, proposed.to_json().as_bytes(), false)?;
            print_proposal(printer, &proposed, &out);
            Ok(())
        }
        RegistryCommand::Approve { file, operator, key, passphrase_file } => {
            let mut proposed = proposal(&file)?;
            let key = operator_key(&key, passphrase_file.as_deref())?;
            proposed.approve(operator, &key).map_err(Failure::from)?;
            replace_atomically(&file, proposed.to_json().as_bytes(), false)?;
            print_proposal(printer, &proposed, &file);
            Ok(())
        }
        RegistryCommand::Submit { .. } | RegistryCommand::Show => unreachable!("needs a cluster"),
    }
}

/// `submit` and `show`.
pub async fn run(client: &Client, printer: &Printer, command: RegistryCommand) -> Result<(), Failure> {
    match command {
        RegistryCommand::Submit { file } => {
            let proposed = proposal(&file)?;
            let applied = client.change_registry(&proposed).await?;
            let membership = applied.membership.as_ref().map(render::membership_json);
            let value = json!({
                "summary": proposed.summary,
                "applied_index": applied.applied_index,
                "repeated": applied.repeated,
                "membership": membership,
            });
            printer.print(value, || {
                let outcome = if applied.repeated { "applied before" } else { "applied" };
                let made = match &applied.membership {
                    Some(membership) => format!(
                        "; voters {:?}, learners {:?} (membership entry at log index {})",
                        membership.voters, membership.learners, membership.log_index
                    ),
                    None => String::new(),
                };
                format!("{outcome} at log index {}: {}{made}", applied.applied_index, proposed.summary)
            });
            Ok(())
        }
        RegistryCommand::Show => {
            let registry = client.registry().await?;
            let hex = |bytes: &[u8]| bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
            let mut rows = Vec::new();
            let mut principals = Vec::new();
            for principal in &registry.principals {
                let role = principal.role.clone().unwrap_or_default();
                let permissions: Vec<String> = role
                    .permissions
                    .iter()
                    .map(|number| {
                        Permission::try_from(*number).map_or("unknown".into(), tally_client::registry::permission_name)
                    })
                    .collect();
                let keys: Vec<serde_json::Value> = principal
                    .keys
                    .iter()
                    .map(|key| {
                        let status = tally_proto::v1::KeyStatus::try_from(key.status).map_or("unknown".into(), |status| {
                            status.as_str_name().trim_start_matches("KEY_STATUS_").to_lowercase()
                        });
                        rows.push(vec![
                            principal.id.to_string(),
                            hex(&key.key_id),
                            status.clone(),
                            key.valid_from_index.to_string(),
                            permissions.join(" "),
                        ]);
                        json!({ "key_id": hex(&key.key_id), "status": status, "valid_from_index": key.valid_from_index, "status_index": key.status_index })
                    })
                    .collect();
                principals.push(json!({
                    "id": principal.id,
                    "permissions": permissions,
                    "ledgers": role.ledgers,
                    "debit_account_codes": role.debit_account_codes,
                    "keys": keys,
                }));
            }
            let operators: Vec<serde_json::Value> = registry
                .operators
                .iter()
                .map(|operator| json!({ "id": operator.id, "key_id": hex(&operator.key_id) }))
                .collect();
            let value = json!({
                "cluster_id": hex(&registry.cluster_id),
                "operator_approvals_required": registry.operator_approvals_required,
                "operators": operators,
                "principals": principals,
            });
            printer
                .print(value, || render::table(&["PRINCIPAL", "KEY ID", "STATUS", "VALID FROM", "PERMISSIONS"], rows));
            Ok(())
        }
        RegistryCommand::Propose { .. } | RegistryCommand::Approve { .. } => run_offline(printer, command),
    }
}
