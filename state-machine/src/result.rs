//! Result codes: one per event, with stable numbers that the wire protocol and the digest use.
//!
//! The table below is the single source: the enum, each code's name, the operations that can return
//! it and the sentence that explains it are all generated from it, and `RESULT_CODES.md` is checked
//! against [`ResultCode::markdown_table`] by a test, so the documentation cannot drift from the code.

macro_rules! result_codes {
    ($($variant:ident = $number:literal, $name:literal, $operations:literal, $description:literal;)+) => {
        /// The outcome of one event. `Ok` and `Exists` are successes; every other code is a failure
        /// that changed nothing.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum ResultCode {
            $(#[doc = $description] $variant = $number,)+
        }

        impl ResultCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$variant,)+];

            /// The code's snake_case name, as used on the wire and in documentation.
            pub fn name(self) -> &'static str {
                match self { $(ResultCode::$variant => $name,)+ }
            }

            /// The operations that can return this code.
            pub fn operations(self) -> &'static str {
                match self { $(ResultCode::$variant => $operations,)+ }
            }

            /// One sentence that tells a person what happened and what to change.
            pub fn description(self) -> &'static str {
                match self { $(ResultCode::$variant => $description,)+ }
            }

            pub fn from_number(number: u8) -> Option<ResultCode> {
                match number { $($number => Some(ResultCode::$variant),)+ _ => None }
            }
        }
    };
}

