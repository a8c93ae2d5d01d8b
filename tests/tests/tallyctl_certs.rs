//! `tallyctl certs init` and `issue` make a cluster CA and certificates that chain to it, name
//! the identity asked for, keep their keys private, and never overwrite a file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::aws_lc_rs;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, client::WebPkiServerVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use tally_identity::ClusterId;
use tally_identity::certs::Identity;
use tally_tests::tallyctl_binary;
use x509_parser::prelude::FromDer;

fn tallyctl(arguments: &[&str]) -> (i32, String, String) {
    let output = Command::new(tallyctl_binary()).args(["--output", "json"]).args(arguments).output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap(), text(&output.stdout), text(&output.stderr))
}

fn certificate(file: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(file).unwrap_or_else(|error| panic!("{}: {error}", file.display()))
}

#[test]
fn init_and_issue_make_certificates_that_chain_to_the_ca_and_name_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let cluster_hex = "0123456789abcdef0123456789abcdef";
    let (code, stdout, stderr) = tallyctl(&["certs", "init", "--dir", certs_arg, "--cluster-id", cluster_hex]);
    assert_eq!(code, 0, "{stderr}");
    let made: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(made["cluster_id"], cluster_hex);
    let (code, _, stderr) = tallyctl(&[
        "certs",
        "issue",
        "--dir",
        certs_arg,
        "replica",
        "3",
        "--address",
        "127.0.0.1",
        "--address",
        "node-3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = tallyctl(&["certs", "issue", "--dir", certs_arg, "--days", "30", "principal", "9"]);
    assert_eq!(code, 0, "{stderr}");

    let cluster =
        ClusterId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
    let replica = certificate(&certs.join("replica-3.pem"));
    let principal = certificate(&certs.join("principal-9.pem"));
    assert_eq!(Identity::of_certificate(&replica, &cluster), Ok(Identity::Replica(3)));
    assert_eq!(Identity::of_certificate(&principal, &cluster), Ok(Identity::Principal(9)));

    let mut roots = RootCertStore::empty();
    roots.add(certificate(&certs.join("ca.pem"))).unwrap();
    let roots = Arc::new(roots);
    let provider = Arc::new(aws_lc_rs::default_provider());
    let now = UnixTime::now();
    let clients =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider)).build().unwrap();
    assert!(clients.verify_client_cert(&principal, &[], now).is_ok(), "a principal's certificate is a client's");
    assert!(clients.verify_client_cert(&replica, &[], now).is_ok(), "a replica is a client of its peers");
    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider).build().unwrap();
    let verify_server = |certificate: &CertificateDer<'_>, name: &str| {
        servers.verify_server_cert(certificate, &[], &ServerName::try_from(name.to_owned()).unwrap(), &[], now)
    };
    assert!(verify_server(&replica, "127.0.0.1").is_ok(), "a replica serves at its addresses");
    assert!(verify_server(&replica, "node-3").is_ok());
    assert!(verify_server(&replica, "node-4").is_err(), "and nowhere else");
    assert!(verify_server(&principal, "127.0.0.1").is_err(), "a principal's certificate is no server's");

    for key in ["ca.key", "replica-3.key", "principal-9.key"] {
        let mode = std::fs::metadata(certs.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key} is readable by its owner only");
    }
}

