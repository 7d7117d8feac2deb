//! The writer thread: group commit with per-request results, pipelined with the WAL sync.
//!
//! It blocks for the first request, drains whatever else is queued (up to the event and
//! byte caps), checks each request against the state the groups before it have built, and
//! writes one `WriteBatch`. There is no timer: while one fsync runs the queue fills by
//! itself, so the group size adapts to the load with no added latency.
//!
//! With `Fsync` the database runs with `manual_wal_flush`: a write only appends to RocksDB's
//! WAL buffer, and the [`Syncer`] thread makes the WAL durable with `flush_wal(true)`. So
//! the writer stages and writes group N+1 while group N is being synced, and one fsync
//! covers every group written while the previous one ran. Nobody is answered and the
//! durable head does not move until a group's sync returned: a caller, a subscriber of
//! the head and a reader (all reads stop at the durable head) never see an event that
//! could still be lost. Failures and duplicates of a group are answered after its sync too,
//! because they were decided against state that becomes durable only then.
//!
//! The writer owns the next position, the chain tip and the stream-version cache, so none
//! of them needs a lock and every position is assigned exactly once.
//!
//! ## Storage failures
//!
//! After a failed WAL write or sync (a full disk, an I/O error) RocksDB keeps a background
//! error and refuses every later write, and the Rust binding cannot call `DB::Resume`. So
//! the store enters a failed state: appends are answered with `Storage` at once, and the
//! writer retries, with a backoff, to reopen the database in-process:
//!
//! 1. stop the syncer (it answers what it holds with `Storage`: nothing of it is
//!    acknowledged, and the durable head stays at the last acknowledged position);
//! 2. move readers to a read-only instance of the same directory (it takes no lock and
//!    writes nothing, so it opens on a full disk) and close the failed instance once the
//!    reads in flight on it have dropped their handle, which releases the lock;
//! 3. open the database for writing again (this fails while there is no room: stay failed
//!    and retry later, readers keep the read-only instance), delete every record above the
//!    acknowledged head (written by failed groups, maybe on disk, never acknowledged) and
//!    sync that;
//! 4. re-read the tip, which must be the acknowledged head, clear the version cache, start
//!    a new syncer, hand the new instance to readers, and take appends again.
//!
//! Readers read the head before they take the handle, and the new instance is handed to
//! readers before the head can move past the old one, so a reader never looks for a
//! position its handle does not have.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use uuid::Uuid;

use super::{
    DbSlot, WriterStats, cf, decode_at, indexed_stream_version, open_read_only_db, open_writable,
    recover_tip, truncate_above,
};
use crate::cache::GenerationalCache;
use crate::codec::{self, GroupWriter, RecordFields};
use crate::error::StoreError;
use crate::keys::{self, CF_EVENT_IDS, CF_EVENTS, CF_META, CF_STREAMS, EventIdEntry, StreamRun};
use crate::replica::{Ack, Acknowledger, ReplicaGroup, ReplicationError, Replicator};
use crate::store::{Durability, StoreOptions};
use crate::types::{
    AppendResult, ExpectedVersion, Hash, MultiAppendResult, Position, StreamAppend, StreamId,
    Timestamp,
};

pub(crate) enum WriteRequest {
    Append {
        appends: Vec<StreamAppend>,
        events: usize,
        bytes: usize,
        reply: oneshot::Sender<Result<MultiAppendResult, StoreError>>,
        /// Released when the request is answered, making room for the next caller.
        _permit: OwnedSemaphorePermit,
    },
    /// Groups of the replicated log, in sequence order, to apply to this replica.
    Apply {
        groups: Vec<(u64, Vec<u8>)>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
        _permit: OwnedSemaphorePermit,
    },
    /// Start writing: this replica holds the write lease and the replicated log's last
    /// group is `after`.
    Lead {
        after: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
        _permit: OwnedSemaphorePermit,
    },
    /// Stop writing (the lease is gone); answered once nothing is in flight.
    Follow {
        reply: oneshot::Sender<()>,
        _permit: OwnedSemaphorePermit,
    },
    Shutdown,
}

/// What the writer knows of an event id it wrote in the group being built.
pub(crate) struct PendingId {
    entry: EventIdEntry,
    stream: StreamId,
    stream_version: u64,
}

/// The state a group builds on top of the committed state; merged in only after the
/// batch is durable, so a failed write leaves the writer as it was.
struct Group {
    batch: WriteBatch,
    next_position: Position,
    tip: Hash,
    versions: HashMap<StreamId, u64>,
    ids: HashMap<Uuid, PendingId>,
    recorded_at: Timestamp,
    events: u64,
    /// The group's records as the replicated log carries them (replicas only).
    wire: Option<GroupWriter>,
}

/// The first wait before reopening the database after a storage failure.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two reopen attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How long one reopen attempt waits for reads in flight to drop the failed instance.
const RETIRE_WAIT: Duration = Duration::from_secs(1);

/// The failed state: why appends are refused and when to try reopening.
struct Recovery {
    error: rocksdb::Error,
    next_attempt: Instant,
    backoff: Duration,
    /// Readers were moved to a read-only instance.
    readers_moved: bool,
    /// The failed read-write instance, waiting for the reads in flight on it to finish so
    /// that it can be closed.
    retired: Option<Arc<DB>>,
}

/// What [`Writer::new`] needs.
pub(crate) struct WriterSetup {
    pub(crate) db: Arc<DB>,
    pub(crate) slot: Arc<DbSlot>,
    pub(crate) path: PathBuf,
    pub(crate) options: StoreOptions,
    pub(crate) head: Position,
    pub(crate) tip: Hash,
    pub(crate) head_tx: watch::Sender<Position>,
    pub(crate) stats: Arc<WriterStats>,
    pub(crate) syncer: Option<(Sender<Written>, JoinHandle<()>)>,
    pub(crate) failure: Failure,
    pub(crate) replication: Option<Replication>,
}

