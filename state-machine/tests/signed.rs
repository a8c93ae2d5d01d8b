//! Signed requests and registry changes on a secured ledger: every refusal has its own reason and
//! changes nothing but the digest; a retry before the deadline gets the first outcome; the window
//! of seen ids forgets what is past its deadline.

mod support;

use support::*;
use tally_state_machine::constants::NANOSECONDS_PER_SECOND;
use tally_state_machine::registry::{ChangeRefusal, KeyAlgorithm, KeyStatus, Permissions, RegistryChange, Role};
use tally_state_machine::signed::{
    ChangeOutcome, REQUEST_VALIDITY_MAX_NANOSECONDS, RequestOutcome, RequestRefusal, SignedBatch, SignedRequest,
};
use tally_state_machine::storage::suite::{
    HashSignatures, approved_change, register_principal, secured_genesis, signed_request, test_public_key,
};
use tally_state_machine::{Batch, BatchError, LedgerQueries, NewTransfer, Operation, ResultCode, StorageRead};

const CHANNEL: u64 = 9;
const AUDITOR: u64 = 12;

struct Secured {
    harness: Harness,
    log_index: u64,
    next_id: u128,
}

impl Secured {
    /// The support ledger, secured by the test genesis, with a channel back-end (principal 9)
    /// that may create transfers on USD debiting accounts of code 100 only, and a read-only
    /// auditor (12).
    fn new() -> Secured {
        let mut harness = Harness::new();
        harness.ledger = std::mem::take(&mut harness.ledger).with_genesis(secured_genesis());
        let mut secured = Secured { harness, log_index: 10, next_id: 1 };
        let channel =
            Role { permissions: Permissions::CREATE_TRANSFERS, ledgers: vec![USD], debit_account_codes: vec![100] };
        assert_eq!(secured.change(register_principal(CHANNEL, channel), &[1, 2]), ChangeOutcome::Applied);
        let auditor = Role { permissions: Permissions::READ, ..Role::default() };
        assert_eq!(secured.change(register_principal(AUDITOR, auditor), &[2, 1]), ChangeOutcome::Applied);
        secured
    }

    fn deadline(&self) -> u64 {
        self.harness.clock + 30 * NANOSECONDS_PER_SECOND
    }

    fn change(&mut self, change: RegistryChange, approvers: &[u64]) -> ChangeOutcome {
        self.log_index += 1;
        self.next_id += 1;
        let signed = approved_change(self.harness.clock, self.log_index, self.next_id, change, approvers);
        let outcome = self.harness.ledger.apply_change(&signed, &HashSignatures).expect("change entry accepted");
        self.harness.clock = self.harness.ledger.timestamp_last() + 1_000;
        outcome
    }

    fn apply(&mut self, requests: Vec<SignedRequest>) -> Vec<RequestOutcome> {
        self.log_index += 1;
        let batch = SignedBatch { timestamp: self.harness.clock, log_index: self.log_index, requests };
        let outcomes = self.harness.ledger.apply_signed(&batch, &HashSignatures).expect("signed entry accepted");
        self.harness.clock = self.harness.ledger.timestamp_last() + 1_000;
        outcomes
    }

    fn transfers(&mut self, request_id: u128, transfers: Vec<NewTransfer>) -> SignedRequest {
        signed_request(CHANNEL, 1, request_id, self.deadline(), Operation::CreateTransfers(transfers), 0)
    }

    /// Everything a refused request could have touched.
    fn state(&self) -> ([u128; 4], [u128; 4], [u128; 4], usize) {
        let transfers = self.harness.ledger.storage().lookup_transfers(&[500, 501, 502]).unwrap();
        (
            self.harness.balances(ALICE),
            self.harness.balances(BOB),
            self.harness.balances(YEN_A),
            transfers.iter().flatten().count(),
        )
    }
}

