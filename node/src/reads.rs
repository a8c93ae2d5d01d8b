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

/// What every answer is made from: the read view, a renderer on it, and the response's header.
pub(crate) struct Answers<'a> {
    view: &'a LedgerReadView,
    render: Renderer<'a, LedgerReadView>,
    header: Option<wire::ResponseHeader>,
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
        Answers { view, render: Renderer { storage: view }, header: Some(header) }
    }

    pub(crate) fn lookup_ledgers(
        self,
        message: &wire::LookupLedgersRequest,
    ) -> Result<wire::LookupLedgersResponse, Status> {
        let ledgers = lookups(self.view.lookup_ledgers(&message.ids), |ledger| wire::LedgerLookup {
            found: ledger.is_some(),
            ledger: ledger.map(|ledger| self.render.ledger(ledger)),
        })?;
        Ok(wire::LookupLedgersResponse { header: self.header, ledgers })
    }

    pub(crate) fn lookup_accounts(self, message: &wire::LookupRequest) -> Result<wire::LookupAccountsResponse, Status> {
        let accounts = lookups(self.view.lookup_accounts(&ids(message)), |account| wire::AccountLookup {
            found: account.is_some(),
            account: account.map(|account| self.render.account(account)),
        })?;
        Ok(wire::LookupAccountsResponse { header: self.header, accounts })
    }

    pub(crate) fn lookup_transfers(
        self,
        message: &wire::LookupRequest,
    ) -> Result<wire::LookupTransfersResponse, Status> {
        let transfers = lookups(self.view.lookup_transfers(&ids(message)), |transfer| wire::TransferLookup {
            found: transfer.is_some(),
            transfer: transfer.map(|transfer| self.render.transfer(transfer)),
        })?;
        Ok(wire::LookupTransfersResponse { header: self.header, transfers })
    }

    pub(crate) fn get_account_transfers(
        self,
        message: &wire::AccountTransfersRequest,
    ) -> Result<wire::TransfersPage, Status> {
        let filter = convert::account_transfers_filter(message).map_err(invalid)?;
        let (transfers, cursor) =
            rendered(self.view.get_account_transfers(filter), |transfer| self.render.transfer(transfer))?;
        Ok(wire::TransfersPage { header: self.header, transfers, cursor })
    }

    pub(crate) fn get_account_balances(
        self,
        message: &wire::AccountBalancesRequest,
    ) -> Result<wire::AccountBalancesPage, Status> {
        let account_id = convert::u128_from(message.account_id.as_ref());
        let page = self.view.get_account_balances(account_id, convert::window(message.window.as_ref()));
        let scale = self.render.account_scale(account_id);
        let (balances, cursor) = rendered(page, |balance| self.render.balance(balance, scale))?;
        Ok(wire::AccountBalancesPage { header: self.header, balances, cursor })
    }

    pub(crate) fn query_ledgers(self, message: &wire::QueryLedgersRequest) -> Result<wire::LedgersPage, Status> {
        let page = self.view.query_ledgers(convert::window(message.window.as_ref()));
        let (ledgers, cursor) = rendered(page, |ledger| self.render.ledger(ledger))?;
        Ok(wire::LedgersPage { header: self.header, ledgers, cursor })
    }

    pub(crate) fn query_accounts(self, message: &wire::QueryRequest) -> Result<wire::AccountsPage, Status> {
        let filter = convert::field_filter(message).map_err(invalid)?;
        let page = self.view.query_accounts(filter, convert::window(message.window.as_ref()));
        let (accounts, cursor) = rendered(page, |account| self.render.account(account))?;
        Ok(wire::AccountsPage { header: self.header, accounts, cursor })
    }

    pub(crate) fn query_transfers(self, message: &wire::QueryRequest) -> Result<wire::TransfersPage, Status> {
        let filter = convert::field_filter(message).map_err(invalid)?;
        let page = self.view.query_transfers(filter, convert::window(message.window.as_ref()));
        let (transfers, cursor) = rendered(page, |transfer| self.render.transfer(transfer))?;
        Ok(wire::TransfersPage { header: self.header, transfers, cursor })
    }
}