/// A replica's writer state: where its groups go and where it is in the replicated log.
///
/// While it leads, the writer stages each group on top of the groups still in flight
/// (published, not yet acknowledged): `Writer::head`, `tip` and the version cache then
/// describe the staged log, and the fields below the written one. A group is written and
/// answered when its acknowledgement arrives, in order; when one fails, every group in
/// flight is given up and the writer falls back to the written state.
pub(crate) struct Replication {
    pub(crate) replicator: Box<dyn Replicator>,
    /// The sequence of the last group in this replica.
    pub(crate) sequence: u64,
    pub(crate) sequence_tx: watch::Sender<u64>,
    /// Whether this replica writes (holds the lease and has caught up).
    pub(crate) leading: Arc<AtomicBool>,
    /// The last group's buffer, reused for the next.
    pub(crate) spare: Vec<u8>,
    /// The sequence the next published group follows.
    pub(crate) staged: u64,
    /// The head and chain tip of what is written.
    pub(crate) written_head: Position,
    pub(crate) written_tip: Hash,
    /// Groups published and not yet written, oldest first.
    pub(crate) inflight: VecDeque<InFlight>,
    /// Caller-supplied event ids of the groups in flight: a retry of one of them is a
    /// duplicate, not a new append.
    pub(crate) pending_ids: HashMap<Uuid, PendingId>,
    pub(crate) acks_tx: Sender<Ack>,
    pub(crate) acks_rx: Receiver<Ack>,
    /// Bumped when the groups in flight are given up: their late acknowledgements are
    /// ignored.
    pub(crate) epoch: u64,
}

impl Replication {
    pub(crate) fn new(
        replicator: Box<dyn Replicator>,
        sequence: u64,
        sequence_tx: watch::Sender<u64>,
        leading: Arc<AtomicBool>,
        head: Position,
        tip: Hash,
    ) -> Self {
        let (acks_tx, acks_rx) = crossbeam_channel::unbounded();
        Self {
            replicator,
            sequence,
            sequence_tx,
            leading,
            spare: Vec::new(),
            staged: sequence,
            written_head: head,
            written_tip: tip,
            inflight: VecDeque::new(),
            pending_ids: HashMap::new(),
            acks_tx,
            acks_rx,
            epoch: 0,
        }
    }
}

/// Most groups in flight at once: enough to keep the replicated log busy while the next
/// group is staged, few enough that groups stay large (one message each).
const MAX_INFLIGHT: usize = 2;

/// A published group waiting for its acknowledgement (or a group with nothing to
/// publish, whose answers wait for the groups before it).
pub(crate) struct InFlight {
    /// The sequence it follows; `None` when nothing was published.
    after: Option<u64>,
    result: Option<Result<u64, ReplicationError>>,
    batch: WriteBatch,
    outcomes: Vec<Outcome>,
    last: Position,
    tip: Hash,
    ids: Vec<Uuid>,
    events: u64,
}

pub(crate) struct Writer {
    /// The read-write instance (a read-only one while the store is failed).
    db: Arc<DB>,
    /// The handle readers use; swapped on recovery.
    slot: Arc<DbSlot>,
    path: PathBuf,
    options: StoreOptions,
    write_options: WriteOptions,
    /// The last position written (with `Fsync`, possibly not yet synced).
    head: Position,
    tip: Hash,
    versions: GenerationalCache<StreamId, u64>,
    head_tx: watch::Sender<Position>,
    stats: Arc<WriterStats>,
    /// Reused across records to avoid an allocation per event.
    buffer: Vec<u8>,
    /// With `Fsync`: where written groups go to be synced, and the syncer thread.
    syncer: Option<(Sender<Written>, JoinHandle<()>)>,
    failure: Failure,
    /// `Some` while appends are refused after a storage failure.
    recovery: Option<Recovery>,
    /// `Some` for a replica of a replicated log.
    replication: Option<Replication>,
}

type Reply = oneshot::Sender<Result<MultiAppendResult, StoreError>>;

/// A request's answer waiting to be sent; the permit is released with it, making room for
/// the next caller.
type Outcome = (
    Reply,
    Result<MultiAppendResult, StoreError>,
    OwnedSemaphorePermit,
);

/// A written group on its way to durability.
pub(crate) struct Written {
    /// The writer's head once this group was written: durable once synced.
    upto: Position,
    outcomes: Vec<Outcome>,
}

/// The first storage failure (a failed WAL write or sync), shared by the writer, the syncer
/// and the store. While it is set the store takes no appends (RocksDB itself refuses writes
/// after one): what the failed write or sync covered may or may not be on disk. The writer
/// clears it once it has reopened the database and removed that unacknowledged tail.
pub(crate) type Failure = Arc<Mutex<Option<rocksdb::Error>>>;

fn set_failure(failure: &Failure, error: &rocksdb::Error) {
    failure
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(|| error.clone());
}