#[test]
fn a_signed_request_applies_and_its_retry_gets_the_first_outcome_without_applying_again() {
    let mut secured = Secured::new();
    let request = secured.transfers(1, vec![transfer(500, ALICE, BOB, "10.00"), transfer(501, ALICE, BOB, "95.00")]);
    let outcomes = secured.apply(vec![request.clone()]);
    assert_eq!(outcomes, [RequestOutcome::Applied(vec![ResultCode::Ok, ResultCode::ExceedsCredits])]);
    let after = secured.state();
    // In the same entry and in a later one: the first outcome, nothing applied again, even though
    // applying again would now give `exists` for the first transfer.
    let outcomes = secured.apply(vec![request.clone(), request.clone()]);
    let first = RequestOutcome::Repeated(vec![ResultCode::Ok, ResultCode::ExceedsCredits]);
    assert_eq!(outcomes, [first.clone(), first]);
    assert_eq!(secured.state(), after);
}

#[test]
fn a_request_id_reused_with_other_bytes_or_replayed_after_its_deadline_is_refused() {
    let mut secured = Secured::new();
    let request = secured.transfers(1, vec![transfer(500, ALICE, BOB, "10.00")]);
    assert!(matches!(&secured.apply(vec![request.clone()])[..], [RequestOutcome::Applied(_)]));
    let after = secured.state();
    let other_bytes = signed_request(
        CHANNEL,
        1,
        1,
        secured.deadline(),
        Operation::CreateTransfers(vec![transfer(501, ALICE, BOB, "1.00")]),
        1,
    );
    assert_eq!(
        secured.apply(vec![other_bytes]),
        [RequestOutcome::Refused(RequestRefusal::RequestIdReused { principal: CHANNEL, request_id: 1 })]
    );
    secured.harness.advance_seconds(31);
    assert!(matches!(
        &secured.apply(vec![request])[..],
        [RequestOutcome::Refused(RequestRefusal::DeadlineExpired { late_nanoseconds })] if *late_nanoseconds > 0
    ));
    assert_eq!(secured.state(), after);
}

#[test]
fn each_failed_check_refuses_the_request_with_its_own_reason_and_changes_nothing() {
    let mut secured = Secured::new();
    let pay = || vec![transfer(500, ALICE, BOB, "10.00")];
    let deadline = secured.deadline();
    let key_id = |principal: u64, generation: u8| {
        HashSignatures::key_id_of(KeyAlgorithm::MlDsa65, &test_public_key(principal, generation))
    };
    let mut forged = secured.transfers(2, pay());
    forged.signature[0] ^= 1;
    let mut tampered = secured.transfers(3, pay());
    tampered.body_hash[0] ^= 1;
    let mut malformed = secured.transfers(4, pay());
    malformed.operation = Err("transfers[0].amount: not a decimal".into());
    let cases = [
        // First, while the clock is where the deadline was taken from.
        (
            signed_request(
                CHANNEL,
                1,
                5,
                deadline + REQUEST_VALIDITY_MAX_NANOSECONDS,
                Operation::CreateTransfers(pay()),
                0,
            ),
            RequestRefusal::DeadlineTooFar {
                ahead_nanoseconds: deadline + REQUEST_VALIDITY_MAX_NANOSECONDS - secured.harness.clock,
            },
        ),
        (
            signed_request(77, 1, 1, deadline, Operation::CreateTransfers(pay()), 0),
            RequestRefusal::PrincipalUnknown { principal: 77 },
        ),
        (
            signed_request(CHANNEL, 2, 1, deadline, Operation::CreateTransfers(pay()), 0),
            RequestRefusal::KeyUnknown { principal: CHANNEL, key_id: key_id(CHANNEL, 2) },
        ),
        (forged, RequestRefusal::SignatureInvalid { principal: CHANNEL, key_id: key_id(CHANNEL, 1) }),
        (tampered, RequestRefusal::SignatureInvalid { principal: CHANNEL, key_id: key_id(CHANNEL, 1) }),
        (malformed, RequestRefusal::Malformed { detail: "transfers[0].amount: not a decimal".into() }),
        (
            signed_request(
                CHANNEL,
                1,
                6,
                deadline,
                Operation::CreateAccounts(vec![account(600, USD, Default::default())]),
                0,
            ),
            RequestRefusal::OperationNotPermitted { principal: CHANNEL, operation: "create_accounts" },
        ),
        (
            secured.transfers(
                7,
                vec![
                    transfer(500, ALICE, BOB, "1.00"),
                    NewTransfer { ledger: JPY, ..transfer(501, YEN_A, YEN_B, "1") },
                ],
            ),
            RequestRefusal::LedgerNotPermitted { principal: CHANNEL, ledger: JPY, index: 1 },
        ),
        (secured.transfers(8, vec![]), RequestRefusal::Empty),
    ];
    let before = secured.state();
    for (request, refusal) in cases {
        assert_eq!(secured.apply(vec![request]), [RequestOutcome::Refused(refusal)]);
        assert_eq!(secured.state(), before);
    }
}

