//! How tallyctl prints records: a table for people, JSON for scripts. The JSON is stable: ids and
//! amounts are strings (128-bit ids and exact decimals do not fit JSON numbers), timestamps and
//! indexes are numbers, and absent values are `null`.

use comfy_table::{Table, presets};
use serde_json::{Value, json};
use tally_client::{
    Account, AccountBalance, ClusterStatus, Ledger, Membership, NodeStatus, ResultCode, Transfer, role_name,
};

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING).set_header(header.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    table.to_string()
}

pub fn node_json(node: &NodeStatus) -> Value {
    json!({
        "id": node.id,
        "address": node.address,
        "site": node.site,
        "role": role_name(node.role),
        "voter": node.voter,
        "term": node.term,
        "last_log_index": node.last_log_index,
        "applied_index": node.applied_index,
        "replication_lag": node.replication_lag,
        "clock_offset_ms": node.clock_offset_ms,
        "digest": node.digest.iter().map(|byte| format!("{byte:02x}")).collect::<String>(),
        "leader_id": node.leader_id,
        "reachable": node.reachable,
        "error": node.error,
    })
}

pub fn cluster_status_json(status: &ClusterStatus) -> Value {
    json!({ "leader_id": status.leader_id, "nodes": status.nodes.iter().map(node_json).collect::<Vec<_>>() })
}

pub fn cluster_status_table(status: &ClusterStatus) -> String {
    let rows = status
        .nodes
        .iter()
        .map(|node| {
            if !node.reachable {
                let mut row = vec![node.id.to_string(), node.site.clone(), "unreachable".into()];
                row.extend(["-", "-", "-", "-", "-", "-"].map(String::from));
                row.push(node.error.clone());
                return row;
            }
            vec![
                node.id.to_string(),
                node.site.clone(),
                if node.voter {
                    role_name(node.role).to_owned()
                } else {
                    format!("{} (learner)", role_name(node.role))
                },
                node.term.to_string(),
                node.last_log_index.to_string(),
                node.applied_index.to_string(),
                node.replication_lag.map_or_else(|| "-".to_owned(), |lag| lag.to_string()),
                node.clock_offset_ms.map_or_else(|| "-".to_owned(), |offset| format!("{offset:+} ms")),
                node.digest_prefix(),
                node.address.clone(),
            ]
        })
        .collect();
    table(&["ID", "SITE", "ROLE", "TERM", "LAST INDEX", "APPLIED", "LAG", "CLOCK", "DIGEST", "ADDRESS"], rows)
}

pub fn membership_json(membership: &Membership) -> Value {
    json!({
        "leader_id": membership.leader_id,
        "voters": membership.voters,
        "learners": membership.learners,
        "log_index": membership.log_index,
    })
}

pub fn ledger_json(ledger: &Ledger) -> Value {
    json!({
        "id": ledger.id,
        "currency": ledger.currency,
        "scale": ledger.scale,
        "user_data_128": ledger.user_data_128.to_string(),
        "user_data_64": ledger.user_data_64,
        "user_data_32": ledger.user_data_32,
        "timestamp": ledger.timestamp,
    })
}

pub fn ledgers_table(ledgers: &[Ledger]) -> String {
    let rows = ledgers
        .iter()
        .map(|ledger| {
            vec![ledger.id.to_string(), ledger.currency.clone(), ledger.scale.to_string(), ledger.timestamp.to_string()]
        })
        .collect();
    table(&["ID", "CURRENCY", "SCALE", "CREATED"], rows)
}