fn failure_of(failure: &Failure) -> Option<rocksdb::Error> {
    failure
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The thread that makes written groups durable and only then answers their callers and
/// advances the durable head (used with `Fsync`).
pub(crate) struct Syncer {
    db: Arc<DB>,
    durable: Position,
    head_tx: watch::Sender<Position>,
    stats: Arc<WriterStats>,
    failure: Failure,
}

/// Starts a syncer thread for `db`, whose durable head is `durable`.
pub(crate) fn spawn_syncer(
    db: Arc<DB>,
    durable: Position,
    head_tx: watch::Sender<Position>,
    stats: Arc<WriterStats>,
    failure: Failure,
) -> Result<(Sender<Written>, JoinHandle<()>), StoreError> {
    let (written_tx, written_rx) = crossbeam_channel::unbounded();
    let syncer = Syncer::new(db, durable, head_tx, stats, failure);
    let handle = std::thread::Builder::new()
        .name("annals-syncer".into())
        .spawn(move || syncer.run(written_rx))
        .map_err(|source| StoreError::Io {
            what: "cannot start the WAL syncer thread".into(),
            source,
        })?;
    Ok((written_tx, handle))
}

impl Syncer {
    fn new(
        db: Arc<DB>,
        durable: Position,
        head_tx: watch::Sender<Position>,
        stats: Arc<WriterStats>,
        failure: Failure,
    ) -> Self {
        Self {
            db,
            durable,
            head_tx,
            stats,
            failure,
        }
    }

    pub(crate) fn run(mut self, written: Receiver<Written>) {
        let mut pending: Vec<Written> = Vec::new();
        while let Ok(first) = written.recv() {
            pending.push(first);
            // Everything written while the previous sync ran shares this one.
            pending.extend(written.try_iter());
            let upto = pending.last().map_or(self.durable, |w| w.upto);
            let mut synced = Ok(());
            if upto > self.durable {
                synced = match failure_of(&self.failure) {
                    Some(error) => Err(error),
                    None => {
                        let syncing = Instant::now();
                        let result = self.db.flush_wal(true);
                        add_elapsed(&self.stats.sync_nanos, syncing);
                        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                        result
                    }
                };
            }
            match synced {
                Ok(()) => {
                    if upto > self.durable {
                        self.durable = upto;
                        // Announce durability before answering, so a caller that reads
                        // right after its append sees its own events.
                        self.head_tx.send_replace(upto);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "WAL sync failed; appends are refused until the database is reopened");
                    set_failure(&self.failure, &error);
                    for w in &mut pending {
                        fail_unanswered(&mut w.outcomes, &error);
                    }
                }
            }
            for w in pending.drain(..) {
                answer(w.outcomes, &self.stats);
            }
        }
    }
}

/// Turns every successful outcome into a storage error: none of them is acknowledged.
fn fail_unanswered(outcomes: &mut [Outcome], error: &rocksdb::Error) {
    for (_, outcome, _) in outcomes {
        if outcome.is_ok() {
            *outcome = Err(StoreError::Storage(error.clone()));
        }
    }
}

fn answer(outcomes: Vec<Outcome>, stats: &WriterStats) {
    for (reply, outcome, permit) in outcomes {
        let counter = if outcome.is_ok() {
            &stats.appends
        } else {
            &stats.failed_appends
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // A caller that stopped waiting is no reason to fail the others.
        let _ = reply.send(outcome);
        drop(permit);
    }
}

impl Writer {
    pub(crate) fn new(setup: WriterSetup) -> Self {
        // Never `sync` here: with `Fsync` the syncer thread makes the WAL durable (the
        // database runs with `manual_wal_flush`), with `Buffered` nobody does.
        let write_options = WriteOptions::default();
        Self {
            syncer: setup.syncer,
            failure: setup.failure,
            versions: GenerationalCache::new(setup.options.stream_cache_capacity.max(2)),
            db: setup.db,
            slot: setup.slot,
            path: setup.path,
            options: setup.options,
            write_options,
            head: setup.head,
            tip: setup.tip,
            head_tx: setup.head_tx,
            stats: setup.stats,
            buffer: Vec::with_capacity(1024),
            recovery: None,
            replication: setup.replication,
        }
    }

    pub(crate) fn run(mut self, requests: Receiver<WriteRequest>) {
        let mut group: Vec<(Vec<StreamAppend>, Reply, OwnedSemaphorePermit)> = Vec::new();
        loop {
            self.notice_failure();
            let idle = Instant::now();
            let inflight = self
                .replication
                .as_ref()
                .filter(|r| !r.inflight.is_empty())
                .map(|r| r.acks_rx.clone());
            let received = match self.recovery.as_ref().map(|r| r.next_attempt) {
                // Groups in flight: an acknowledgement is as much a reason to wake.
                None if inflight.is_some() => {
                    let acks = inflight.expect("checked");
                    crossbeam_channel::select! {
                        recv(requests) -> request => request.map_err(|_| RecvTimeoutError::Disconnected),
                        recv(acks) -> ack => {
                            if let Ok(ack) = ack {
                                self.take_ack(ack);
                            }
                            self.settle(usize::MAX);
                            continue;
                        }
                    }
                }
                None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
                // While failed, retry the reopen on time even if no append comes.
                Some(at) => requests.recv_deadline(at),
            };
            let first = match received {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => {
                    self.try_recover();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.settle(0);
                    self.stop_syncer();
                    return;
                }
            };
            add_elapsed(&self.stats.idle_nanos, idle);
            let mut shutdown = false;
            let (mut events, mut bytes) = (0usize, 0usize);
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    WriteRequest::Shutdown => {
                        shutdown = true;
                        break;
                    }
                    WriteRequest::Append {
                        appends,
                        events: n,
                        bytes: b,
                        reply,
                        _permit,
                    } => {
                        events += n;
                        bytes += b;
                        group.push((appends, reply, _permit));
                    }
                    control => {
                        // Control requests take effect in order: the appends before one
                        // commit first.
                        if !group.is_empty() {
                            self.commit(&mut group);
                            (events, bytes) = (0, 0);
                        }
                        self.control(control);
                    }
                }
                if events >= self.options.max_commit_events
                    || bytes >= self.options.max_commit_bytes
                {
                    break;
                }
                next = requests.try_recv().ok();
            }
            if !group.is_empty() {
                self.commit(&mut group);
            }
            if shutdown {
                self.settle(0);
                // Whatever was queued behind the shutdown is refused, not dropped silently.
                while let Ok(request) = requests.try_recv() {
                    match request {
                        WriteRequest::Append { reply, .. } => {
                            let _ = reply.send(Err(StoreError::Closed));
                        }
                        WriteRequest::Apply { reply, .. } => {
                            let _ = reply.send(Err(StoreError::Closed));
                        }
                        WriteRequest::Lead { reply, .. } => {
                            let _ = reply.send(Err(StoreError::Closed));
                        }
                        WriteRequest::Follow { reply, .. } => {
                            let _ = reply.send(());
                        }
                        WriteRequest::Shutdown => {}
                    }
                }
                self.stop_syncer();
                if self.recovery.is_none()
                    && let Err(e) = self.db.flush_wal(true)
                {
                    tracing::error!(error = %e, "final WAL sync failed");
                }
                return;
            }
        }
    }

    /// Lets the syncer finish what it was given (answering everyone) and joins it.
    fn stop_syncer(&mut self) {
        if let Some((sender, handle)) = self.syncer.take() {
            drop(sender);
            if handle.join().is_err() {
                tracing::error!("the WAL syncer thread panicked");
            }
        }
    }

    fn commit(&mut self, requests: &mut Vec<(Vec<StreamAppend>, Reply, OwnedSemaphorePermit)>) {
        self.notice_failure();
        if self
            .recovery
            .as_ref()
            .is_some_and(|r| Instant::now() >= r.next_attempt)
        {
            self.try_recover();
        }
        if let Some(recovery) = &self.recovery {
            let error = &recovery.error;
            let outcomes: Vec<Outcome> = requests
                .drain(..)
                .map(|(_, reply, permit)| (reply, Err(StoreError::Storage(error.clone())), permit))
                .collect();
            answer(outcomes, &self.stats);
            return;
        }
        if let Some(replication) = &self.replication
            && !replication.leading.load(Ordering::Acquire)
        {
            let outcomes: Vec<Outcome> = requests
                .drain(..)
                .map(|(_, reply, permit)| (reply, Err(StoreError::NotWriter), permit))
                .collect();
            answer(outcomes, &self.stats);
            return;
        }
        let mut group = Group {
            batch: WriteBatch::default(),
            next_position: self.head.next(),
            tip: self.tip,
            versions: HashMap::new(),
            ids: HashMap::new(),
            recorded_at: Timestamp::now(),
            events: 0,
            wire: self
                .replication
                .as_mut()
                .map(|r| GroupWriter::new(std::mem::take(&mut r.spare))),
        };
        // Each permit travels with its reply and is released when the caller is answered.
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(requests.len());
        let staging = Instant::now();
        for (appends, reply, permit) in requests.drain(..) {
            let outcome = self.stage(appends, &mut group);
            outcomes.push((reply, outcome, permit));
        }
        add_elapsed(&self.stats.stage_nanos, staging);

        if self.replication.is_some() {
            self.commit_replicated(group, outcomes);
            return;
        }
        if group.events > 0 {
            let last = Position(group.next_position.0 - 1);
            let batch = std::mem::take(&mut group.batch);
            let writing = Instant::now();
            let written = self.db.write_opt(batch, &self.write_options);
            add_elapsed(&self.stats.write_nanos, writing);
            match written {
                Ok(()) => {
                    self.head = last;
                    self.tip = group.tip;
                    for (stream, version) in group.versions {
                        self.versions.insert(stream, version);
                    }
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.events.fetch_add(group.events, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::error!(%error, "group commit failed; no append of it is acknowledged");
                    fail_unanswered(&mut outcomes, &error);
                    // RocksDB may or may not hold the batch, and refuses writes from now on:
                    // the syncer acknowledges nothing more, and the writer reopens.
                    set_failure(&self.failure, &error);
                    self.notice_failure();
                }
            }
        }
        match &self.syncer {
            Some((sender, _)) => {
                let written = Written {
                    upto: self.head,
                    outcomes,
                };
                if let Err(unsent) = sender.send(written) {
                    // The syncer is gone (it panicked): nothing more can become durable.
                    tracing::error!("the WAL syncer stopped; appends are refused");
                    let mut outcomes = unsent.0.outcomes;
                    for (_, outcome, _) in &mut outcomes {
                        if outcome.is_ok() {
                            *outcome = Err(StoreError::Closed);
                        }
                    }
                    answer(outcomes, &self.stats);
                }
            }
            None => {
                // Buffered: written is as durable as it gets. Announce before answering, so
                // a caller that reads right after its append sees its own events.
                announce(&self.head_tx, self.head);
                answer(outcomes, &self.stats);
            }
        }
    }

    /// Enters the failed state if a write or sync failed since the last look.
    fn notice_failure(&mut self) {
        if self.recovery.is_some() {
            return;
        }
        if let Some(error) = failure_of(&self.failure) {
            self.recovery = Some(Recovery {
                error,
                next_attempt: Instant::now() + FIRST_RETRY,
                backoff: FIRST_RETRY,
                readers_moved: false,
                retired: None,
            });
        }
    }

    /// One attempt to leave the failed state; on failure the next one is scheduled later.
    fn try_recover(&mut self) {
        let Some(mut recovery) = self.recovery.take() else {
            return;
        };
        match self.reopen(&mut recovery) {
            Ok(removed) => {
                tracing::warn!(
                    head = self.head.0,
                    removed,
                    "event store reopened after a storage failure; appends resume"
                );
            }
            Err(error) => {
                recovery.backoff = (recovery.backoff * 2).min(MAX_RETRY);
                recovery.next_attempt = Instant::now() + recovery.backoff;
                tracing::warn!(%error, retry_in = ?recovery.backoff, "cannot reopen the event store yet");
                if let StoreError::Storage(error) = error {
                    recovery.error = error;
                }
                self.recovery = Some(recovery);
            }
        }
    }

    /// Closes the failed instance and opens the database again (see the module docs);
    /// returns how many unacknowledged records it removed.
    fn reopen(&mut self, recovery: &mut Recovery) -> Result<u64, StoreError> {
        // Everything the syncer holds is answered (as failed) before the head is read.
        self.stop_syncer();
        self.give_up_inflight(&ReplicationError::Unavailable(
            "the replica's storage failed".into(),
        ));
        if !recovery.readers_moved {
            let read_only = Arc::new(open_read_only_db(&self.path)?);
            self.slot.set(read_only.clone());
            recovery.retired = Some(std::mem::replace(&mut self.db, read_only));
            recovery.readers_moved = true;
        }
        if let Some(failed) = recovery.retired.take() {
            // Closing the instance releases its lock; reads in flight hold it briefly.
            let deadline = Instant::now() + RETIRE_WAIT;
            let mut failed = failed;
            loop {
                match Arc::try_unwrap(failed) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        failed = still_shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still_shared) => {
                        recovery.retired = Some(still_shared);
                        return Err(StoreError::Locked {
                            path: self.path.clone(),
                        });
                    }
                }
            }
        }
        let db = open_writable(&self.path, self.options.durability)?;
        let acknowledged = *self.head_tx.borrow();
        let removed = truncate_above(&db, acknowledged)?;
        let (head, tip) = recover_tip(&db)?;
        if head != acknowledged {
            // Acknowledged events are missing: taking appends would reuse their positions.
            tracing::error!(
                head = head.0,
                acknowledged = acknowledged.0,
                "the reopened log ends before the acknowledged head"
            );
            return Err(StoreError::Corruption {
                position: head.next(),
            });
        }
        let db = Arc::new(db);
        if self.options.durability == Durability::Fsync {
            self.syncer = Some(spawn_syncer(
                db.clone(),
                head,
                self.head_tx.clone(),
                self.stats.clone(),
                self.failure.clone(),
            )?);
        }
        self.head = head;
        self.tip = tip;
        self.versions.clear();
        if let Some(replication) = &mut self.replication {
            // The log may hold the failed group: the replica catches up before it leads.
            replication.sequence = read_log_sequence(&db)?;
            replication.staged = replication.sequence;
            replication.written_head = head;
            replication.written_tip = tip;
            replication.sequence_tx.send_replace(replication.sequence);
            replication.leading.store(false, Ordering::Release);
        }
        // Readers get the new instance before the head can move past the old one.
        self.slot.set(db.clone());
        self.db = db;
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        Ok(removed)
    }

    /// Checks one request against the group's state and, if it passes, adds its events to
    /// the batch. Nothing is added to the batch unless every check passed.
    fn stage(
        &mut self,
        appends: Vec<StreamAppend>,
        group: &mut Group,
    ) -> Result<MultiAppendResult, StoreError> {
        // Idempotency first: an identical retry is answered with the original result
        // whatever its expected version says now.
        let mut duplicates = Vec::with_capacity(appends.len());
        for append in &appends {
            duplicates.push(self.find_duplicate(append, group)?);
        }
        if duplicates.iter().all(Option::is_some) {
            let streams: Vec<AppendResult> = duplicates.into_iter().flatten().collect();
            return Ok(MultiAppendResult::from_streams(streams, true));
        }
        if let Some(index) = duplicates.iter().position(Option::is_some) {
            // Part of this commit is already in the log: not a retry of it.
            let event_id = appends[index].events[0].event_id.unwrap_or_default();
            let existing = duplicates[index]
                .as_ref()
                .map_or(Position::ZERO, |d| d.first_position);
            return Err(StoreError::IdempotencyConflict { event_id, existing });
        }

        let mut current = Vec::with_capacity(appends.len());
        for append in &appends {
            let actual = self.current_version(&append.stream_id, &group.versions)?;
            // A deleted stream reads as empty, so "no stream" also accepts a stream whose
            // every event is deleted: it is recreated, its versions continuing. The lookup
            // runs only when the check has already failed.
            let recreates = matches!(
                append.expected,
                ExpectedVersion::NoStream | ExpectedVersion::Exact(0)
            ) && actual > 0
                && super::lifecycle::deleted_through(&self.db, &append.stream_id)? == actual;
            if !append.expected.accepts(actual) && !recreates {
                return Err(StoreError::WrongExpectedVersion {
                    stream: append.stream_id.clone(),
                    expected: append.expected,
                    actual,
                });
            }
            current.push(actual);
        }

        let events_cf = cf(&self.db, CF_EVENTS);
        let streams_cf = cf(&self.db, CF_STREAMS);
        let ids_cf = cf(&self.db, CF_EVENT_IDS);
        let mut results = Vec::with_capacity(appends.len());
        for (append, actual) in appends.into_iter().zip(current) {
            let count = append.events.len() as u32;
            let first_position = group.next_position;
            let first_version = actual + 1;
            if let Some(wire) = &mut group.wire {
                wire.begin_append(count);
            }
            put_run(
                &mut group.batch,
                streams_cf,
                append.stream_id.as_str(),
                first_version,
                StreamRun {
                    first_position,
                    count,
                },
            );
            for (index, event) in append.events.into_iter().enumerate() {
                let position = group.next_position;
                let stream_version = first_version + index as u64;
                let supplied = event.event_id.is_some();
                let event_id = event.event_id.unwrap_or_else(Uuid::now_v7);
                let fields = RecordFields {
                    position,
                    stream_id: append.stream_id.as_str(),
                    stream_version,
                    event_id: &event_id,
                    event_type: &event.event_type,
                    schema_version: event.schema_version,
                    recorded_at: group.recorded_at,
                    metadata: &event.metadata,
                    payload: &event.payload,
                };
                self.buffer.clear();
                let hash = codec::encode_new_record(&fields, &group.tip, &mut self.buffer);
                if let Some(wire) = &mut group.wire {
                    wire.push_record(&self.buffer);
                }
                let entry = EventIdEntry {
                    position,
                    index: index as u32,
                    append_len: count,
                };
                put_record(
                    &mut group.batch,
                    (events_cf, ids_cf),
                    &self.buffer,
                    &event_id,
                    entry,
                );
                if supplied {
                    group.ids.insert(
                        event_id,
                        PendingId {
                            entry,
                            stream: append.stream_id.clone(),
                            stream_version,
                        },
                    );
                }
                group.tip = hash;
                group.next_position = position.next();
                group.events += 1;
            }
            let last_version = actual + u64::from(count);
            results.push(AppendResult {
                first_version,
                last_version,
                first_position,
                last_position: Position(group.next_position.0 - 1),
                duplicate: false,
                stream_id: append.stream_id.clone(),
            });
            group.versions.insert(append.stream_id, last_version);
        }
        Ok(MultiAppendResult::from_streams(results, false))
    }

    /// The stream's version as of the group built so far: the group's own writes, then the
    /// cache, then the index (no read-before-write on a cache hit).
    fn current_version(
        &mut self,
        stream: &StreamId,
        pending: &HashMap<StreamId, u64>,
    ) -> Result<u64, StoreError> {
        if let Some(version) = pending.get(stream) {
            return Ok(*version);
        }
        if let Some(version) = self.versions.get(stream) {
            return Ok(*version);
        }
        let version = indexed_stream_version(&self.db, &keys::stream_key(stream.as_str()))?;
        self.versions.insert(stream.clone(), version);
        Ok(version)
    }

    /// `Some(original result)` when every event of `append` has a caller id and they are
    /// exactly the events of one earlier append to the same stream; `None` when none of its
    /// ids is known; `IdempotencyConflict` for anything in between.
    fn find_duplicate(
        &self,
        append: &StreamAppend,
        group: &Group,
    ) -> Result<Option<AppendResult>, StoreError> {
        // Generated ids cannot be in the log yet: the common case needs no lookup at all.
        if append.events.iter().all(|e| e.event_id.is_none()) {
            return Ok(None);
        }
        let n = append.events.len();
        let mut found: Vec<Option<(EventIdEntry, Uuid)>> = Vec::with_capacity(n);
        let mut first_known: Option<(Uuid, Position)> = None;
        let mut stream_of_first: Option<(StreamId, u64)> = None;
        for (i, event) in append.events.iter().enumerate() {
            let Some(id) = event.event_id else {
                found.push(None);
                continue;
            };
            let pending = group.ids.get(&id).or_else(|| {
                self.replication
                    .as_ref()
                    .and_then(|r| r.pending_ids.get(&id))
            });
            let entry = if let Some(pending) = pending {
                if i == 0 {
                    stream_of_first = Some((pending.stream.clone(), pending.stream_version));
                }
                Some(pending.entry)
            } else {
                match self
                    .db
                    .get_pinned_cf(cf(&self.db, CF_EVENT_IDS), keys::event_id_key(&id))?
                {
                    None => None,
                    Some(value) => {
                        Some(EventIdEntry::decode(&value).ok_or(StoreError::Corruption {
                            position: Position::ZERO,
                        })?)
                    }
                }
            };
            if let (Some(entry), None) = (entry, first_known) {
                first_known = Some((id, entry.position));
            }
            found.push(entry.map(|e| (e, id)));
        }
        let Some((conflict_id, conflict_position)) = first_known else {
            return Ok(None);
        };
        let conflict = StoreError::IdempotencyConflict {
            event_id: conflict_id,
            existing: conflict_position,
        };
        let Some(Some((first, _))) = found.first().copied() else {
            return Err(conflict);
        };
        let exact = first.index == 0
            && first.append_len as usize == n
            && found.iter().enumerate().all(|(i, f)| {
                f.is_some_and(|(e, _)| {
                    e.index as usize == i && e.position.0 == first.position.0 + i as u64
                })
            });
        if !exact {
            return Err(conflict);
        }
        let (stream, first_version) = match stream_of_first {
            Some(known) => known,
            None => {
                let bytes = self
                    .db
                    .get_pinned_cf(cf(&self.db, CF_EVENTS), keys::position_key(first.position))?
                    .ok_or(StoreError::Corruption {
                        position: first.position,
                    })?;
                let event = decode_at(first.position, &bytes)?;
                (event.stream_id, event.stream_version)
            }
        };
        if stream != append.stream_id {
            return Err(conflict);
        }
        Ok(Some(AppendResult {
            stream_id: stream,
            first_version,
            last_version: first_version + n as u64 - 1,
            first_position: first.position,
            last_position: Position(first.position.0 + n as u64 - 1),
            duplicate: true,
        }))
    }
}

