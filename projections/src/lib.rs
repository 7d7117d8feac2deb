//! # annals-projections: projection runtime and read-model storage
//!
//! Workers that tail the event log of `annals-store` and keep read models current, in a
//! RocksDB instance of their own (`<data-dir>/read`).
//!
//! ## Key types
//!
//! - [`Projection`]: the role of a read-model builder — a name, a version, an event filter,
//!   a [`PoisonPolicy`] and `handle(&RecordedEvent, &mut ReadModelTx)`.
//! - [`ReadModelStore`]: the read-model database; [`ReadView`] reads the generation that
//!   serves a projection, [`ReadModelTx`] is all a handler may write through.
//! - [`ProjectionRuntime`]: one worker per projection; status, pause/resume/rewind,
//!   blue/green [`rebuild`](ProjectionRuntime::rebuild), parked events, and
//!   [`wait_for`](ProjectionRuntime::wait_for) for reading one's own writes.
//! - [`ProjectionError`]: the one error type; the codes clients see are given at the
//!   application's edge.
//! - [`catalog`]: the stream catalog, a built-in projection that lists streams by id
//!   prefix and category with their counts and last activity (the log itself finds
//!   streams only by the hash of their id).
//! - [`process`]: process managers — [`process::ProcessManager`] decides commands and
//!   deadlines per instance; its decisions run as a projection
//!   ([`process::ProcessProjection`]) that writes state, outbox and checkpoint in one batch,
//!   and a [`process::Dispatcher`] sends the outbox with idempotency keys, fires durable
//!   deadlines and parks commands that keep failing.
//! - `testkit` (feature `test-utils`): given/then for projections, one error of every
//!   variant; `process::testkit`: given/when/then for process managers.
//!
//! ## Invariants
//!
//! - **Exactly the events up to the checkpoint.** A worker writes a batch's read-model
//!   changes and the checkpoint in one `WriteBatch`: after any crash a read model is the
//!   fold of the events up to its checkpoint, none applied twice, none skipped. Batches
//!   are written in order; a batch handled while the one before it is still being written
//!   reads that batch's changes beneath its own, so it sees what the database will hold.
//!   The checkpoint that status and `wait_for` see moves as each batch's write returns,
//!   never before.
//! - **Never past the durable head.** Workers read through `EventStore::read_all`, which
//!   stops at the durable head, and wake on `subscribe_head`, which moves only after a
//!   commit is durable. Positions are gapless, so there is no gap detection.
//! - **Blue/green rebuilds.** A rebuild fills a new keyspace generation while the serving
//!   generation keeps answering and following the log; the take-over is one batch (active
//!   generation, rebuild record) followed by one in-memory switch, and the serving
//!   checkpoint never moves backwards in it. The old generation is dropped after a delay.
//! - **Commands once, deadlines once.** A process manager's commands are written in the
//!   batch of the event that decided them and sent with idempotency keys derived from that
//!   event's id; a deadline fires as an event whose id is derived from the deadline. A
//!   crash at any point repeats at most a send, never an effect.
//! - **A bad event does not stop the world.** A failing (or panicking) handler is retried
//!   with backoff, then its event is parked (continue policy) or the projection stops
//!   before it (stop policy), per projection.
//!
//! ## Dependencies
//!
//! Depends on `annals-store` only; must never depend on the `annals` package, on GraphQL or
//! on HTTP, and knows no business domain. `tests/dependency_rules.rs` of the workspace
//! checks it.

pub mod catalog;
mod error;
pub mod keys;
pub mod process;
mod projection;
mod runtime;
mod storage;
#[cfg(any(test, feature = "test-utils"))]
pub mod testkit;

pub use error::{HandlerError, ProjectionError};
pub use keys::Generation;
pub use projection::{PoisonPolicy, Projection, validate_name};
pub use runtime::{
    ProjectionRuntime, ProjectionState, ProjectionStatus, RebuildProgress, RuntimeOptions,
    build_until,
};
pub use storage::{
    ActiveRecord, ParkedEvent, ReadModelStore, ReadModelTx, ReadView, RebuildRecord,
};
