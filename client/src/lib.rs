//! # tally-client: the Rust SDK of Tally
//!
//! A [`Client`] talks to a Tally cluster over gRPC: it finds the leader and follows it through
//! elections, retries what is safe to retry within a deadline you set, keeps a circuit breaker per
//! endpoint, and packs concurrent single calls into batches.
//!
//! ```no_run
//! use tally_client::{Client, NewAccount, NewLedger, NewTransfer, ResultCode, Security, new_id};
//! use rust_decimal::Decimal;
//! use std::str::FromStr;
//!
//! # async fn example() -> Result<(), tally_client::Error> {
//! // TALLY_CA, TALLY_CERT and TALLY_KEY name the CA and a principal's certificate and key.
//! let security = Security::from_env()?;
//! let client = Client::connect(&["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"], security).await?
//!     .with_deadline(std::time::Duration::from_secs(5));
//! client.create_ledgers(&[NewLedger::new(978, "EUR", 2)]).await?;
//! let (alice, bob) = (new_id(), new_id());
//! client.create_accounts(&[NewAccount::new(alice, 978, 100), NewAccount::new(bob, 978, 100)]).await?;
//! let payment = NewTransfer::new(new_id(), alice, bob, Decimal::from_str("12.50").unwrap(), 978, 1);
//! let code = client.create_transfer(payment).await?;
//! assert!(code.is_success(), "{}", code.description());
//! # Ok(()) }
//! ```
//!
//! ## Security
//! Replicas serve TLS 1.3 only, with hybrid post-quantum key exchange (X25519MLKEM768), and
//! want a principal's certificate from the cluster's CA ([`Security`]). The client checks that
//! every replica it reaches presents a replica's certificate of the cluster its own certificate
//! names.
//!
//! ## Ids and retries
//! Every event carries an id you choose; make them with [`new_id`] (time-ordered, 128-bit). A
//! request that fails with [`Error::Unavailable`] may or may not have been applied: send it again
//! with the same ids, and events applied the first time answer [`ResultCode::Exists`].
//!
//! ## Results
//! A write answers one [`ResultCode`] per event, in order. [`ResultCode::Ok`] and
//! [`ResultCode::Exists`] are successes ([`ResultCode::is_success`]); any other code changed
//! nothing, and [`ResultCode::description`] says why.
//!
//! ## Errors
//! [`Error`] is for calls that did not get an answer from the ledger: an unreachable cluster
//! ([`Error::Unavailable`], naming each endpoint's last error), a malformed request
//! ([`Error::InvalidArgument`], naming the field), a request above a limit.

#![warn(missing_docs)]

mod client;
mod error;
mod id;
mod model;
pub mod registry;
mod security;
mod signing;
mod transport;

pub use client::{
    BatchingStats, Client, ClusterStatus, DEADLINE_DEFAULT, EVENTS_PER_REQUEST_MAX, Membership, NodeStatus, Role,
    role_name,
};
pub use error::Error;
pub use id::{IdGenerator, id_milliseconds, new_id};
pub use model::{
    Account, AccountBalance, AccountFlags, AccountTransfersFilter, Ledger, NewAccount, NewLedger, NewTransfer, Page,
    PendingStatus, QueryFilter, Transfer, TransferFlags, Window,
};
/// The decimal type of amounts, re-exported so callers use the same version.
pub use rust_decimal::Decimal;
pub use security::{ClientTls, ENV_CA, ENV_CERTIFICATE, ENV_INSECURE_PLAINTEXT, ENV_KEY, Security};
pub use signing::{
    ENV_CLUSTER_ID, ENV_PRINCIPAL, ENV_SIGNING_KEY, ENV_SIGNING_PASSPHRASE_FILE, RequestSigning, read_passphrase,
};
/// The files a TLS identity is loaded from.
pub use tally_identity::tls::TlsFiles;
/// Amounts in the wire's grammar, parsed exactly (no sign, exponent or rounding).
pub use tally_proto::amount::{AmountSyntaxError, parse_amount};
/// The outcome of one event (see `ledger.proto`).
pub use tally_proto::v1::ResultCode;
pub use transport::{BREAKER_COOLDOWN, BREAKER_FAILURES};