/// Adds the stream-index entry of one append (its run of versions and positions). The
/// writer's groups and a replica's applied groups are indexed by this and [`put_record`]
/// alone, so every replica has the same indexes.
fn put_run(
    batch: &mut WriteBatch,
    streams_cf: &rocksdb::ColumnFamily,
    stream: &str,
    first_version: u64,
    run: StreamRun,
) {
    batch.put_cf(
        streams_cf,
        keys::stream_index_key(&keys::stream_key(stream), first_version),
        run.encode(),
    );
}

/// Adds one encoded record at `entry.position` and its event-id entry.
fn put_record(
    batch: &mut WriteBatch,
    (events_cf, ids_cf): (&rocksdb::ColumnFamily, &rocksdb::ColumnFamily),
    record: &[u8],
    event_id: &Uuid,
    entry: EventIdEntry,
) {
    batch.put_cf(events_cf, keys::position_key(entry.position), record);
    batch.put_cf(ids_cf, keys::event_id_key(event_id), entry.encode());
}

/// Moves the durable head readers see to `head` (waking its subscribers only if it moved).
fn announce(head_tx: &watch::Sender<Position>, head: Position) {
    head_tx.send_if_modified(|announced| {
        let moved = *announced != head;
        *announced = head;
        moved
    });
}

