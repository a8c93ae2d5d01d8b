//! # tally-node
//!
//! One Tally replica: configuration, the gRPC gateway and admin API, group commit, metrics.
//!
//! # Layout
//! - [`admin`]: the `AdminService`: node and cluster status, membership, leadership, snapshots.
//! - [`authorise`]: which certificate's identity may call which gRPC service (asked by the
//!   edge layer in `observe` of every call).
//! - [`clock`]: wall-clock time behind a trait.
//! - [`config`]: the TOML configuration and its checks.
//! - [`connections`]: accepting connections: peers and clients told apart, each within its limit,
//!   idle clients closed.
//! - [`convert`]: wire types to ledger types and back, with field-naming errors.
//! - [`disk`]: the data directory's free space and its floor.
//! - [`gateway`]: the `LedgerService` any replica serves: limits, field checks, writes group
//!   committed on the leader, the one read path (read index, then a read view).
//! - `reads`: the answer to each read call from one read view.
//! - [`replica`]: who leads, and [`replica::Replica::on_leader`], which every leader-only ledger and
//!   admin call passes through (forwarded once, with its deadline).
//! - [`group_commit`]: the leader's batcher: concurrent requests into one log entry.
//! - [`memory`]: pretouching the replica's memory budget at startup.
//! - [`observe`]: Prometheus metrics, `/health` and `/ready`.
//! - [`server`]: `run(config, listeners, shutdown)`: data directory checks, bootstrap, services,
//!   the expiry proposer, clean shutdown.
//! - [`tls`]: the replica's certificates and keys, loaded, checked and reloaded without a restart.

pub mod admin;
pub mod authorise;
pub mod clock;
pub mod config;
pub mod connections;
pub mod convert;
pub mod disk;
pub mod gateway;
pub mod group_commit;
pub mod memory;
pub mod observe;
mod reads;
pub mod replica;
pub mod scheduling;
pub mod server;
pub mod signed;
pub mod tls;

pub use config::NodeConfig;
pub use server::{NodeError, run, run_from_config};
