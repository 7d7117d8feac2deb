//! The seam between the writer and a replicated log: [`Replicator`].
//!
//! A [`crate::RocksEventStore`] opened with [`crate::RocksEventStore::open_replica`] is one
//! replica of a log whose order a replicated log (a cluster's) decides. Its writer works
//! as the embedded one does — it assigns positions, checks expectations and idempotency,
//! encodes records and extends the hash chain — but before it writes a commit group it
//! hands the group's records to the [`Replicator`], and writes only what the replicated
//! log acknowledged, under the sequence number the log gave it. Replicas that do not write
//! apply the log's groups in sequence order ([`crate::RocksEventStore::apply_groups`]),
//! checking that each continues their positions and chain.
//!
//! So every replica is a prefix of the replicated log, with the same records byte for byte,
//! and the invariants of the embedded store (gapless positions, atomic multi-stream
//! appends, permanent idempotency by event id, the chain) hold on each of them.

use crate::types::{Hash, Position};

/// One commit group on its way to the replicated log.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaGroup<'a> {
    /// The encoded group ([`crate::codec::GroupWriter`]).
    pub bytes: &'a [u8],
    /// The sequence of the last group this replica holds: the group must become the next
    /// one, or not be taken at all (fencing: a writer that lost its place cannot append).
    pub after: u64,
    /// The group's first position.
    pub first_position: Position,
    /// The group's last position.
    pub last_position: Position,
    /// The chain's hash after the group's last record: unique to this group's content and
    /// place, so it names the group when a publish is retried.
    pub tip: Hash,
}

/// Why the replicated log did not take a group. Nothing of the group is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationError {
    /// The log has a group after `after` that this replica has not applied: another
    /// writer wrote. The replica stops writing until it has caught up and leads again.
    Fenced,
    /// The log did not answer in time or refused for another reason (no quorum, a
    /// leader election). The group may still appear in the log: a retry must carry the
    /// same event ids.
    Unavailable(String),
}

/// Makes commit groups durable in a replicated log, in order. Called from the writer
/// thread, one group at a time: it may block.
pub trait Replicator: Send + 'static {
    /// Appends `group` to the replicated log as the group right after `group.after`, and
    /// returns its sequence (`group.after + 1`) once the log acknowledged it durably.
    fn replicate(&mut self, group: ReplicaGroup<'_>) -> Result<u64, ReplicationError>;
}