#[test]
fn nothing_is_overwritten_and_bad_arguments_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let (code, _, stderr) = tallyctl(&["certs", "issue", "--dir", certs_arg, "principal", "9"]);
    assert_eq!(code, 2, "no CA yet: {stderr}");
    assert!(stderr.contains("certs init"), "{stderr}");
    assert_eq!(tallyctl(&["certs", "init", "--dir", certs_arg]).0, 0);
    let ca_before = std::fs::read(certs.join("ca.key")).unwrap();
    let (code, _, stderr) = tallyctl(&["certs", "init", "--dir", certs_arg]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exists already; nothing was written"), "{stderr}");
    assert_eq!(std::fs::read(certs.join("ca.key")).unwrap(), ca_before, "the CA key is untouched");

    assert_eq!(tallyctl(&["certs", "issue", "--dir", certs_arg, "principal", "9"]).0, 0);
    let key_before = std::fs::read(certs.join("principal-9.key")).unwrap();
    let (code, _, stderr) = tallyctl(&["certs", "issue", "--dir", certs_arg, "principal", "9"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(std::fs::read(certs.join("principal-9.key")).unwrap(), key_before);

    let (code, _, stderr) = tallyctl(&["certs", "issue", "--dir", certs_arg, "--days", "0", "principal", "8"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--days: 0"), "{stderr}");
    let (code, _, stderr) =
        tallyctl(&["certs", "init", "--dir", dir.path().join("other").to_str().unwrap(), "--cluster-id", "xyz"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not 32 hex digits"), "{stderr}");
    assert!(!certs.join("principal-8.pem").exists());
}

#[test]
fn keys_generate_writes_a_sealed_key_and_its_public_key_and_show_reads_the_id_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("principal-9");
    let key_arg = key.to_str().unwrap();
    let run = |arguments: &[&str], passphrase: Option<&str>| {
        let mut command = Command::new(tallyctl_binary());
        command.args(["--output", "json"]).args(arguments).env_remove("TALLY_KEY_PASSPHRASE");
        if let Some(passphrase) = passphrase {
            command.env("TALLY_KEY_PASSPHRASE", passphrase);
        }
        let output = command.output().unwrap();
        (
            output.status.code().unwrap(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = run(&["keys", "generate", "--out", key_arg], None);
    assert_eq!(code, 2, "no passphrase, no key");
    assert!(stderr.contains("TALLY_KEY_PASSPHRASE"), "{stderr}");
    assert!(!key.exists());
    let (code, stdout, stderr) = run(&["keys", "generate", "--out", key_arg], Some("a long enough passphrase"));
    assert_eq!(code, 0, "{stderr}");
    let made: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(made["algorithm"], "ML-DSA-65");
    let sealed = std::fs::read_to_string(&key).unwrap();
    let opened = tally_identity::key_file::open(&sealed, "a long enough passphrase").unwrap();
    use tally_identity::Signer;
    assert_eq!(made["key_id"], opened.public_key().key_id().to_string(), "the id printed is the sealed key's");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let (code, stdout, _) = run(&["keys", "show", &format!("{key_arg}.pub")], None);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["key_id"], made["key_id"], "the public key file names the same key");
    let (code, _, stderr) = run(&["keys", "generate", "--out", key_arg], Some("a long enough passphrase"));
    assert_eq!(code, 2);
    assert!(stderr.contains("exists already"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), sealed, "the key file is untouched");
    let (code, _, stderr) = run(&["keys", "show", key_arg], None);
    assert_eq!(code, 2, "a sealed private key is no public key file");
    assert!(stderr.contains("not a Tally public key file"), "{stderr}");
}

#[test]
fn genesis_init_names_the_cluster_and_its_operators_and_show_gives_the_same_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |arguments: &[&str]| {
        let output = Command::new(tallyctl_binary())
            .args(["--output", "json"])
            .args(arguments)
            .env("TALLY_KEY_PASSPHRASE", "operators keep this one safe")
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code().unwrap(), text(&output.stdout), text(&output.stderr))
    };
    assert_eq!(run(&["certs", "init", "--dir", &path("certs"), "--cluster-id", &"ab".repeat(16)]).0, 0);
    for (name, algorithm) in [("operator-1", "ml-dsa-87"), ("operator-2", "ml-dsa-87"), ("principal-9", "ml-dsa-65")] {
        let (code, _, stderr) = run(&["keys", "generate", "--out", &path(name), "--algorithm", algorithm]);
        assert_eq!(code, 0, "{stderr}");
    }
    let cluster_file = path("certs/cluster-id");
    let operator = |id: u64, name: &str| format!("{id}={}.pub", path(name));
    let init = |out: &str, operators: &[String], required: &str| {
        let mut arguments =
            vec!["genesis", "init", "--out", out, "--cluster-id-file", &cluster_file, "--required", required];
        for operator in operators {
            arguments.extend(["--operator", operator.as_str()]);
        }
        run(&arguments)
    };
    let two = [operator(1, "operator-1"), operator(2, "operator-2")];
    let (code, stdout, stderr) = init(&path("genesis.toml"), &two, "2");
    assert_eq!(code, 0, "{stderr}");
    let made: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(made["cluster_id"], "ab".repeat(16));
    assert_eq!(made["operator_signatures_required"], 2);
    assert_eq!(made["operators"].as_array().unwrap().len(), 2);
    let (code, stdout, _) = run(&["genesis", "show", &path("genesis.toml")]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["fingerprint"], made["fingerprint"], "the file holds what init made");

    let (code, _, stderr) = init(&path("genesis.toml"), &two, "2");
    assert_eq!(code, 2);
    assert!(stderr.contains("exists already"), "{stderr}");
    let (code, _, stderr) = init(&path("other.toml"), &two, "3");
    assert_eq!(code, 2);
    assert!(stderr.contains("operator_signatures_required must be between 1 and the 2 operators, not 3"), "{stderr}");
    let (code, _, stderr) = init(&path("other.toml"), &[operator(1, "operator-1"), operator(9, "principal-9")], "1");
    assert_eq!(code, 2);
    assert!(stderr.contains("operator 9's key is ML-DSA-65; operators sign with ML-DSA-87"), "{stderr}");
    assert!(!dir.path().join("other.toml").exists(), "a refused genesis writes nothing");
}

#[test]
fn revoke_lists_a_certificate_and_its_fallback_and_rotate_replaces_a_pair_keeping_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    assert_eq!(tallyctl(&["certs", "init", "--dir", certs_arg]).0, 0);
    assert_eq!(tallyctl(&["certs", "issue", "--dir", certs_arg, "principal", "6"]).0, 0);
    assert_eq!(tallyctl(&["certs", "issue", "--dir", certs_arg, "principal", "7"]).0, 0);
    let cluster = Identity::cluster_of_certificate(&certificate(&certs.join("principal-6.pem"))).unwrap();

    let files = tally_identity::tls::TlsFiles::in_directory(&certs, Identity::Principal(6));
    let credentials = tally_identity::tls::Credentials::load(&files, Some(&cluster));
    assert!(credentials.is_ok(), "principal 6 loads before it is revoked: {credentials:?}");

    let revoked_file = certs.join("principal-6.pem");
    let (code, stdout, stderr) = tallyctl(&["certs", "revoke", "--dir", certs_arg, revoked_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "the ML-DSA certificate and its ECDSA fallback: {rows:?}");
    assert!(rows.iter().all(|row| row["revoked"] == "principal 6" && row["entries"] == 1), "{rows:?}");
    // Each list names the serial of its own CA's certificate.
    for (list, certificate_file) in [("ca.crl", "principal-6.pem"), ("ca-ecdsa.crl", "principal-6-ecdsa.pem")] {
        let der = rustls_pki_types::CertificateRevocationListDer::from_pem_file(certs.join(list)).unwrap();
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        let serials: Vec<Vec<u8>> =
            parsed.iter_revoked_certificates().map(|entry| entry.raw_serial().to_vec()).collect();
        let serial = tally_identity::certs::serial_of(&certificate(&certs.join(certificate_file))).unwrap();
        assert_eq!(serials, vec![serial], "{list}");
    }
    let (code, _, stderr) = tallyctl(&["certs", "revoke", "--dir", certs_arg, revoked_file.to_str().unwrap()]);
    assert_eq!(code, 2, "a second revocation is refused");
    assert!(stderr.contains("already revoked"), "{stderr}");
    // A second certificate joins the list; the first stays.
    let (code, stdout, _) =
        tallyctl(&["certs", "revoke", "--dir", certs_arg, certs.join("principal-7.pem").to_str().unwrap()]);
    assert_eq!(code, 0);
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    assert!(rows.as_array().unwrap().iter().all(|row| row["entries"] == 2), "{rows}");

    // `show` says what each file is, for an operator checking expiry.
    let show = |file: &str| {
        let (code, stdout, stderr) = tallyctl(&["certs", "show", certs.join(file).to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let shown = show("principal-6.pem");
    assert_eq!((shown["identity"].as_str(), shown["algorithm"].as_str()), (Some("principal 6"), Some("ML-DSA-65")));
    assert_eq!(shown["cluster_id"], cluster.to_string());
    assert!(matches!(shown["days_left"].as_i64(), Some(89 | 90)), "{shown}");
    assert_eq!(shown["expired"], false);
    assert_eq!(show("principal-6-ecdsa.pem")["algorithm"], "ECDSA P-256");
    let ca = show("ca.pem");
    assert_eq!(ca["algorithm"], "ML-DSA-87");
    assert!(ca["identity"].as_str().unwrap().starts_with("CA: "), "{ca}");
    let (code, _, stderr) = tallyctl(&["certs", "show", certs.join("ca.crl").to_str().unwrap()]);
    assert_eq!(code, 2, "a revocation list is not a certificate");
    assert!(stderr.contains("not a PEM certificate"), "{stderr}");

    let before = std::fs::read_to_string(certs.join("principal-6.pem")).unwrap();
    let (code, _, stderr) = tallyctl(&["certs", "rotate", "--dir", certs_arg, "principal", "6"]);
    assert_eq!(code, 0, "{stderr}");
    let after = std::fs::read_to_string(certs.join("principal-6.pem")).unwrap();
    assert_ne!(before, after, "a new certificate");
    let kept: Vec<_> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("principal-6.pem.") && name.ends_with(".old"))
        .collect();
    assert_eq!(kept.len(), 1, "the old certificate is kept: {kept:?}");
    let files = tally_identity::tls::TlsFiles::in_directory(&certs, Identity::Principal(6));
    let rotated = tally_identity::tls::Credentials::load(&files, Some(&cluster)).unwrap();
    assert_eq!(rotated.identity(), Identity::Principal(6), "the new key matches the new certificate");
    let (code, _, stderr) = tallyctl(&["certs", "rotate", "--dir", certs_arg, "principal", "8"]);
    assert_eq!(code, 2, "rotating what was never issued is refused");
    assert!(stderr.contains("issue it first"), "{stderr}");
}

#[test]
fn registry_propose_and_approve_make_a_proposal_file_each_operator_signs_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |arguments: &[&str]| {
        let output = Command::new(tallyctl_binary())
            .args(["--output", "json"])
            .args(arguments)
            .env("TALLY_KEY_PASSPHRASE", "operators keep this one safe")
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code().unwrap(), text(&output.stdout), text(&output.stderr))
    };
    for (name, algorithm) in [("operator-1", "ml-dsa-87"), ("operator-2", "ml-dsa-87"), ("principal-9", "ml-dsa-65")] {
        assert_eq!(run(&["keys", "generate", "--out", &path(name), "--algorithm", algorithm]).0, 0);
    }
    let operators = [format!("1={}.pub", path("operator-1")), format!("2={}.pub", path("operator-2"))];
    std::fs::write(path("cluster-id"), format!("{}\n", "cd".repeat(16))).unwrap();
    let cluster_file = path("cluster-id");
    let genesis_arguments = ["genesis", "init", "--out", &path("genesis.toml"), "--cluster-id-file", &cluster_file];
    let mut arguments: Vec<&str> = genesis_arguments.to_vec();
    arguments.extend(["--operator", &operators[0], "--operator", &operators[1], "--required", "2"]);
    let (code, _, stderr) = run(&arguments);
    assert_eq!(code, 0, "{stderr}");

    let key = format!("{}.pub", path("principal-9"));
    let propose = [
        "registry",
        "propose",
        "--genesis",
        &path("genesis.toml"),
        "--out",
        &path("change.json"),
        "register",
        "--principal",
        "9",
        "--key",
        &key,
        "--permission",
        "create-transfers",
        "--ledger",
        "978",
        "--debit-code",
        "100",
    ];
    let (code, stdout, stderr) = run(&propose);
    assert_eq!(code, 0, "{stderr}");
    let proposed: Value = serde_json::from_str(&stdout).unwrap();
    assert!(proposed["summary"].as_str().unwrap().contains("register principal 9"), "{stdout}");
    assert_eq!(proposed["approved_by"], serde_json::json!([]));
    let (code, _, stderr) = run(&propose);
    assert_eq!(code, 2, "a proposal file is never overwritten");
    assert!(stderr.contains("exists already"), "{stderr}");

    let approve = |operator: &str, key: &str| {
        run(&["registry", "approve", &path("change.json"), "--operator", operator, "--key", &path(key)])
    };
    let (code, stdout, stderr) = approve("1", "operator-1");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["approved_by"], serde_json::json!([1]));
    let (code, _, stderr) = approve("1", "operator-1");
    assert_eq!(code, 2);
    assert!(stderr.contains("operator 1 has approved this change already"), "{stderr}");
    let (code, _, stderr) = approve("2", "principal-9");
    assert_eq!(code, 2);
    assert!(stderr.contains("operators approve with their ML-DSA-87 key"), "{stderr}");
    let (code, stdout, stderr) = approve("2", "operator-2");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["approved_by"], serde_json::json!([1, 2]));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path("change.json")).unwrap()).unwrap();
    assert_eq!(file["cluster_id"], "cd".repeat(16), "the proposal names the genesis' cluster");
    assert_eq!(file["approvals"].as_array().unwrap().len(), 2);
}