fn add_elapsed(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// The sequence of the replicated log's last group in this database (0 when it holds none).
pub(crate) fn read_log_sequence(db: &DB) -> Result<u64, StoreError> {
    match db.get_cf(cf(db, CF_META), keys::META_LOG_SEQUENCE)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corruption {
                position: Position::ZERO,
            }),
    }
}

fn diverged(sequence: u64, reason: impl Into<String>) -> StoreError {
    StoreError::ReplicaDiverged {
        sequence,
        reason: reason.into(),
    }
}

impl Writer {
    /// Handles a request that is not an append, once every group in flight is settled.
    fn control(&mut self, request: WriteRequest) {
        self.settle(0);
        match request {
            WriteRequest::Apply { groups, reply, .. } => {
                let _ = reply.send(self.apply(groups));
            }
            WriteRequest::Lead { after, reply, .. } => {
                let result = match (&self.recovery, &mut self.replication) {
                    (Some(recovery), _) => Err(StoreError::Storage(recovery.error.clone())),
                    (None, None) => Err(StoreError::NotWriter),
                    (None, Some(replication)) if replication.sequence != after => {
                        Err(StoreError::NotWriter)
                    }
                    (None, Some(replication)) => {
                        // Nothing is in flight (settled above): staging starts from what
                        // is written.
                        replication.staged = replication.sequence;
                        replication.leading.store(true, Ordering::Release);
                        tracing::info!(after, head = self.head.0, "this node writes the log");
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            WriteRequest::Follow { reply, .. } => {
                if let Some(replication) = &self.replication
                    && replication.leading.swap(false, Ordering::AcqRel)
                {
                    tracing::info!(head = self.head.0, "this node stops writing the log");
                }
                let _ = reply.send(());
            }
            WriteRequest::Append { .. } | WriteRequest::Shutdown => {}
        }
    }

    /// Applies groups of the replicated log that continue this replica, in one batch;
    /// returns the sequence of the last group the replica now holds. Groups it already
    /// holds are skipped. A group that does not continue it (a gap in the sequence, a
    /// position, stream version or hash that does not follow) is refused with everything
    /// after it, and nothing of the call is written.
    fn apply(&mut self, groups: Vec<(u64, Vec<u8>)>) -> Result<u64, StoreError> {
        if let Some(recovery) = &self.recovery {
            return Err(StoreError::Storage(recovery.error.clone()));
        }
        let Some(start) = self.replication.as_ref().map(|r| r.sequence) else {
            return Err(StoreError::NotWriter);
        };
        let mut batch = WriteBatch::default();
        let mut next = self.head.next();
        let mut tip = self.tip;
        let mut versions: HashMap<StreamId, u64> = HashMap::new();
        let mut sequence = start;
        let mut events = 0u64;
        // A handle of its own, so the column families stay borrowed while the version
        // lookups borrow the writer.
        let db = self.db.clone();
        let (events_cf, streams_cf, ids_cf) = (
            cf(&db, CF_EVENTS),
            cf(&db, CF_STREAMS),
            cf(&db, CF_EVENT_IDS),
        );
        for (at, bytes) in &groups {
            let at = *at;
            if at <= sequence {
                continue;
            }
            if at != sequence + 1 {
                return Err(diverged(
                    at,
                    format!("the replica expects group {}", sequence + 1),
                ));
            }
            let appends = codec::decode_group(bytes)
                .map_err(|e| diverged(at, format!("the group does not decode: {e}")))?;
            for records in appends {
                let count = records.len() as u32;
                let mut run: Option<(StreamId, u64)> = None;
                for (index, raw) in records.iter().enumerate() {
                    let event = codec::decode_record(raw).map_err(|e| {
                        diverged(at, format!("the record at {} does not decode: {e}", next.0))
                    })?;
                    if event.position != next {
                        return Err(diverged(
                            at,
                            format!("position {} where {} comes next", event.position.0, next.0),
                        ));
                    }
                    if event.prev_hash != tip || codec::recompute_hash(&event) != event.hash {
                        return Err(diverged(
                            at,
                            format!("the chain breaks at position {}", next.0),
                        ));
                    }
                    match &run {
                        None => {
                            let current = self.current_version(&event.stream_id, &versions)?;
                            if event.stream_version != current + 1 {
                                return Err(diverged(
                                    at,
                                    format!(
                                        "stream {} at version {current} gets version {}",
                                        event.stream_id, event.stream_version
                                    ),
                                ));
                            }
                            put_run(
                                &mut batch,
                                streams_cf,
                                event.stream_id.as_str(),
                                event.stream_version,
                                StreamRun {
                                    first_position: next,
                                    count,
                                },
                            );
                            run = Some((event.stream_id.clone(), event.stream_version));
                        }
                        Some((stream, first_version)) => {
                            if &event.stream_id != stream
                                || event.stream_version != first_version + index as u64
                            {
                                return Err(diverged(
                                    at,
                                    format!(
                                        "the append at position {} is not one stream's run",
                                        next.0
                                    ),
                                ));
                            }
                        }
                    }
                    put_record(
                        &mut batch,
                        (events_cf, ids_cf),
                        raw,
                        &event.event_id,
                        EventIdEntry {
                            position: next,
                            index: index as u32,
                            append_len: count,
                        },
                    );
                    tip = event.hash;
                    next = next.next();
                    events += 1;
                }
                if let Some((stream, first_version)) = run {
                    versions.insert(stream, first_version + u64::from(count) - 1);
                }
            }
            sequence = at;
        }
        if sequence == start {
            return Ok(sequence);
        }
        batch.put_cf(
            cf(&db, CF_META),
            keys::META_LOG_SEQUENCE,
            sequence.to_be_bytes(),
        );
        let writing = Instant::now();
        let written = self.db.write_opt(batch, &self.write_options);
        add_elapsed(&self.stats.write_nanos, writing);
        if let Err(error) = written {
            tracing::error!(%error, "applying replicated groups failed");
            set_failure(&self.failure, &error);
            self.notice_failure();
            return Err(StoreError::Storage(error));
        }
        self.head = Position(next.0 - 1);
        self.tip = tip;
        for (stream, version) in versions {
            self.versions.insert(stream, version);
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.events.fetch_add(events, Ordering::Relaxed);
        announce(&self.head_tx, self.head);
        if let Some(replication) = &mut self.replication {
            replication.sequence = sequence;
            replication.staged = sequence;
            replication.written_head = self.head;
            replication.written_tip = self.tip;
            replication.sequence_tx.send_replace(sequence);
            // Another writer wrote: this replica's lead is over until it leads again.
            if replication.leading.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    sequence,
                    "another node wrote the log; this node stops writing"
                );
            }
        }
        Ok(sequence)
    }
}

impl Writer {
    /// Publishes a staged group (if it has events) and queues its answers behind the
    /// groups in flight; the next group builds on it at once.
    fn commit_replicated(&mut self, mut group: Group, outcomes: Vec<Outcome>) {
        let Some(replication) = self.replication.as_mut() else {
            return;
        };
        let mut entry = InFlight {
            after: None,
            result: None,
            batch: WriteBatch::default(),
            outcomes,
            last: self.head,
            tip: self.tip,
            ids: Vec::new(),
            events: 0,
        };
        if group.events > 0
            && let Some(wire) = group.wire.take()
        {
            let after = replication.staged;
            let last = Position(group.next_position.0 - 1);
            replication.replicator.publish(
                ReplicaGroup {
                    bytes: wire.as_bytes(),
                    after,
                    first_position: self.head.next(),
                    last_position: last,
                    tip: group.tip,
                },
                Acknowledger {
                    epoch: replication.epoch,
                    after,
                    tx: replication.acks_tx.clone(),
                },
            );
            replication.spare = wire.into_bytes();
            replication.staged = after + 1;
            group.batch.put_cf(
                cf(&self.db, CF_META),
                keys::META_LOG_SEQUENCE,
                (after + 1).to_be_bytes(),
            );
            self.head = last;
            self.tip = group.tip;
            for (stream, version) in group.versions {
                self.versions.insert(stream, version);
            }
            for (id, pending) in group.ids {
                entry.ids.push(id);
                replication.pending_ids.insert(id, pending);
            }
            entry.after = Some(after);
            entry.batch = group.batch;
            entry.last = last;
            entry.tip = group.tip;
            entry.events = group.events;
        }
        replication.inflight.push_back(entry);
        self.settle(MAX_INFLIGHT - 1);
    }

    /// Records an acknowledgement on its group (one of an abandoned epoch is dropped).
    fn take_ack(&mut self, ack: Ack) {
        let Some(replication) = self.replication.as_mut() else {
            return;
        };
        if ack.epoch != replication.epoch {
            return;
        }
        if let Some(entry) = replication
            .inflight
            .iter_mut()
            .find(|e| e.after == Some(ack.after))
        {
            entry.result = Some(ack.result);
        }
    }

    /// Writes and answers the acknowledged groups at the front, in order, until at most
    /// `keep` groups are in flight (waiting for acknowledgements as needed).
    fn settle(&mut self, keep: usize) {
        loop {
            let Some(replication) = self.replication.as_mut() else {
                return;
            };
            let acks = replication.acks_rx.clone();
            while let Ok(ack) = acks.try_recv() {
                self.take_ack(ack);
            }
            while self.write_front() {}
            let waiting = self.replication.as_ref().map_or(0, |r| r.inflight.len());
            if waiting <= keep || waiting == 0 {
                return;
            }
            match acks.recv_timeout(Duration::from_secs(60)) {
                Ok(ack) => self.take_ack(ack),
                Err(_) => {
                    // A replicator that never answers: nothing in flight can be trusted.
                    self.give_up_inflight(&ReplicationError::Unavailable(
                        "no acknowledgement from the replicated log".into(),
                    ));
                    return;
                }
            }
        }
    }

    /// Writes and answers the oldest group in flight if it is settled; whether it was.
    fn write_front(&mut self) -> bool {
        let Some(replication) = self.replication.as_mut() else {
            return false;
        };
        let Some(front) = replication.inflight.front() else {
            return false;
        };
        match (front.after, &front.result) {
            (None, _) => {
                let entry = replication.inflight.pop_front().expect("a front");
                answer(entry.outcomes, &self.stats);
                true
            }
            (Some(_), None) => false,
            (Some(after), Some(Ok(sequence))) if *sequence == after + 1 => {
                let sequence = *sequence;
                let entry = replication.inflight.pop_front().expect("a front");
                let mut outcomes = entry.outcomes;
                let writing = Instant::now();
                let written = self.db.write_opt(entry.batch, &self.write_options);
                add_elapsed(&self.stats.write_nanos, writing);
                if let Err(error) = written {
                    tracing::error!(%error, "writing an acknowledged group to the replica failed");
                    fail_unanswered(&mut outcomes, &error);
                    answer(outcomes, &self.stats);
                    set_failure(&self.failure, &error);
                    self.give_up_inflight(&ReplicationError::Unavailable(error.to_string()));
                    self.notice_failure();
                    return false;
                }
                replication.sequence = sequence;
                replication.written_head = entry.last;
                replication.written_tip = entry.tip;
                for id in &entry.ids {
                    replication.pending_ids.remove(id);
                }
                replication.sequence_tx.send_replace(sequence);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.events.fetch_add(entry.events, Ordering::Relaxed);
                // Announce before answering, so a caller that reads right after its append
                // sees its own events.
                announce(&self.head_tx, entry.last);
                answer(outcomes, &self.stats);
                true
            }
            (Some(after), Some(result)) => {
                let error = match result {
                    Ok(sequence) => ReplicationError::Unavailable(format!(
                        "the log gave sequence {sequence} to the group after {after}"
                    )),
                    Err(error) => error.clone(),
                };
                tracing::warn!(
                    ?error,
                    after,
                    "the replicated log did not take a group; this node stops writing"
                );
                self.give_up_inflight(&error);
                true
            }
        }
    }

    /// Answers every group in flight with `error` and falls back to the written state;
    /// the replica stops writing until it leads again.
    fn give_up_inflight(&mut self, error: &ReplicationError) {
        let Some(replication) = self.replication.as_mut() else {
            return;
        };
        replication.epoch += 1;
        replication.staged = replication.sequence;
        replication.pending_ids.clear();
        // Before anyone is answered: a caller told `NotWriter` finds the replica following.
        if !replication.inflight.is_empty() {
            replication.leading.store(false, Ordering::Release);
        }
        for entry in replication.inflight.drain(..) {
            let mut outcomes = entry.outcomes;
            // Even refusals were decided against groups that are now given up.
            for (_, outcome, _) in &mut outcomes {
                *outcome = Err(match error {
                    ReplicationError::Fenced => StoreError::NotWriter,
                    ReplicationError::Unavailable(reason) => StoreError::Unavailable {
                        reason: reason.clone(),
                    },
                });
            }
            answer(outcomes, &self.stats);
        }
        self.head = replication.written_head;
        self.tip = replication.written_tip;
        self.versions.clear();
    }
}
