//! `tallyctl certs`: the cluster's certificate authority and the certificates it issues.
//!
//! Everything lives in one folder: `cluster-id` (16 bytes in hex), `ca.pem` and `ca.key` (the
//! ML-DSA-87 CA), and `replica-<id>.pem` / `.key` or `principal-<id>.pem` / `.key` (ML-DSA-65).
//! Beside them, a fallback CA (`ca-ecdsa.pem`, ECDSA P-256) issues `<name>-ecdsa.pem` / `.key`
//! with every certificate, for clients whose TLS cannot verify ML-DSA yet; peers never use them.
//! Keys are written readable by their owner only, and nothing is ever overwritten: a second
//! `init` or `issue` of the same name fails and changes nothing. `rotate` replaces a
//! certificate and key in one rename each (the old ones kept beside them, suffixed with the time),
//! and `revoke` rewrites the CA's revocation list, `ca.crl`, in one rename: replicas pick up
//! both without a restart (SIGHUP, or within `tls.reload_check_interval_ms`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tally_identity::ClusterId;
use tally_identity::certs::FallbackCa;
use tally_identity::certs::{CA_VALIDITY_DEFAULT, CertifiedKey, ClusterCa, Identity, Revoked, serial_of};
use tally_identity::tls::{FALLBACK_CA_FILE, FALLBACK_REVOCATION_LIST_FILE, REVOCATION_LIST_FILE};

/// The fallback CA's key, beside its certificate.
const FALLBACK_CA_KEY_FILE: &str = "ca-ecdsa.key";
use x509_parser::prelude::FromDer;

use crate::common::{Failure, Printer, failed, refuse_existing, replace_atomically, usage, write_new};
use crate::render;

/// Days a certificate may be valid for at most (a CA's ten years).
const VALIDITY_DAYS_MAX: u32 = 3_650;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Makes a cluster id and the cluster's CA (ML-DSA-87) in --dir.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The cluster id, 32 hex digits (default: a new random one).
        #[arg(long)]
        cluster_id: Option<String>,
    },
    /// Issues a replica's or a principal's certificate (ML-DSA-65) with the CA in --dir.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[command(subcommand)]
        identity: IssueIdentity,
        /// Days the certificate is valid for.
        #[arg(long, default_value = "90", global = true)]
        days: u32,
    },
    /// Replaces a replica's or a principal's certificate and key with new ones (the old are kept
    /// as `<file>.<unix time>.old`); replicas and clients use the new ones once they reload.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        #[command(subcommand)]
        identity: IssueIdentity,
        #[arg(long, default_value = "90", global = true)]
        days: u32,
    },
    /// Shows what a certificate file says: identity, cluster, key algorithm, serial, validity.
    Show {
        /// The certificate file (PEM).
        certificate: PathBuf,
    },
    /// Adds a certificate to the CA's revocation list (`ca.crl` in --dir): replicas refuse it
    /// from their next reload, on every listener and peer connection.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// The certificate file to revoke.
        certificate: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum IssueIdentity {
    /// A replica's certificate: server and client, naming the addresses it serves on.
    Replica {
        id: u64,
        /// A DNS name or IP address the replica is reached at (repeatable).
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
    },
    /// A principal's client certificate.
    Principal { id: u64 },
}

pub fn run(printer: &Printer, command: CertsCommand) -> Result<(), Failure> {
    match command {
        CertsCommand::Init { dir, cluster_id } => init(printer, &dir, cluster_id.as_deref()),
        CertsCommand::Issue { dir, identity, days } => issue(printer, &dir, identity, days, false),
        CertsCommand::Rotate { dir, identity, days } => issue(printer, &dir, identity, days, true),
        CertsCommand::Revoke { dir, certificate } => revoke(printer, &dir, &certificate),
        CertsCommand::Show { certificate } => show(printer, &certificate),
    }
}

