//! # annals: the event-sourced CQRS backend
//!
//! The `annals` package puts the pieces together: the e-commerce reference domain, its read
//! models, the GraphQL schema, the axum server and the `annals` command line. The engine
//! lives in `annals-store` (the event log and the command side) and `annals-projections`
//! (read models).
//!
//! ## Key types
//!
//! - [`node::Node`]: the composition root. `Node::start(NodeConfig)` opens the log (a
//!   [`node::DataDir`] or memory), the read models, the projection runtime, the command
//!   side and the API state; `annals serve`, `annals replay`, the benchmarks and the tests
//!   all start their node there.
//! - [`error::ErrorCode`]: the one table of codes that clients, metrics and the command
//!   line see; [`error::HasCode`] gives every error type of the workspace its code.
//! - [`domain::Commerce`]: the reference domain's commands; [`sample`]: a sample log of
//!   the domain for the benchmarks and tests; [`read_models`]: its
//!   projections and queries; [`graphql`] and [`server`]: the API; [`audit`]: export and
//!   verification of the audit trail.
//!
//! ## Invariants
//!
//! - The write path (commands → `annals_store::EventStore::append_multi`) and the read
//!   path (projections → read models) share nothing but the event log.
//! - The API and the command side run over any `EventStore` (`annals_store::SharedStore`):
//!   the whole API runs over the in-memory store in tests.
//! - Errors reach clients through one translation point (`graphql::error`) with codes from
//!   one table (`error`); no internal detail leaks.
//!
//! ## Dependencies
//!
//! Depends on both engine crates, never on RocksDB or bincode directly (checked by
//! `tests/dependency_rules.rs`); nothing depends on it.

pub mod admin;
pub mod audit;
pub mod checkout;
pub mod cli;
pub mod console;
pub mod contracts;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod lifecycle;
pub mod node;
pub mod payments;
pub mod privacy;
pub mod read_models;
pub mod replay;
pub mod sample;
pub mod server;
pub mod time;
pub mod webhooks;
