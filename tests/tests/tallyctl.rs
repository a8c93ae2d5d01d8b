//! `tallyctl` against real `tally-node` processes: the JSON of every command, and the exit codes
//! and messages of bad arguments, rejected events and an unreachable cluster.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_tests::{LocalCluster, Settings, Target, serialised, tallyctl_binary};

const LEADER_WITHIN: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

fn tallyctl(target: &Target, arguments: &[&str]) -> Run {
    let output = Command::new(tallyctl_binary())
        .args(["--endpoints", &target.endpoints, "--timeout", "15"])
        .args(arguments)
        .env_remove("TALLY_ENDPOINTS")
        .envs(target.environment.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("tallyctl runs");
    Run {
        code: output.status.code().expect("tallyctl exits"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a command that must succeed with JSON output, and returns its JSON.
fn json(endpoints: &Target, arguments: &[&str]) -> Value {
    let mut all = arguments.to_vec();
    all.extend(["--output", "json"]);
    let run = tallyctl(endpoints, &all);
    assert_eq!(run.code, 0, "tallyctl {arguments:?} failed: {}{}", run.stdout, run.stderr);
    run.json()
}

fn result_of(value: &Value, index: usize) -> &str {
    value["results"][index]["result"].as_str().unwrap_or_else(|| panic!("no result {index} in {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_stable_json() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    cluster.wait_for_leader(LEADER_WITHIN).await;
    let endpoints = &cluster.target();

    let status = json(endpoints, &["cluster", "status"]);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let leader = status["leader_id"].as_u64().unwrap();
    assert!((1..=3).contains(&leader));
    for node in nodes {
        for field in
            ["id", "address", "site", "role", "voter", "term", "last_log_index", "applied_index", "digest", "reachable"]
        {
            assert!(!node[field].is_null(), "cluster status lacks {field}: {node}");
        }
        assert_eq!(node["digest"].as_str().unwrap().len(), 64);
    }
    let members = json(endpoints, &["cluster", "members"]);
    assert_eq!(members["voters"], serde_json::json!([1, 2, 3]));
    assert_eq!(members["learners"], serde_json::json!([]));

    let created = json(endpoints, &["ledger", "create", "--id", "978", "--currency", "EUR", "--scale", "2"]);
    assert_eq!(result_of(&created, 0), "ok");
    assert_eq!(created["results"][0]["id"], "978");
    let again = json(endpoints, &["ledger", "create", "--id", "978", "--currency", "EUR", "--scale", "2"]);
    assert_eq!(result_of(&again, 0), "exists", "a retry is a success");
    let ledgers = json(endpoints, &["ledger", "list"]);
    assert_eq!(ledgers["ledgers"][0]["currency"], "EUR");
    assert_eq!(ledgers["ledgers"][0]["scale"], 2);

    let account = ["account", "create", "--ledger", "978", "--code", "100"];
    let first =
        json(endpoints, &[&account[..], &["--id", "1", "--debits-must-not-exceed-credits", "--history"]].concat());
    assert_eq!(result_of(&first, 0), "ok");
    assert_eq!(result_of(&json(endpoints, &[&account[..], &["--id", "2"]].concat()), 0), "ok");
    let generated = json(endpoints, &account);
    let generated_id: u128 = generated["results"][0]["id"].as_str().unwrap().parse().unwrap();
    assert!(generated_id > 1 << 80, "a time-ordered id was made: {generated_id}");
    let one = json(endpoints, &["account", "get", "1"]);
    assert_eq!(one["id"], "1");
    assert_eq!(one["flags"], serde_json::json!(["debits_must_not_exceed_credits", "history"]));
    assert_eq!(one["credits_posted"], "0.00");
    assert_eq!(json(endpoints, &["account", "list", "--ledger", "978"])["accounts"].as_array().unwrap().len(), 3);

    let transfer = |id: &str, debit: &str, credit: &str, amount: &str| {
        [
            "transfer", "create", "--id", id, "--debit", debit, "--credit", credit, "--amount", amount, "--ledger",
            "978", "--code", "1",
        ]
        .map(str::to_owned)
    };
    let run = |arguments: &[String]| json(endpoints, &arguments.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(result_of(&run(&transfer("10", "2", "1", "50.00")), 0), "ok");
    let hold = [&transfer("11", "1", "2", "20.00")[..], &["--pending".into(), "--timeout-seconds".into(), "60".into()]]
        .concat();
    assert_eq!(result_of(&run(&hold), 0), "ok");
    assert_eq!(result_of(&json(endpoints, &["transfer", "post", "11", "--amount", "15.00", "--id", "12"]), 0), "ok");
    let voided = [&transfer("13", "1", "2", "5.00")[..], &["--pending".into()]].concat();
    assert_eq!(result_of(&run(&voided), 0), "ok");
    assert_eq!(result_of(&json(endpoints, &["transfer", "void", "13", "--id", "14"]), 0), "ok");
    let posted = json(endpoints, &["transfer", "get", "11"]);
    assert_eq!(posted["pending_status"], "posted");
    assert_eq!(posted["amount"], "20.00");
    assert_eq!(posted["flags"], serde_json::json!(["pending"]));

    let batch = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        batch.path(),
        r#"[{"id": "15", "debit": "2", "credit": "1", "amount": "10.00", "ledger": 978, "code": 1, "flags": ["linked"]},
            {"id": "16", "debit": "2", "credit": "1", "amount": "5.00", "ledger": 978, "code": 1}]"#,
    )
    .unwrap();
    let chain = json(endpoints, &["transfer", "create-batch", "--file", batch.path().to_str().unwrap()]);
    assert_eq!((result_of(&chain, 0), result_of(&chain, 1)), ("ok", "ok"));

    let listed = json(endpoints, &["transfer", "list", "--account", "1"]);
    let ids: Vec<&str> = listed["transfers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["10", "11", "12", "13", "14", "15", "16"]);
    let newest = json(endpoints, &["transfer", "list", "--ledger", "978", "--limit", "2", "--reversed"]);
    assert_eq!(newest["transfers"][0]["id"], "16");
    assert!(newest["cursor"].is_u64(), "a page that stopped early has a cursor: {newest}");
    let balance = json(endpoints, &["balance", "1"]);
    assert_eq!(balance["credits_posted"], "65.00");
    assert_eq!(balance["debits_posted"], "15.00");
    assert_eq!(balance["credit_balance"], "50.00");
    assert_eq!(balance["available_credit_balance"], "50.00");
    let history = json(endpoints, &["account", "history", "1"]);
    assert_eq!(history["balances"].as_array().unwrap().len(), 7, "one entry per change: {history}");

    let snapshot = json(endpoints, &["cluster", "snapshot", "--node-id", "2"]);
    assert_eq!(snapshot["snapshots"][0]["node_id"], 2);
    assert!(snapshot["snapshots"][0]["snapshot_index"].as_u64().unwrap() > 0);
    let target = if leader == 3 { 2 } else { 3 };
    let moved = json(endpoints, &["cluster", "transfer-leader", &target.to_string()]);
    assert_eq!(moved["leader_id"], target);

    // The cluster is secured: a membership change needs the operator's approval. Without one it is
    // refused before the cluster is asked to change anything.
    let learner = cluster.add_replica("b");
    let address = cluster.address(learner);
    let add_learner =
        ["cluster", "add-learner", "--node-id", &learner.to_string(), "--address", &address, "--site", "b"];
    let unapproved = tallyctl(endpoints, &add_learner);
    assert_eq!(unapproved.code, 2, "{}{}", unapproved.stdout, unapproved.stderr);
    assert!(unapproved.stderr.contains("needs 1 operator approval(s)"), "{}", unapproved.stderr);
    // One operator proposes it into a file, approves it (as a second operator would) and sends it.
    let proposal = cluster.certs().passphrase_file().with_file_name("add-learner.json");
    let proposal = proposal.to_str().unwrap();
    let proposed = json(endpoints, &[&add_learner[..], &["--out", proposal]].concat());
    assert!(proposed["summary"].as_str().unwrap().contains(&format!("add node {learner} at {address}")), "{proposed}");
    let operator_key = cluster.certs().operator_key_file();
    let passphrase = cluster.certs().passphrase_file();
    let operator =
        ["--operator", "1", "--key", operator_key.to_str().unwrap(), "--passphrase-file", passphrase.to_str().unwrap()];
    let approved = json(endpoints, &[&["registry", "approve", proposal][..], &operator].concat());
    assert_eq!(approved["approved_by"], serde_json::json!([1]));
    let added = json(endpoints, &["registry", "submit", proposal]);
    assert_eq!(added["membership"]["learners"], serde_json::json!([learner]), "{added}");
    assert_eq!(added["repeated"], false);
    let caught_up_by = Instant::now() + Duration::from_secs(60);
    loop {
        let status = json(endpoints, &["cluster", "status"]);
        let lag = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["id"] == learner)
            .map(|node| node["replication_lag"].clone());
        if lag.as_ref().and_then(Value::as_u64).is_some_and(|lag| lag <= 2) {
            break;
        }
        assert!(Instant::now() < caught_up_by, "the learner did not catch up: {lag:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Where one approval is enough, the operator approves and sends a change at once.
    let operator = [
        "--operator",
        "1",
        "--operator-key",
        operator_key.to_str().unwrap(),
        "--passphrase-file",
        passphrase.to_str().unwrap(),
    ];
    let promoted = json(endpoints, &[&["cluster", "promote", &learner.to_string()][..], &operator].concat());
    assert_eq!(promoted["voters"], serde_json::json!([1, 2, 3, learner]));
    let remove = ["cluster", "remove", &learner.to_string()];
    let demoted = json(endpoints, &[&remove[..], &["--keep-as-learner"], &operator].concat());
    assert_eq!(demoted["voters"], serde_json::json!([1, 2, 3]));
    assert_eq!(demoted["learners"], serde_json::json!([learner]));
    let removed = json(endpoints, &[&remove[..], &operator].concat());
    assert_eq!(removed["voters"], serde_json::json!([1, 2, 3]));
    assert_eq!(removed["learners"], serde_json::json!([]));
    // The first proposal, sent again once the learner is gone, adds nothing: it was approved for
    // the membership of its day, which is no longer in force.
    let replayed = tallyctl(endpoints, &["registry", "submit", proposal]);
    assert_eq!(replayed.code, 1, "{}{}", replayed.stdout, replayed.stderr);
    assert!(replayed.stderr.contains("proposed against the membership of log index"), "{}", replayed.stderr);
    let members = json(endpoints, &["cluster", "members"]);
    assert_eq!(members["learners"], serde_json::json!([]), "{members}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_rejections_and_an_unreachable_cluster_have_their_exit_codes() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    cluster.wait_for_leader(LEADER_WITHIN).await;
    let endpoints = &cluster.target();
    json(endpoints, &["ledger", "create", "--id", "978", "--currency", "EUR", "--scale", "2"]);
    json(
        endpoints,
        &["account", "create", "--id", "1", "--ledger", "978", "--code", "1", "--debits-must-not-exceed-credits"],
    );
    json(endpoints, &["account", "create", "--id", "2", "--ledger", "978", "--code", "1"]);

    // Usage errors: 2, naming what was wrong.
    let transfer = ["transfer", "create", "--credit", "2", "--amount", "1.00", "--ledger", "978", "--code", "1"];
    let bad_id = tallyctl(endpoints, &[&transfer[..], &["--debit", "alice"]].concat());
    assert_eq!(bad_id.code, 2, "{}", bad_id.stderr);
    assert!(bad_id.stderr.contains("--debit") && bad_id.stderr.contains("alice"), "{}", bad_id.stderr);
    let missing = tallyctl(endpoints, &["transfer", "create", "--debit", "1"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("--credit"), "{}", missing.stderr);
    let unknown = tallyctl(endpoints, &["ledger", "delete"]);
    assert_eq!(unknown.code, 2);
    let without_amount = ["transfer", "create", "--debit", "1", "--credit", "2", "--ledger", "978", "--code", "1"];
    let bad_amount = tallyctl(endpoints, &[&without_amount[..], &["--amount", "ten"]].concat());
    assert_eq!(bad_amount.code, 2);
    assert!(bad_amount.stderr.contains("--amount: \"ten\" is not a decimal amount"), "{}", bad_amount.stderr);
    // Amounts outside the wire's grammar are an operator's typo, refused before anything is sent:
    // `1e5` would otherwise have moved 100,000.00.
    for typo in ["-5.00", "1e5", "1,000.00", "+5"] {
        let refused = tallyctl(
            endpoints,
            &[
                "transfer",
                "create",
                "--debit",
                "2",
                "--credit",
                "1",
                &format!("--amount={typo}"),
                "--ledger",
                "978",
                "--code",
                "1",
            ],
        );
        assert_eq!(refused.code, 2, "{typo}: {}{}", refused.stdout, refused.stderr);
        assert!(
            refused.stderr.contains("--amount") && refused.stderr.contains("no sign, exponent"),
            "{}",
            refused.stderr
        );
    }
    let too_large =
        tallyctl(endpoints, &[&without_amount[..], &["--amount", "79228162514264337593543950336"]].concat());
    assert_eq!(too_large.code, 2, "{}", too_large.stderr);
    assert!(too_large.stderr.contains("too large"), "{}", too_large.stderr);

    // In a batch file too; and a JSON number, read as a binary float, is no amount either.
    let file = tempfile::NamedTempFile::new().unwrap();
    for (amount, expected) in [(r#""1e5""#, "no sign, exponent"), ("100000", "write it as a string")] {
        let text = format!(r#"[{{"debit": "1", "credit": "2", "amount": {amount}, "ledger": 978, "code": 1}}]"#);
        std::fs::write(file.path(), text).unwrap();
        let refused = tallyctl(endpoints, &["transfer", "create-batch", "--file", file.path().to_str().unwrap()]);
        assert_eq!(refused.code, 2, "{amount}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("transfer 0: amount") && refused.stderr.contains(expected),
            "{}",
            refused.stderr
        );
    }

    // Rejected events and missing records: 3, with the result code and its meaning.
    let overdraft = tallyctl(endpoints, &[&transfer[..], &["--debit", "1", "--output", "json"]].concat());
    assert_eq!(overdraft.code, 3, "{}", overdraft.stderr);
    assert_eq!(result_of(&overdraft.json(), 0), "exceeds_credits");
    assert!(
        overdraft.stderr.contains("exceeds_credits") && overdraft.stderr.contains("insufficient funds"),
        "{}",
        overdraft.stderr
    );
    let too_fine = tallyctl(
        endpoints,
        &["transfer", "create", "--debit", "2", "--credit", "1", "--amount", "0.001", "--ledger", "978", "--code", "1"],
    );
    assert_eq!(too_fine.code, 3, "{}{}", too_fine.stdout, too_fine.stderr);
    assert!(too_fine.stderr.contains("amount_scale_exceeds_ledger_scale"), "{}", too_fine.stderr);
    let missing_account = tallyctl(endpoints, &["account", "get", "424242"]);
    assert_eq!(missing_account.code, 3);
    assert!(missing_account.stderr.contains("account 424242 was not found"), "{}", missing_account.stderr);
    assert_eq!(json(endpoints, &["balance", "1"])["debits_posted"], "0.00", "nothing was applied");

    // An unreachable cluster: 4 within the timeout, naming each endpoint.
    let unused: Vec<String> = (0..2)
        .map(|_| {
            format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
        })
        .collect();
    let started = Instant::now();
    let output = Command::new(tallyctl_binary())
        .args(["--endpoints", &unused.join(","), "--timeout", "1", "cluster", "status"])
        .envs(endpoints.environment.iter().map(|(name, value)| (name, value)))
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(unused.iter().all(|address| stderr.contains(address.as_str())), "{stderr}");

    let completions = tallyctl(endpoints, &["completions", "bash"]);
    assert_eq!(completions.code, 0);
    assert!(completions.stdout.contains("tallyctl") && completions.stdout.contains("transfer"));
}