#[test]
fn a_role_limits_the_account_codes_a_principal_may_debit_even_through_a_pending_transfer() {
    let mut secured = Secured::new();
    let deadline = secured.deadline();
    // An account of code 900 (a bank's own, say), created by an operator-side principal.
    let treasury = Role { permissions: Permissions::all(), ..Role::default() };
    assert_eq!(secured.change(register_principal(20, treasury), &[1, 2]), ChangeOutcome::Applied);
    let vault = tally_state_machine::NewAccount { code: 900, ..account(700, USD, Default::default()) };
    let outcomes = secured.apply(vec![
        signed_request(20, 1, 1, deadline, Operation::CreateAccounts(vec![vault]), 0),
        signed_request(20, 1, 2, deadline, Operation::CreateTransfers(vec![transfer(701, BANK, 700, "50.00")]), 0),
        signed_request(20, 1, 3, deadline, Operation::CreateTransfers(vec![pending(702, 700, BOB, "5.00")]), 0),
    ]);
    assert!(
        outcomes.iter().all(|outcome| outcome.results().iter().all(|code| *code == ResultCode::Ok)),
        "{outcomes:?}"
    );
    let before = secured.state();
    let debit_vault = secured.transfers(4, vec![transfer(500, ALICE, BOB, "1.00"), transfer(501, 700, BOB, "1.00")]);
    let post_vault = secured.transfers(5, vec![post(502, 702, None)]);
    let refused =
        |index| RequestRefusal::DebitAccountCodeNotPermitted { principal: CHANNEL, code: 900, ledger: USD, index };
    assert_eq!(
        secured.apply(vec![debit_vault, post_vault]),
        [RequestOutcome::Refused(refused(1)), RequestOutcome::Refused(refused(0))]
    );
    assert_eq!(secured.state(), before);
    assert_eq!(refused(1).to_string(), "principal 9 may not debit account code 900 on ledger 1 (event 1)");
}