fn init(printer: &Printer, dir: &Path, cluster_id: Option<&str>) -> Result<(), Failure> {
    let cluster = match cluster_id {
        Some(text) => {
            ClusterId::from_hex(text).ok_or_else(|| usage(format!("--cluster-id: {text:?} is not 32 hex digits")))?
        }
        None => {
            let mut bytes = [0; 16];
            getrandom::fill(&mut bytes).map_err(|error| failed(format!("no randomness for a cluster id: {error}")))?;
            ClusterId(bytes)
        }
    };
    let files = [
        dir.join("cluster-id"),
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join(FALLBACK_CA_FILE),
        dir.join(FALLBACK_CA_KEY_FILE),
    ];
    refuse_existing(&files)?;
    let ca = ClusterCa::generate(cluster, CA_VALIDITY_DEFAULT).map_err(|error| failed(error.to_string()))?;
    let fallback = FallbackCa::generate(cluster, CA_VALIDITY_DEFAULT).map_err(|error| failed(error.to_string()))?;
    fs::create_dir_all(dir).map_err(|error| failed(format!("cannot create {}: {error}", dir.display())))?;
    write_new(&files[0], format!("{cluster}\n").as_bytes(), false)?;
    write_certified(&files[1], &files[2], ca.certified())?;
    write_certified(&files[3], &files[4], fallback.certified())?;
    let cluster_hex = cluster.to_string();
    printer.print(json!({ "cluster_id": cluster_hex, "files": paths(&files) }), || {
        render::table(
            &["CLUSTER", "CA CERTIFICATE", "CA KEY"],
            vec![vec![cluster_hex.clone(), path(&files[1]), path(&files[2])]],
        )
    });
    Ok(())
}

/// `rotating`: the files must exist, and are replaced; otherwise they must not.
fn issue(printer: &Printer, dir: &Path, identity: IssueIdentity, days: u32, rotating: bool) -> Result<(), Failure> {
    if days == 0 || days > VALIDITY_DAYS_MAX {
        return Err(usage(format!("--days: {days} is not in 1..={VALIDITY_DAYS_MAX}")));
    }
    let (identity, addresses, name) = match identity {
        IssueIdentity::Replica { id, addresses } => (Identity::Replica(id), addresses, format!("replica-{id}")),
        IssueIdentity::Principal { id } => (Identity::Principal(id), Vec::new(), format!("principal-{id}")),
    };
    let id = match identity {
        Identity::Replica(id) | Identity::Principal(id) => id,
    };
    if id == 0 {
        return Err(usage("an id must not be 0"));
    }
    let ca = load_ca(dir)?;
    let fallback = load_fallback_ca(dir, ca.cluster())?;
    let mut files = vec![dir.join(format!("{name}.pem")), dir.join(format!("{name}.key"))];
    if fallback.is_some() {
        files.extend([dir.join(format!("{name}-ecdsa.pem")), dir.join(format!("{name}-ecdsa.key"))]);
    }
    if rotating {
        if let Some(missing) = files.iter().find(|file| !file.exists()) {
            return Err(usage(format!("{} does not exist: issue it first (tallyctl certs issue)", missing.display())));
        }
    } else {
        refuse_existing(&files)?;
    }
    let validity = Duration::from_secs(u64::from(days) * 24 * 3600);
    let mut issued = vec![ca.issue(identity, &addresses, validity).map_err(|error| failed(error.to_string()))?];
    if let Some(fallback) = &fallback {
        issued.push(fallback.issue(identity, &addresses, validity).map_err(|error| failed(error.to_string()))?);
    }
    if rotating {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        for file in &files {
            let kept = PathBuf::from(format!("{}.{now}.old", file.display()));
            fs::copy(file, &kept).map_err(|error| failed(format!("cannot keep {}: {error}", file.display())))?;
        }
        // The key first: a replica that reloads between the two renames finds a key that does not
        // match its certificate, refuses that load, and takes both at the next.
        for (pair, issued) in files.chunks(2).zip(&issued) {
            replace_atomically(&pair[1], issued.private_key_pem.as_bytes(), true)?;
            replace_atomically(&pair[0], issued.certificate_pem.as_bytes(), false)?;
        }
    } else {
        for (pair, issued) in files.chunks(2).zip(&issued) {
            write_certified(&pair[0], &pair[1], issued)?;
        }
    }
    let subject = identity.to_string();
    printer.print(json!({ "identity": subject, "days": days, "files": paths(&files) }), || {
        render::table(
            &["IDENTITY", "DAYS", "CERTIFICATE", "KEY"],
            vec![vec![subject.clone(), days.to_string(), path(&files[0]), path(&files[1])]],
        )
    });
    Ok(())
}

