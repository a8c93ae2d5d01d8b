//! Account and transfer flags. Bits outside the defined ones are carried as sent and rejected with
//! `reserved_flag`, so a client built against a newer protocol fails loudly instead of silently.

bitflags::bitflags! {
    /// How an account behaves. See the crate's result-code table for the rules each flag enforces.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct AccountFlags: u16 {
        /// This event and the next succeed or fail together.
        const LINKED = 1 << 0;
        /// `debits_pending + debits_posted` never exceeds `credits_posted` (no overdraft).
        const DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1;
        /// `credits_pending + credits_posted` never exceeds `debits_posted`.
        const CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2;
        /// Keep the account's balances after every change, for balance-history queries.
        const HISTORY = 1 << 3;
        /// Set by a closing pending transfer; transfers touching a closed account fail.
        const CLOSED = 1 << 4;
    }
}

bitflags::bitflags! {
    /// What a transfer does. At most one of `PENDING`, `POST_PENDING_TRANSFER`,
    /// `VOID_PENDING_TRANSFER` may be set.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct TransferFlags: u16 {
        /// This event and the next succeed or fail together.
        const LINKED = 1 << 0;
        /// Reserve the amount in the `*_pending` balances until posted, voided or expired.
        const PENDING = 1 << 1;
        /// Move (all or part of) the pending transfer named by `pending_id` to `*_posted`.
        const POST_PENDING_TRANSFER = 1 << 2;
        /// Release the pending transfer named by `pending_id`.
        const VOID_PENDING_TRANSFER = 1 << 3;
        /// Transfer at most `amount`, as much as the debit account's credits allow.
        const BALANCING_DEBIT = 1 << 4;
        /// Transfer at most `amount`, as much as the credit account's debits allow.
        const BALANCING_CREDIT = 1 << 5;
        /// A pending transfer that closes the debit account; voiding it reopens the account.
        const CLOSING_DEBIT = 1 << 6;
        /// A pending transfer that closes the credit account; voiding it reopens the account.
        const CLOSING_CREDIT = 1 << 7;
    }
}

impl AccountFlags {
    pub fn has_reserved_bits(self) -> bool {
        self.bits() & !AccountFlags::all().bits() != 0
    }
}

impl TransferFlags {
    pub fn has_reserved_bits(self) -> bool {
        self.bits() & !TransferFlags::all().bits() != 0
    }

    /// Posts or voids an earlier pending transfer rather than moving money of its own.
    pub fn resolves_pending(self) -> bool {
        self.intersects(TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER)
    }

    pub fn is_balancing(self) -> bool {
        self.intersects(TransferFlags::BALANCING_DEBIT | TransferFlags::BALANCING_CREDIT)
    }

    pub fn is_closing(self) -> bool {
        self.intersects(TransferFlags::CLOSING_DEBIT | TransferFlags::CLOSING_CREDIT)
    }
}