#[test]
fn a_rotated_key_signs_until_it_is_retired_and_a_revoked_one_signs_nothing() {
    let mut secured = Secured::new();
    let add = RegistryChange::AddKey {
        principal: CHANNEL,
        algorithm: KeyAlgorithm::MlDsa65,
        public_key: test_public_key(CHANNEL, 2),
    };
    assert_eq!(secured.change(add, &[1, 2]), ChangeOutcome::Applied);
    let deadline = secured.deadline();
    let pay = |id: u128| Operation::CreateTransfers(vec![transfer(id, ALICE, BOB, "1.00")]);
    let outcomes = secured.apply(vec![
        signed_request(CHANNEL, 1, 1, deadline, pay(500), 0),
        signed_request(CHANNEL, 2, 2, deadline, pay(501), 0),
    ]);
    assert!(
        outcomes.iter().all(|outcome| matches!(outcome, RequestOutcome::Applied(_))),
        "both keys sign during a rotation"
    );
    let old = HashSignatures::key_id_of(KeyAlgorithm::MlDsa65, &test_public_key(CHANNEL, 1));
    let new = HashSignatures::key_id_of(KeyAlgorithm::MlDsa65, &test_public_key(CHANNEL, 2));
    assert_eq!(
        secured.change(RegistryChange::RetireKey { principal: CHANNEL, key_id: old }, &[1, 2]),
        ChangeOutcome::Applied
    );
    assert_eq!(
        secured.change(RegistryChange::RevokeKey { principal: CHANNEL, key_id: new }, &[1, 2]),
        ChangeOutcome::Applied
    );
    let deadline = secured.deadline();
    assert_eq!(
        secured.apply(vec![
            signed_request(CHANNEL, 1, 3, deadline, pay(502), 0),
            signed_request(CHANNEL, 2, 4, deadline, pay(502), 0)
        ]),
        [
            RequestOutcome::Refused(RequestRefusal::KeyRetired { principal: CHANNEL, key_id: old }),
            RequestOutcome::Refused(RequestRefusal::KeyRevoked { principal: CHANNEL, key_id: new }),
        ]
    );
    let registry = secured.harness.ledger.registry().unwrap();
    let keys = &registry.principals[&CHANNEL].keys;
    assert_eq!(
        keys.iter().map(|key| key.status).collect::<Vec<_>>(),
        [KeyStatus::Retired, KeyStatus::Revoked],
        "keys are kept"
    );
    assert!(keys[0].valid_from_index < keys[1].valid_from_index && keys[1].valid_from_index < keys[0].status_index);
}

#[test]
fn a_registry_change_needs_the_operators_threshold_and_every_approval_must_verify() {
    let mut secured = Secured::new();
    let role = || Role { permissions: Permissions::READ, ..Role::default() };
    let before = secured.harness.ledger.registry().cloned();
    assert_eq!(
        secured.change(register_principal(30, role()), &[1]),
        ChangeOutcome::Refused(ChangeRefusal::ApprovalsTooFew { approved: 1, required: 2 })
    );
    assert_eq!(
        secured.change(register_principal(30, role()), &[1, 1]),
        ChangeOutcome::Refused(ChangeRefusal::ApprovalDuplicate { operator: 1 })
    );
    assert_eq!(
        secured.change(register_principal(30, role()), &[1, 3]),
        ChangeOutcome::Refused(ChangeRefusal::OperatorUnknown { operator: 3 })
    );
    secured.log_index += 1;
    let mut forged =
        approved_change(secured.harness.clock, secured.log_index, 99, register_principal(30, role()), &[1, 2]);
    forged.approvals[1].signature[3] ^= 1;
    assert_eq!(
        secured.harness.ledger.apply_change(&forged, &HashSignatures),
        Ok(ChangeOutcome::Refused(ChangeRefusal::ApprovalInvalid { operator: 2 }))
    );
    assert_eq!(secured.harness.ledger.registry().cloned(), before, "refused changes changed nothing");

    let mut approved =
        approved_change(secured.harness.clock + 1, secured.log_index + 1, 100, register_principal(30, role()), &[2, 1]);
    assert_eq!(secured.harness.ledger.apply_change(&approved, &HashSignatures), Ok(ChangeOutcome::Applied));
    approved.timestamp += 1;
    approved.log_index += 1;
    assert_eq!(secured.harness.ledger.apply_change(&approved, &HashSignatures), Ok(ChangeOutcome::Repeated));
    let set_role =
        RegistryChange::SetRole { principal: 30, role: Role { permissions: Permissions::all(), ..Role::default() } };
    let mut reused = approved_change(approved.timestamp + 1, approved.log_index + 1, 100, set_role, &[1, 2]);
    assert_eq!(
        secured.harness.ledger.apply_change(&reused, &HashSignatures),
        Ok(ChangeOutcome::Refused(ChangeRefusal::ChangeIdReused { change_id: 100 }))
    );
    reused.signer.deadline = reused.timestamp;
    reused.timestamp += 1;
    reused.log_index += 1;
    assert!(matches!(
        secured.harness.ledger.apply_change(&reused, &HashSignatures),
        Ok(ChangeOutcome::Refused(ChangeRefusal::DeadlineExpired { .. }))
    ));
}