fn account_flag_names(account: &Account) -> Vec<&'static str> {
    use tally_client::AccountFlags as F;
    [
        (F::LINKED, "linked"),
        (F::DEBITS_MUST_NOT_EXCEED_CREDITS, "debits_must_not_exceed_credits"),
        (F::CREDITS_MUST_NOT_EXCEED_DEBITS, "credits_must_not_exceed_debits"),
        (F::HISTORY, "history"),
        (F::CLOSED, "closed"),
    ]
    .into_iter()
    .filter(|(flag, _)| account.flags.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

pub fn transfer_flag_names(flags: tally_client::TransferFlags) -> Vec<&'static str> {
    use tally_client::TransferFlags as F;
    [
        (F::LINKED, "linked"),
        (F::PENDING, "pending"),
        (F::POST_PENDING_TRANSFER, "post_pending_transfer"),
        (F::VOID_PENDING_TRANSFER, "void_pending_transfer"),
        (F::BALANCING_DEBIT, "balancing_debit"),
        (F::BALANCING_CREDIT, "balancing_credit"),
        (F::CLOSING_DEBIT, "closing_debit"),
        (F::CLOSING_CREDIT, "closing_credit"),
    ]
    .into_iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

pub fn account_json(account: &Account) -> Value {
    json!({
        "id": account.id.to_string(),
        "ledger": account.ledger,
        "code": account.code,
        "flags": account_flag_names(account),
        "user_data_128": account.user_data_128.to_string(),
        "user_data_64": account.user_data_64,
        "user_data_32": account.user_data_32,
        "debits_pending": account.debits_pending.to_string(),
        "debits_posted": account.debits_posted.to_string(),
        "credits_pending": account.credits_pending.to_string(),
        "credits_posted": account.credits_posted.to_string(),
        "timestamp": account.timestamp,
    })
}

pub fn accounts_table(accounts: &[Account]) -> String {
    let rows = accounts
        .iter()
        .map(|account| {
            vec![
                account.id.to_string(),
                account.ledger.to_string(),
                account.code.to_string(),
                account.debits_posted.to_string(),
                account.credits_posted.to_string(),
                account.debits_pending.to_string(),
                account.credits_pending.to_string(),
                account_flag_names(account).join(","),
            ]
        })
        .collect();
    table(&["ID", "LEDGER", "CODE", "DEBITS", "CREDITS", "DEBITS PENDING", "CREDITS PENDING", "FLAGS"], rows)
}

pub fn balance_json(account: &Account) -> Value {
    json!({
        "account_id": account.id.to_string(),
        "ledger": account.ledger,
        "debits_pending": account.debits_pending.to_string(),
        "debits_posted": account.debits_posted.to_string(),
        "credits_pending": account.credits_pending.to_string(),
        "credits_posted": account.credits_posted.to_string(),
        "credit_balance": account.credit_balance().to_string(),
        "available_credit_balance": account.available_credit_balance().to_string(),
    })
}

pub fn balance_table(account: &Account) -> String {
    table(
        &[
            "ACCOUNT",
            "LEDGER",
            "POSTED CREDITS - DEBITS",
            "AVAILABLE (PENDING DEBITS HELD)",
            "DEBITS PENDING",
            "CREDITS PENDING",
        ],
        vec![vec![
            account.id.to_string(),
            account.ledger.to_string(),
            account.credit_balance().to_string(),
            account.available_credit_balance().to_string(),
            account.debits_pending.to_string(),
            account.credits_pending.to_string(),
        ]],
    )
}

pub fn balance_history_json(balance: &AccountBalance) -> Value {
    json!({
        "timestamp": balance.timestamp,
        "debits_pending": balance.debits_pending.to_string(),
        "debits_posted": balance.debits_posted.to_string(),
        "credits_pending": balance.credits_pending.to_string(),
        "credits_posted": balance.credits_posted.to_string(),
    })
}

pub fn balance_history_table(balances: &[AccountBalance]) -> String {
    let rows = balances
        .iter()
        .map(|balance| {
            vec![
                balance.timestamp.to_string(),
                balance.debits_posted.to_string(),
                balance.credits_posted.to_string(),
                balance.debits_pending.to_string(),
                balance.credits_pending.to_string(),
            ]
        })
        .collect();
    table(&["TIMESTAMP", "DEBITS", "CREDITS", "DEBITS PENDING", "CREDITS PENDING"], rows)
}

pub fn transfer_json(transfer: &Transfer) -> Value {
    json!({
        "id": transfer.id.to_string(),
        "debit_account_id": transfer.debit_account_id.to_string(),
        "credit_account_id": transfer.credit_account_id.to_string(),
        "amount": transfer.amount.to_string(),
        "pending_id": transfer.pending_id.to_string(),
        "ledger": transfer.ledger,
        "code": transfer.code,
        "flags": transfer_flag_names(transfer.flags),
        "timeout_seconds": transfer.timeout_seconds,
        "user_data_128": transfer.user_data_128.to_string(),
        "user_data_64": transfer.user_data_64,
        "user_data_32": transfer.user_data_32,
        "timestamp": transfer.timestamp,
        "pending_status": transfer.pending_status.map(|status| status.as_str()),
        "pending_resolved_at": transfer.pending_resolved_at,
    })
}

pub fn transfers_table(transfers: &[Transfer]) -> String {
    let rows = transfers
        .iter()
        .map(|transfer| {
            vec![
                transfer.id.to_string(),
                transfer.debit_account_id.to_string(),
                transfer.credit_account_id.to_string(),
                transfer.amount.to_string(),
                transfer.ledger.to_string(),
                transfer.code.to_string(),
                transfer_flag_names(transfer.flags).join(","),
                transfer.pending_status.map_or("", |status| status.as_str()).to_owned(),
            ]
        })
        .collect();
    table(&["ID", "DEBIT", "CREDIT", "AMOUNT", "LEDGER", "CODE", "FLAGS", "PENDING"], rows)
}

/// One line per event of a write: its id, result code and what the code means.
pub fn results_json(ids: &[String], codes: &[ResultCode]) -> Value {
    let results: Vec<Value> = ids
        .iter()
        .zip(codes)
        .enumerate()
        .map(|(index, (id, code))| {
            json!({
                "index": index,
                "id": id,
                "result": code.name(),
                "ok": code.is_success(),
                "description": code.description(),
            })
        })
        .collect();
    json!({ "results": results })
}

pub fn results_table(ids: &[String], codes: &[ResultCode]) -> String {
    let rows = ids
        .iter()
        .zip(codes)
        .map(|(id, code)| {
            let meaning = if code.is_success() { String::new() } else { code.description().to_owned() };
            vec![id.clone(), code.name(), meaning]
        })
        .collect();
    table(&["ID", "RESULT", "MEANING"], rows)
}
