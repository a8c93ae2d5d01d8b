//! # tally-node
//!
//! One Tally replica: configuration, the gRPC gateway and admin API, group commit, metrics.
//!
//! # Layout
//! - [`config`]: the TOML configuration and its checks.

pub mod config;