#[test]
fn a_secured_ledger_refuses_unsigned_client_batches_but_expires_pending_transfers() {
    let mut secured = Secured::new();
    let clock = secured.harness.clock;
    let digest = secured.harness.ledger.digest();
    let unsigned = Batch::new(clock, Operation::CreateTransfers(vec![transfer(500, ALICE, BOB, "1.00")]));
    assert_eq!(secured.harness.ledger.apply(&unsigned), Err(BatchError::Unsigned { operation: "create_transfers" }));
    assert_eq!(secured.harness.ledger.digest(), digest);
    assert!(secured.harness.ledger.apply(&Batch::new(clock, Operation::ExpirePendingTransfers)).is_ok());
    let mut open = Harness::new();
    let signed = SignedBatch { timestamp: open.clock, log_index: 1, requests: vec![secured.transfers(1, vec![])] };
    assert_eq!(open.ledger.apply_signed(&signed, &HashSignatures), Err(BatchError::Unsecured));
}

#[test]
fn the_window_forgets_requests_once_their_deadline_has_passed() {
    let mut secured = Secured::new();
    let requests: Vec<_> =
        (0..40u128).map(|id| secured.transfers(id + 1, vec![transfer(900 + id, ALICE, BOB, "0.01")])).collect();
    secured.apply(requests);
    let remembered = |secured: &Secured| {
        let mut count = 0;
        secured.harness.ledger.storage().requests_seen_due_scan(u64::MAX, &mut |_| {
            count += 1;
            std::ops::ControlFlow::Continue(())
        });
        count
    };
    assert_eq!(remembered(&secured), 40 + 2, "40 requests and the two registry changes");
    secured.harness.advance_seconds(61);
    let deadline = secured.deadline();
    secured.apply(vec![signed_request(
        CHANNEL,
        1,
        1_000,
        deadline,
        Operation::CreateTransfers(vec![transfer(999, ALICE, BOB, "0.01")]),
        0,
    )]);
    assert_eq!(remembered(&secured), 1, "only the request still within its deadline");
}

#[test]
fn operators_change_under_the_threshold_in_force_and_a_new_operator_approves_at_once() {
    let mut secured = Secured::new();
    let add = RegistryChange::AddOperator { operator: 3, public_key: test_public_key(3, 87) };
    assert_eq!(
        secured.change(add.clone(), &[1]),
        ChangeOutcome::Refused(ChangeRefusal::ApprovalsTooFew { approved: 1, required: 2 })
    );
    assert_eq!(secured.change(add, &[1, 2]), ChangeOutcome::Applied);
    let raise = RegistryChange::SetApprovalsRequired { required: 3 };
    assert_eq!(secured.change(raise, &[1, 3]), ChangeOutcome::Applied, "operator 3 approves from the next change on");
    let remove = RegistryChange::RemoveOperator { operator: 2 };
    assert_eq!(
        secured.change(remove.clone(), &[1, 2]),
        ChangeOutcome::Refused(ChangeRefusal::ApprovalsTooFew { approved: 2, required: 3 })
    );
    assert_eq!(
        secured.change(remove, &[1, 2, 3]),
        ChangeOutcome::Refused(ChangeRefusal::ApprovalsRequiredInvalid { required: 3, operators: 2 }),
        "lower the threshold before removing"
    );
    let registry = secured.harness.ledger.registry().unwrap();
    assert_eq!((registry.operators.len(), registry.operator_approvals_required), (3, 3));
}
