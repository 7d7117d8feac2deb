//! # annals-projections: projection runtime and read-model storage
//!
//! Workers that tail the event log of `annals-store` and keep read models current. The
//! runtime arrives with the projections issue; this crate holds its place in the workspace
//! so the dependency direction is fixed from the start.
//!
//! ## Invariants (to hold once built)
//!
//! - A read model reflects exactly the events up to its checkpoint: the read-model changes
//!   of a batch and its checkpoint are written in one `WriteBatch`.
//! - Workers never read past the store's durable head.
//!
//! ## Dependencies
//!
//! Depends on `annals-store` only; must never depend on the `annals` package, GraphQL or
//! HTTP.