result_codes! {
    Ok = 0, "ok", "all",
        "The event was applied.";
    Exists = 1, "exists", "all",
        "An event with this id was applied before with the same fields; nothing changed (a safe retry).";
    LinkedEventFailed = 2, "linked_event_failed", "accounts, transfers",
        "Another event of this linked chain failed, so the whole chain changed nothing.";
    LinkedEventChainOpen = 3, "linked_event_chain_open", "accounts, transfers",
        "The batch ended inside a linked chain: its last event has the `linked` flag. Clear it to close the chain.";
    IdMustNotBeZero = 4, "id_must_not_be_zero", "all",
        "The id is 0, which is reserved.";
    IdMustNotBeIntMax = 5, "id_must_not_be_int_max", "accounts, transfers",
        "The id is 2^128 - 1, which is reserved.";
    ReservedFlag = 6, "reserved_flag", "accounts, transfers",
        "A flag bit that this version does not define is set.";
    FlagsAreMutuallyExclusive = 7, "flags_are_mutually_exclusive", "accounts, transfers",
        "Flags that contradict each other are set together (both balance limits; more than one of pending, post and void; balancing with post or void).";
    CurrencyNotIso4217 = 8, "currency_not_iso_4217", "ledgers",
        "The currency is not an ISO 4217 alphabetic code.";
    ScaleExceedsMax = 9, "scale_exceeds_max", "ledgers",
        "The scale is above 18 decimal places.";
    LedgerMustNotBeZero = 10, "ledger_must_not_be_zero", "accounts, transfers",
        "The ledger is 0; name the ledger (only a post or void may leave it 0 to take the pending transfer's).";
    CodeMustNotBeZero = 11, "code_must_not_be_zero", "accounts, transfers",
        "The code is 0; every account and transfer needs a non-zero code from the bank's chart of accounts.";
    LedgerNotFound = 12, "ledger_not_found", "accounts, transfers",
        "No ledger with this id exists; create the ledger first.";
    AccountMustNotBeCreatedClosed = 13, "account_must_not_be_created_closed", "accounts",
        "The `closed` flag is set on a new account; accounts are closed by a closing pending transfer.";
    DebitAccountIdMustNotBeZero = 14, "debit_account_id_must_not_be_zero", "transfers",
        "The debit account id is 0.";
    DebitAccountIdMustNotBeIntMax = 15, "debit_account_id_must_not_be_int_max", "transfers",
        "The debit account id is 2^128 - 1, which is reserved.";
    CreditAccountIdMustNotBeZero = 16, "credit_account_id_must_not_be_zero", "transfers",
        "The credit account id is 0.";
    CreditAccountIdMustNotBeIntMax = 17, "credit_account_id_must_not_be_int_max", "transfers",
        "The credit account id is 2^128 - 1, which is reserved.";
    AccountsMustBeDifferent = 18, "accounts_must_be_different", "transfers",
        "The debit and credit accounts are the same account.";
    PendingIdMustBeZero = 19, "pending_id_must_be_zero", "transfers",
        "A `pending_id` is set on a transfer that neither posts nor voids a pending transfer.";
    PendingIdMustNotBeZero = 20, "pending_id_must_not_be_zero", "transfers",
        "A post or void does not name the pending transfer (`pending_id` is 0).";
    PendingIdMustNotBeIntMax = 21, "pending_id_must_not_be_int_max", "transfers",
        "The `pending_id` is 2^128 - 1, which is reserved.";
    PendingIdMustBeDifferent = 22, "pending_id_must_be_different", "transfers",
        "A post or void names itself as the pending transfer.";
    TimeoutReservedForPendingTransfer = 23, "timeout_reserved_for_pending_transfer", "transfers",
        "A timeout is set on a transfer that is not pending; only pending transfers expire.";
    ClosingTransferMustBePending = 24, "closing_transfer_must_be_pending", "transfers",
        "A closing flag is set on a transfer that is not pending; closing is done by a pending transfer so that voiding it reopens the account.";
    AmountMustBeSet = 25, "amount_must_be_set", "transfers",
        "The amount is missing; only a post or void may omit it (meaning the pending transfer's whole amount).";
    AmountMustBePositive = 26, "amount_must_be_positive", "transfers",
        "The amount is zero or negative.";
    AmountScaleExceedsLedgerScale = 27, "amount_scale_exceeds_ledger_scale", "transfers",
        "The amount has more decimal places than the ledger's scale allows; it is never rounded.";
    AmountExceedsMax = 28, "amount_exceeds_max", "transfers",
        "The amount is above 2^96 - 1 minor units of the ledger.";
    DebitAccountNotFound = 29, "debit_account_not_found", "transfers",
        "No account with the debit account id exists.";
    CreditAccountNotFound = 30, "credit_account_not_found", "transfers",
        "No account with the credit account id exists.";
    AccountsMustHaveTheSameLedger = 31, "accounts_must_have_the_same_ledger", "transfers",
        "The two accounts are on different ledgers; exchange currency with two linked transfers through liquidity accounts.";
    TransferMustHaveTheSameLedgerAsAccounts = 32, "transfer_must_have_the_same_ledger_as_accounts", "transfers",
        "The transfer's ledger is not the ledger of its accounts.";
    DebitAccountAlreadyClosed = 33, "debit_account_already_closed", "transfers",
        "The debit account is closed.";
    CreditAccountAlreadyClosed = 34, "credit_account_already_closed", "transfers",
        "The credit account is closed.";
    PendingTransferNotFound = 35, "pending_transfer_not_found", "transfers",
        "No transfer with the `pending_id` exists.";
    PendingTransferNotPending = 36, "pending_transfer_not_pending", "transfers",
        "The transfer named by `pending_id` is not a pending transfer.";
    PendingTransferHasDifferentDebitAccountId = 37, "pending_transfer_has_different_debit_account_id", "transfers",
        "The post or void names a debit account other than the pending transfer's (leave it 0 to take the pending transfer's).";
    PendingTransferHasDifferentCreditAccountId = 38, "pending_transfer_has_different_credit_account_id", "transfers",
        "The post or void names a credit account other than the pending transfer's (leave it 0 to take the pending transfer's).";
    PendingTransferHasDifferentLedger = 39, "pending_transfer_has_different_ledger", "transfers",
        "The post or void names a ledger other than the pending transfer's (leave it 0 to take the pending transfer's).";
    PendingTransferHasDifferentCode = 40, "pending_transfer_has_different_code", "transfers",
        "The post or void names a code other than the pending transfer's (leave it 0 to take the pending transfer's).";
    ExceedsPendingTransferAmount = 41, "exceeds_pending_transfer_amount", "transfers",
        "The post's amount is above the pending transfer's amount.";
    PendingTransferHasDifferentAmount = 42, "pending_transfer_has_different_amount", "transfers",
        "The void's amount is not the pending transfer's amount (omit it to void the whole amount).";
    PendingTransferAlreadyPosted = 43, "pending_transfer_already_posted", "transfers",
        "The pending transfer was already posted.";
    PendingTransferAlreadyVoided = 44, "pending_transfer_already_voided", "transfers",
        "The pending transfer was already voided.";
    PendingTransferExpired = 45, "pending_transfer_expired", "transfers",
        "The pending transfer's timeout has passed; its amount was (or is being) released.";
    OverflowsDebitsPending = 46, "overflows_debits_pending", "transfers",
        "The debit account's `debits_pending` would exceed the maximum balance.";
    OverflowsCreditsPending = 47, "overflows_credits_pending", "transfers",
        "The credit account's `credits_pending` would exceed the maximum balance.";
    OverflowsDebitsPosted = 48, "overflows_debits_posted", "transfers",
        "The debit account's `debits_posted` would exceed the maximum balance.";
    OverflowsCreditsPosted = 49, "overflows_credits_posted", "transfers",
        "The credit account's `credits_posted` would exceed the maximum balance.";
    OverflowsDebits = 50, "overflows_debits", "transfers",
        "The debit account's `debits_pending + debits_posted` would exceed the maximum balance.";
    OverflowsCredits = 51, "overflows_credits", "transfers",
        "The credit account's `credits_pending + credits_posted` would exceed the maximum balance.";
    OverflowsTimeout = 52, "overflows_timeout", "transfers",
        "The pending transfer's deadline (timestamp + timeout) is beyond the range of cluster time.";
    ExceedsCredits = 53, "exceeds_credits", "transfers",
        "The debit account has `debits_must_not_exceed_credits` and its debits would exceed its posted credits (insufficient funds).";
    ExceedsDebits = 54, "exceeds_debits", "transfers",
        "The credit account has `credits_must_not_exceed_debits` and its credits would exceed its posted debits.";
    IdAlreadyFailed = 55, "id_already_failed", "transfers",
        "A transfer with this id failed before for a reason that depends on ledger state; an id's first outcome is final, so retry with a new id.";
    ExistsWithDifferentFlags = 56, "exists_with_different_flags", "accounts, transfers",
        "The id exists with different flags.";
    ExistsWithDifferentCurrency = 57, "exists_with_different_currency", "ledgers",
        "The ledger id exists with a different currency.";
    ExistsWithDifferentScale = 58, "exists_with_different_scale", "ledgers",
        "The ledger id exists with a different scale.";
    ExistsWithDifferentLedger = 59, "exists_with_different_ledger", "accounts, transfers",
        "The id exists on a different ledger.";
    ExistsWithDifferentCode = 60, "exists_with_different_code", "accounts, transfers",
        "The id exists with a different code.";
    ExistsWithDifferentUserData128 = 61, "exists_with_different_user_data_128", "all",
        "The id exists with a different `user_data_128`.";
    ExistsWithDifferentUserData64 = 62, "exists_with_different_user_data_64", "all",
        "The id exists with a different `user_data_64`.";
    ExistsWithDifferentUserData32 = 63, "exists_with_different_user_data_32", "all",
        "The id exists with a different `user_data_32`.";
    ExistsWithDifferentDebitAccountId = 64, "exists_with_different_debit_account_id", "transfers",
        "The transfer id exists with a different debit account.";
    ExistsWithDifferentCreditAccountId = 65, "exists_with_different_credit_account_id", "transfers",
        "The transfer id exists with a different credit account.";
    ExistsWithDifferentAmount = 66, "exists_with_different_amount", "transfers",
        "The transfer id exists with a different amount (for a balancing transfer: a ceiling below the amount it moved).";
    ExistsWithDifferentPendingId = 67, "exists_with_different_pending_id", "transfers",
        "The transfer id exists with a different `pending_id`.";
    ExistsWithDifferentTimeout = 68, "exists_with_different_timeout", "transfers",
        "The transfer id exists with a different timeout.";
}

