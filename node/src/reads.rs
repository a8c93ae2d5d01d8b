//! The answers to the ledger's read calls, from one read view of the committed ledger.
//!
//! Each answer turns one read request into its response: the wire request's fields into a query,
//! the query run on the view, the records rendered for the wire. Answers are pure functions of the
//! request and the view; the gateway's read path ([`crate::gateway`]) decides where a read is
//! served, confirms leadership and waits for the view. Nothing here may write or wait.

use tally_consensus::LedgerReadView;
use tally_proto::v1 as wire;
use tally_state_machine::{LedgerQueries, Page, QueryError};
use tonic::Status;

use crate::convert::{self, FieldError, Renderer};

/// How a read call answers: [`Answers`] on the view, and the request.
pub(crate) type Answer<Req, Resp> = fn(Answers<'_>, &Req) -> Result<Resp, Status>;

/// What every answer is made from: the read view, a renderer on it, the response's header, and
/// the ledgers the reader may see.
pub(crate) struct Answers<'a> {
    view: &'a LedgerReadView,
    render: Renderer<'a, LedgerReadView>,
    header: Option<wire::ResponseHeader>,
    /// The reader's role's ledgers (sorted); `None` or empty: all. Records of other ledgers are
    /// answered as not found and left out of pages, so that their existence does not show.
    ledgers: Option<&'a [u32]>,
}

