//! # annals: the event-sourced CQRS backend
//!
//! The `annals` package puts the pieces together: the e-commerce reference domain, its read
//! models, the GraphQL schema, the axum server, the `annals` command line and a sample log
//! of the domain for the benchmarks and tests. The engine lives in `annals-store` (the
//! event log) and `annals-projections` (read models).
//!
//! ## Invariants
//!
//! - The write path (commands → `annals_store::EventStore::append_multi`) and the read
//!   path (projections → read models) share nothing but the event log.
//! - Errors reach clients through one translation point; no internal detail leaks.
//!
//! ## Dependencies
//!
//! Depends on both engine crates; nothing depends on it.

pub mod audit;
pub mod cli;
pub mod contracts;
pub mod domain;
pub mod graphql;
pub mod read_models;
pub mod replay;
pub mod sample;
pub mod server;
