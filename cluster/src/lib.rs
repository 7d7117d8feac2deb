//! # annals-cluster: the Annals event log on a cluster
//!
//! Any number of Annals nodes share one log kept in NATS JetStream. One node writes at a
//! time; every node holds a full replica of the log in its own RocksDB (the embedded
//! store's format and indexes) and serves reads, projections and subscriptions from it.
//!
//! ## Key types
//!
//! - [`ClusterEventStore`]: an [`annals_store::EventStore`] (and `SnapshotStore`) whose
//!   appends go through the cluster's writer and whose reads are the local replica's.
//! - [`ClusterOptions`] and [`Role`]: the servers, the cluster's name, this node's id and
//!   whether it may write.
//! - [`ClusterError`]: why a node could not join its cluster. Once joined, the store
//!   speaks [`annals_store::StoreError`], like every store.
//! - [`names`]: the stream, subjects and key-value bucket a cluster uses.
//! - [`local`]: a NATS cluster on loopback, from the pinned nats-server, for tests,
//!   benchmarks and trying the cluster mode on one machine.
//!
//! ## How it works
//!
//! - **The log is one JetStream stream** (R3, `deny_delete`, `deny_purge`, no limits, so
//!   its sequence is gapless). Each message is one **commit group** of the writer: the
//!   records exactly as the embedded store encodes them, with positions, stream versions,
//!   event ids and the blake3 chain decided by the writer.
//! - **The writer** is the node holding the lease, a key of a key-value bucket (R3,
//!   compare-and-set, expiry). Its replica's writer thread publishes each group with
//!   `Nats-Expected-Last-Sequence` (the last group it holds: a writer that fell behind
//!   cannot append) and `Nats-Msg-Id` (a retried publish is not doubled), and writes the
//!   group locally only once JetStream acknowledged it.
//! - **Every node tails the stream** in order and applies the groups to its replica,
//!   checking positions, versions and the chain ([`annals_store::RocksEventStore::apply_groups`]).
//! - **Other nodes forward appends** to the writer over NATS request/reply and answer
//!   their caller once their own replica holds the result, so a node reads its own writes.
//! - **Subjects' keys** (crypto-shredding) are kept once for the cluster in a key-value
//!   bucket that every node's key store follows ([`ClusterEventStore::share_keys`]): a key
//!   is created there before any node seals with it, and purged there to forget its
//!   subject.
//! - **Failover.** When the writer stops renewing its lease the key expires; another node
//!   creates it, catches its replica up to the stream's last group, and writes on.
//!
//! ## Invariants
//!
//! - **Acknowledged means replicated.** An append is answered only after JetStream
//!   acknowledged its group: committed by a quorum of the stream's servers, each of which
//!   syncs every write (`sync_interval: always`, see `docs/cluster.md`).
//! - **Every replica is a prefix of the stream**, record for record: the writer writes
//!   only acknowledged groups, under their stream sequence, and other replicas apply the
//!   stream in order. So positions are gapless, appends atomic and the chain unbroken on
//!   every node, as in the embedded store.
//! - **At most once.** Every event gets its id before the first attempt, so an append
//!   retried after a failover or a lost answer commits at most once (event ids are
//!   permanent in every replica).
//! - **One writer.** Two nodes that both believe they write cannot both extend the stream
//!   from the same group: JetStream refuses the second.
//!
//! ## Dependencies
//!
//! Depends on `annals-store` (the replica, through its public replica API) and async-nats.
//! It knows nothing of GraphQL, HTTP, projections or the domain, and must never depend on
//! `annals-projections` or the `annals` package.

mod error;
mod follower;
mod forward;
mod health;
mod keys;
mod lease;
pub mod local;
pub mod names;
mod options;
mod replicator;
mod store;

pub use error::ClusterError;
pub use options::{ClusterOptions, Role};
pub use store::{ClusterEventStore, ClusterStatus, SharedKeyStore, remove_cluster};