fn invalid(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn query_error(error: QueryError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn ids(message: &wire::LookupRequest) -> Vec<u128> {
    message.ids.iter().map(|id| convert::u128_from(Some(id))).collect()
}

/// The records a lookup found (or not), each wrapped for the wire.
fn lookups<T, W>(found: Result<Vec<Option<T>>, QueryError>, wrap: impl Fn(Option<&T>) -> W) -> Result<Vec<W>, Status> {
    Ok(found.map_err(query_error)?.iter().map(|record| wrap(record.as_ref())).collect())
}

/// A page's records rendered for the wire, and its cursor.
fn rendered<T, W>(
    page: Result<Page<T>, QueryError>,
    render: impl Fn(&T) -> W,
) -> Result<(Vec<W>, Option<u64>), Status> {
    let page = page.map_err(query_error)?;
    Ok((page.items.iter().map(render).collect(), page.cursor))
}

impl<'a> Answers<'a> {
    pub(crate) fn new(view: &'a LedgerReadView, header: wire::ResponseHeader) -> Answers<'a> {
        Answers { view, render: Renderer { storage: view }, header: Some(header), ledgers: None }
    }

    /// The same answers for a reader whose role names `ledgers` (sorted; empty: all).
    pub(crate) fn within(self, ledgers: &'a [u32]) -> Answers<'a> {
        Answers { ledgers: (!ledgers.is_empty()).then_some(ledgers), ..self }
    }

    fn allows(&self, ledger: u32) -> bool {
        self.ledgers.is_none_or(|ledgers| ledgers.binary_search(&ledger).is_ok())
    }

    /// Whether the reader may see `account_id`'s transfers and balances (an account that does not
    /// exist shows as empty either way).
    fn allows_account(&self, account_id: u128) -> bool {
        use tally_state_machine::StorageRead;
        self.ledgers.is_none() || self.view.account_get(account_id).is_some_and(|account| self.allows(account.ledger))
    }

    pub(crate) fn lookup_ledgers(
        self,
        message: &wire::LookupLedgersRequest,
    ) -> Result<wire::LookupLedgersResponse, Status> {
        let ledgers = lookups(self.view.lookup_ledgers(&message.ids), |ledger| {
            let ledger = ledger.filter(|ledger| self.allows(ledger.id));
            wire::LedgerLookup { found: ledger.is_some(), ledger: ledger.map(|ledger| self.render.ledger(ledger)) }
        })?;
        Ok(wire::LookupLedgersResponse { header: self.header, ledgers })
    }

    pub(crate) fn lookup_accounts(self, message: &wire::LookupRequest) -> Result<wire::LookupAccountsResponse, Status> {
        let accounts = lookups(self.view.lookup_accounts(&ids(message)), |account| {
            let account = account.filter(|account| self.allows(account.ledger));
            wire::AccountLookup {
                found: account.is_some(),
                account: account.map(|account| self.render.account(account)),
            }
        })?;
        Ok(wire::LookupAccountsResponse { header: self.header, accounts })
    }

    pub(crate) fn lookup_transfers(
        self,
        message: &wire::LookupRequest,
    ) -> Result<wire::LookupTransfersResponse, Status> {
        let transfers = lookups(self.view.lookup_transfers(&ids(message)), |transfer| {
            let transfer = transfer.filter(|transfer| self.allows(transfer.ledger));
            wire::TransferLookup {
                found: transfer.is_some(),
                transfer: transfer.map(|transfer| self.render.transfer(transfer)),
            }
        })?;
        Ok(wire::LookupTransfersResponse { header: self.header, transfers })
    }

    pub(crate) fn get_account_transfers(
        self,
        message: &wire::AccountTransfersRequest,
    ) -> Result<wire::TransfersPage, Status> {
        let filter = convert::account_transfers_filter(message).map_err(invalid)?;
        if !self.allows_account(filter.account_id) {
            return Ok(wire::TransfersPage { header: self.header, transfers: Vec::new(), cursor: None });
        }
        let (transfers, cursor) =
            rendered(self.view.get_account_transfers(filter), |transfer| self.render.transfer(transfer))?;
        Ok(wire::TransfersPage { header: self.header, transfers, cursor })
    }

    pub(crate) fn get_account_balances(
        self,
        message: &wire::AccountBalancesRequest,
    ) -> Result<wire::AccountBalancesPage, Status> {
        let account_id = convert::u128_from(message.account_id.as_ref());
        if !self.allows_account(account_id) {
            return Ok(wire::AccountBalancesPage { header: self.header, balances: Vec::new(), cursor: None });
        }
        let page = self.view.get_account_balances(account_id, convert::window(message.window.as_ref()));
        let scale = self.render.account_scale(account_id);
        let (balances, cursor) = rendered(page, |balance| self.render.balance(balance, scale))?;
        Ok(wire::AccountBalancesPage { header: self.header, balances, cursor })
    }

    pub(crate) fn query_ledgers(self, message: &wire::QueryLedgersRequest) -> Result<wire::LedgersPage, Status> {
        let page = self.view.query_ledgers(convert::window(message.window.as_ref()));
        let (mut ledgers, cursor) = rendered(page, |ledger| self.render.ledger(ledger))?;
        ledgers.retain(|ledger| self.allows(ledger.id));
        Ok(wire::LedgersPage { header: self.header, ledgers, cursor })
    }

    pub(crate) fn query_accounts(self, message: &wire::QueryRequest) -> Result<wire::AccountsPage, Status> {
        let filter = convert::field_filter(message).map_err(invalid)?;
        let page = self.view.query_accounts(filter, convert::window(message.window.as_ref()));
        let (mut accounts, cursor) = rendered(page, |account| self.render.account(account))?;
        accounts.retain(|account| self.allows(account.ledger));
        Ok(wire::AccountsPage { header: self.header, accounts, cursor })
    }

    pub(crate) fn query_transfers(self, message: &wire::QueryRequest) -> Result<wire::TransfersPage, Status> {
        let filter = convert::field_filter(message).map_err(invalid)?;
        let page = self.view.query_transfers(filter, convert::window(message.window.as_ref()));
        let (mut transfers, cursor) = rendered(page, |transfer| self.render.transfer(transfer))?;
        transfers.retain(|transfer| self.allows(transfer.ledger));
        Ok(wire::TransfersPage { header: self.header, transfers, cursor })
    }
}