fn load_ca(dir: &Path) -> Result<ClusterCa, Failure> {
    let read = |name: &str| {
        let file = dir.join(name);
        fs::read_to_string(&file).map_err(|error| {
            usage(format!(
                "cannot read {} ({error}); make the CA with `tallyctl certs init --dir {}`",
                file.display(),
                dir.display()
            ))
        })
    };
    let cluster_text = read("cluster-id")?;
    let cluster = ClusterId::from_hex(cluster_text.trim())
        .ok_or_else(|| usage(format!("{}: not a cluster id (32 hex digits)", dir.join("cluster-id").display())))?;
    ClusterCa::from_pem(cluster, &read("ca.pem")?, &read("ca.key")?).map_err(|error| usage(error.to_string()))
}

/// The fallback (ECDSA P-256) CA, when `certs init` made one (it always does since it exists).
fn load_fallback_ca(dir: &Path, cluster: ClusterId) -> Result<Option<FallbackCa>, Failure> {
    let (certificate, key) = (dir.join(FALLBACK_CA_FILE), dir.join(FALLBACK_CA_KEY_FILE));
    if !certificate.exists() {
        return Ok(None);
    }
    let read = |file: &Path| {
        fs::read_to_string(file).map_err(|error| usage(format!("cannot read {}: {error}", file.display())))
    };
    FallbackCa::from_pem(cluster, &read(&certificate)?, &read(&key)?)
        .map(Some)
        .map_err(|error| usage(error.to_string()))
}

fn write_certified(certificate: &Path, key: &Path, certified: &CertifiedKey) -> Result<(), Failure> {
    write_new(key, certified.private_key_pem.as_bytes(), true)?;
    write_new(certificate, certified.certificate_pem.as_bytes(), false)
}

fn path(file: &Path) -> String {
    file.display().to_string()
}

fn paths(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|file| path(file)).collect()
}

/// Adds `certificate` to the CA's revocation list in `dir`, and its fallback sibling
/// (`<name>-ecdsa.pem`, when there is one) to the fallback CA's, keeping what each named before,
/// under the next list number.
fn revoke(printer: &Printer, dir: &Path, certificate: &Path) -> Result<(), Failure> {
    let ca = load_ca(dir)?;
    let (identity, serial) = read_for_revocation(certificate, &ca.cluster())?;
    let list_file = dir.join(REVOCATION_LIST_FILE);
    let entries =
        add_to_list(&list_file, &serial, |number, revoked| ca.revocation_list(number, revoked)).map_err(|failure| {
            Failure { message: format!("{} ({identity}): {}", certificate.display(), failure.message), ..failure }
        })?;
    let mut rows = vec![(identity.to_string(), hex(&serial), path(&list_file), entries)];
    let sibling = PathBuf::from(certificate.display().to_string().trim_end_matches(".pem").to_owned() + "-ecdsa.pem");
    if let (Some(fallback), true) = (load_fallback_ca(dir, ca.cluster())?, sibling.exists()) {
        let (sibling_identity, sibling_serial) = read_for_revocation(&sibling, &ca.cluster())?;
        if sibling_identity != identity {
            return Err(usage(format!("{} names {sibling_identity}, not {identity}", sibling.display())));
        }
        let fallback_list = dir.join(FALLBACK_REVOCATION_LIST_FILE);
        let entries =
            add_to_list(&fallback_list, &sibling_serial, |number, revoked| fallback.revocation_list(number, revoked))?;
        rows.push((identity.to_string(), hex(&sibling_serial), path(&fallback_list), entries));
    }
    let json_rows: Vec<_> = rows
        .iter()
        .map(|(subject, serial, list, entries)| json!({ "revoked": subject, "serial": serial, "revocation_list": list, "entries": entries }))
        .collect();
    printer.print(json!(json_rows), || {
        render::table(
            &["REVOKED", "SERIAL", "REVOCATION LIST", "ENTRIES"],
            rows.iter()
                .map(|(subject, serial, list, entries)| {
                    vec![subject.clone(), serial.clone(), list.clone(), entries.to_string()]
                })
                .collect(),
        )
    });
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The identity a certificate file names and its serial number.
fn read_for_revocation(certificate: &Path, cluster: &ClusterId) -> Result<(Identity, Vec<u8>), Failure> {
    let text =
        fs::read(certificate).map_err(|error| usage(format!("cannot read {}: {error}", certificate.display())))?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&text)
        .map_err(|error| usage(format!("{}: not a PEM certificate: {error}", certificate.display())))?;
    let identity = Identity::of_certificate(&der, cluster)
        .map_err(|error| usage(format!("{}: {error}", certificate.display())))?;
    let serial = serial_of(&der).map_err(|error| usage(error.to_string()))?;
    Ok((identity, serial))
}

