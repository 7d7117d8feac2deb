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

/// Where a [`Replicator`] reports the outcome of one group: once, from any thread.
#[derive(Debug)]
pub struct Acknowledger {
    pub(crate) epoch: u64,
    pub(crate) after: u64,
    pub(crate) tx: crossbeam_channel::Sender<Ack>,
}

/// One group's outcome on its way back to the writer.
#[derive(Debug)]
pub(crate) struct Ack {
    pub(crate) epoch: u64,
    pub(crate) after: u64,
    pub(crate) result: Result<u64, ReplicationError>,
}

impl Acknowledger {
    /// Reports the group's sequence once the replicated log acknowledged it durably, or
    /// why it did not take it.
    pub fn acknowledge(self, result: Result<u64, ReplicationError>) {
        // A writer that stopped (the store closed) no longer waits for anything.
        let _ = self.tx.send(Ack {
            epoch: self.epoch,
            after: self.after,
            result,
        });
    }
}

/// Makes commit groups durable in a replicated log, in order.
///
/// The writer hands over one group after the other, each expecting the one before, and
/// goes on staging the next while the log replicates the earlier ones (a few groups are
/// in flight at once). So `publish` sends and returns; the acknowledgement comes through
/// the [`Acknowledger`]. Groups reach the log in the order of the calls. When one is not
/// taken, the writer gives up every group after it as well, and leads again only once
/// its replica has caught up with the log.
pub trait Replicator: Send + 'static {
    /// Starts appending `group` to the replicated log as the group right after
    /// `group.after`; reports through `ack` its sequence (`group.after + 1`) once the log
    /// acknowledged it durably, or why it did not take it.
    fn publish(&mut self, group: ReplicaGroup<'_>, ack: Acknowledger);
}