impl ResultCode {
    /// `Ok` and `Exists`: the event is (now, or already) applied.
    pub fn is_success(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::Exists)
    }

    /// The outcome depended on ledger state that can change (a missing account, a balance, a closed
    /// account). A transfer failing with such a code records its id as failed, so a retry gets
    /// `id_already_failed` instead of succeeding later and surprising the client. Codes that depend
    /// only on the event itself are not recorded: a retry fails the same way anyway.
    pub fn is_transient(self) -> bool {
        use ResultCode::*;
        matches!(
            self,
            LedgerNotFound
                | DebitAccountNotFound
                | CreditAccountNotFound
                | DebitAccountAlreadyClosed
                | CreditAccountAlreadyClosed
                | PendingTransferNotFound
                | OverflowsDebitsPending
                | OverflowsCreditsPending
                | OverflowsDebitsPosted
                | OverflowsCreditsPosted
                | OverflowsDebits
                | OverflowsCredits
                | ExceedsCredits
                | ExceedsDebits
        )
    }

    /// The documentation table of every code, as kept in `RESULT_CODES.md`.
    pub fn markdown_table() -> String {
        let mut table = String::from("| Code | Name | Operations | Meaning |\n| ---: | --- | --- | --- |\n");
        for code in ResultCode::ALL {
            table.push_str(&format!(
                "| {} | `{}` | {} | {} |\n",
                *code as u8,
                code.name(),
                code.operations(),
                code.description()
            ));
        }
        table
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_and_round_trip() {
        for (index, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, index, "{code} is out of order");
            assert_eq!(ResultCode::from_number(*code as u8), Some(*code));
        }
        assert_eq!(ResultCode::from_number(u8::try_from(ResultCode::ALL.len()).unwrap()), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = ResultCode::ALL.iter().map(|code| code.name()).collect();
        assert!(
            names
                .iter()
                .all(|name| { name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') })
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ResultCode::ALL.len());
    }

    #[test]
    fn successes_are_never_transient() {
        assert!(ResultCode::ALL.iter().all(|code| !(code.is_success() && code.is_transient())));
    }

    /// `RESULT_CODES.md` is the table users read; regenerate it with
    /// `TALLY_UPDATE_DOCS=1 cargo test -p tally-state-machine result_codes_document`.
    #[test]
    fn result_codes_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULT_CODES.md");
        let header = "# Result codes\n\nEvery event of a batch gets one of these codes. `ok` and `exists` are successes; every\nother code is a failure that changed nothing. Numbers are stable: they travel on the wire and\nenter the state digest. Generated from `state-machine/src/result.rs`.\n\n";
        let expected = format!("{header}{}", ResultCode::markdown_table());
        if std::env::var_os("TALLY_UPDATE_DOCS").is_some() {
            std::fs::write(path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        assert!(actual == expected, "{path} is stale: rerun with TALLY_UPDATE_DOCS=1");
    }
}