/// Rewrites `list_file` (in one rename) with `serial` added under the next number; returns how
/// many certificates it names.
fn add_to_list(
    list_file: &Path,
    serial: &[u8],
    sign: impl Fn(u64, &[Revoked]) -> Result<String, tally_identity::certs::CertError>,
) -> Result<usize, Failure> {
    let (number, mut revoked) = match fs::read(list_file) {
        Ok(bytes) => read_revocation_list(list_file, &bytes)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => (0, Vec::new()),
        Err(error) => return Err(failed(format!("cannot read {}: {error}", list_file.display()))),
    };
    if revoked.iter().any(|entry| entry.serial == serial) {
        return Err(usage(format!("already revoked in {}", list_file.display())));
    }
    revoked.push(Revoked { serial: serial.to_vec(), revoked_at: time::OffsetDateTime::now_utc() });
    let list = sign(number + 1, &revoked).map_err(|error| failed(error.to_string()))?;
    replace_atomically(list_file, list.as_bytes(), false)?;
    Ok(revoked.len())
}

/// The number and entries of an existing revocation list.
fn read_revocation_list(file: &Path, pem_bytes: &[u8]) -> Result<(u64, Vec<Revoked>), Failure> {
    let damaged = |detail: String| failed(format!("{} is not a revocation list: {detail}", file.display()));
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem_bytes)
        .map_err(|error| damaged(error.to_string()))?;
    let (_, list) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|error| damaged(error.to_string()))?;
    let number = list
        .crl_number()
        .and_then(|number| u64::try_from(number.clone()).ok())
        .ok_or_else(|| damaged("it has no list number".into()))?;
    let revoked = list
        .iter_revoked_certificates()
        .map(|entry| Revoked {
            serial: entry.raw_serial().to_vec(),
            revoked_at: time::OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        })
        .collect();
    Ok((number, revoked))
}

/// Prints what `certificate` says, for an operator checking what a replica or client presents.
fn show(printer: &Printer, certificate: &Path) -> Result<(), Failure> {
    let text =
        fs::read(certificate).map_err(|error| usage(format!("cannot read {}: {error}", certificate.display())))?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&text)
        .map_err(|error| usage(format!("{}: not a PEM certificate: {error}", certificate.display())))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|error| usage(format!("{}: not a certificate: {error}", certificate.display())))?;
    let algorithm = match parsed.public_key().algorithm.algorithm.to_id_string().as_str() {
        "2.16.840.1.101.3.4.3.18" => "ML-DSA-65".to_owned(),
        "2.16.840.1.101.3.4.3.19" => "ML-DSA-87".to_owned(),
        "1.2.840.10045.2.1" => "ECDSA P-256".to_owned(),
        other => other.to_owned(),
    };
    let (identity, cluster) = match Identity::cluster_of_certificate(&der) {
        Ok(cluster) => {
            let identity = Identity::of_certificate(&der, &cluster).map_err(|error| usage(error.to_string()))?;
            (identity.to_string(), cluster.to_string())
        }
        // A CA names no identity; its subject says which cluster it is the CA of.
        Err(_) => (format!("CA: {}", parsed.subject()), String::new()),
    };
    let not_before = parsed.validity().not_before.timestamp();
    let not_after = parsed.validity().not_after.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let days_left = (not_after - now).div_euclid(24 * 3600);
    let date = |unix: i64| {
        time::OffsetDateTime::from_unix_timestamp(unix)
            .ok()
            .and_then(|moment| moment.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| unix.to_string())
    };
    let serial = hex(parsed.raw_serial());
    let (not_before, not_after) = (date(not_before), date(not_after));
    let expired = days_left < 0;
    printer.print(
        json!({
            "identity": identity, "cluster_id": cluster, "algorithm": algorithm, "serial": serial,
            "not_before": not_before, "not_after": not_after, "days_left": days_left, "expired": expired,
        }),
        || {
            render::table(
                &["IDENTITY", "ALGORITHM", "NOT AFTER", "DAYS LEFT", "SERIAL"],
                vec![vec![
                    identity.clone(),
                    algorithm.clone(),
                    not_after.clone(),
                    days_left.to_string(),
                    serial.clone(),
                ]],
            )
        },
    );
    Ok(())
}
