//! `RocksEventStore`: the event log on RocksDB.
//!
//! Reads go straight to RocksDB from the calling task, bounded by the durable head. Writes
//! go through one writer thread (see [`writer`]) that turns whatever is queued into one
//! `WriteBatch` and one WAL sync.

pub mod keystore;
mod lifecycle;
mod writer;

pub use lifecycle::{
    BackupPoint, DeleteMode, RetentionReport, RetentionRule, StreamDeletion, backup_db, hash_hex,
    restore_db, verify_backup,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, Options, ReadOptions,
    SliceTransform, WriteBatch,
};
use tokio::sync::{Mutex as AsyncMutex, Semaphore, oneshot, watch};
use uuid::Uuid;

use crate::codec::{self, GENESIS_HASH};
use crate::error::StoreError;
use crate::keys::{self, CF_EVENTS, CF_META, CF_SNAPSHOTS, CF_STREAMS, EventIdEntry, StreamRun};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{
    Durability, EventStore, MAX_SCAN_PER_READ, StoreOptions, StoreStats, validate_appends,
};
use crate::types::{
    ChainFault, ChainReport, Direction, EventPage, Hash, MultiAppendResult, Position, ReadFilter,
    RecordedEvent, StreamAppend, StreamId,
};

use crate::replica::Replicator;
use writer::{
    Failure, Replication, WriteRequest, Writer, WriterSetup, read_log_sequence, spawn_syncer,
};

/// Counters of the write path, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Group commits written (one WAL write and, with `Fsync`, one fsync each).
    pub commits: AtomicU64,
    /// Append requests answered successfully (including duplicates).
    pub appends: AtomicU64,
    /// Events written.
    pub events: AtomicU64,
    /// Append requests that failed (expectation, idempotency or storage).
    pub failed_appends: AtomicU64,
    /// Nanoseconds the writer spent waiting for the first request of a group.
    pub idle_nanos: AtomicU64,
    /// Nanoseconds the writer spent checking requests and encoding records.
    pub stage_nanos: AtomicU64,
    /// Nanoseconds spent in RocksDB writes (memtables and WAL buffer).
    pub write_nanos: AtomicU64,
    /// Nanoseconds spent making the WAL durable (fsync), 0 with `Buffered`.
    pub sync_nanos: AtomicU64,
    /// WAL syncs made (one may cover several group commits).
    pub syncs: AtomicU64,
}

/// The RocksDB event store. Cheap to clone: clones share one database and one writer.
#[derive(Clone)]
pub struct RocksEventStore {
    inner: Arc<Inner>,
}

/// The database handle readers use. The writer swaps it when it reopens the database
/// after a storage failure; a reader clones the current handle (one `Arc` clone) and keeps
/// it for the one read, so a swap never pulls a handle from under a read.
pub(crate) struct DbSlot(RwLock<Arc<DB>>);

impl DbSlot {
    fn new(db: Arc<DB>) -> Self {
        Self(RwLock::new(db))
    }

    pub(crate) fn get(&self) -> Arc<DB> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, db: Arc<DB>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = db;
    }
}

struct Inner {
    /// Read the head before taking the handle: the writer installs a reopened database
    /// before the head moves past what the previous handle holds (see `writer`).
    db: Arc<DbSlot>,
    path: PathBuf,
    options: StoreOptions,
    requests: Sender<WriteRequest>,
    /// Bounds the requests in flight to the channel's capacity, so a caller waits
    /// asynchronously for room instead of blocking a runtime thread on a full channel.
    permits: Arc<Semaphore>,
    head: watch::Receiver<Position>,
    stats: Arc<WriterStats>,
    closed: AtomicBool,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Serialises snapshot writes so an older snapshot never replaces a newer one.
    snapshot_lock: AsyncMutex<()>,
    /// Opened with [`RocksEventStore::open_read_only`]: no writer, every write refused.
    read_only: bool,
    /// Whether any stream has ever been deleted: until one is, stream reads skip the
    /// lookup of a deletion mark (they are on the command path's loads).
    deletions: AtomicBool,
    /// The storage failure appends are refused for, until the writer has recovered.
    failure: Failure,
    /// Opened with [`RocksEventStore::open_replica`]: where this replica is in the
    /// replicated log, and whether it writes.
    replica: Option<ReplicaState>,
}

struct ReplicaState {
    sequence: watch::Receiver<u64>,
    leading: Arc<AtomicBool>,
}

impl std::fmt::Debug for RocksEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEventStore")
            .field("path", &self.inner.path)
            .field("head", &*self.inner.head.borrow())
            .finish_non_exhaustive()
    }
}

fn db_options(durability: Durability) -> Options {
    let mut opts = Options::default();
    // With `Fsync` writes only fill RocksDB's WAL buffer and the syncer thread writes and
    // syncs it (`flush_wal(true)`), so the writer builds the next group during the fsync.
    opts.set_manual_wal_flush(durability == Durability::Fsync);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1024 * 1024);
    opts.set_wal_bytes_per_sync(0);
    opts
}

fn cf_options(name: &str) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    let mut table = BlockBasedOptions::default();
    match name {
        CF_STREAMS => {
            // Every stream lookup names its stream hash: a prefix bloom filter turns a
            // lookup of a stream that is not in a file into no read at all.
            opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(keys::STREAM_HASH_LEN));
            table.set_bloom_filter(10.0, false);
            table.set_whole_key_filtering(false);
        }
        keys::CF_EVENT_IDS => {
            table.set_bloom_filter(10.0, false);
        }
        CF_EVENTS => {
            // The global log is read in long scans (projections, export, verify): larger
            // blocks mean fewer block loads (lookup, checksum, decompression) per event.
            table.set_block_size(16 * 1024);
        }
        _ => {}
    }
    opts.set_block_based_table_factory(&table);
    opts
}

impl RocksEventStore {
    /// Opens (or creates) the event log in `path` and starts its writer thread.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref(), options, None)
    }

    /// Opens (or creates) `path` as one replica of a replicated log (see
    /// [`crate::replica`]): the writer hands every commit group to `replicator` before it
    /// writes it, and writes only what the replicated log took. The replica starts as a
    /// follower: it takes groups with [`RocksEventStore::apply_groups`] and refuses appends
    /// with [`StoreError::NotWriter`] until [`RocksEventStore::lead`].
    ///
    /// The local write is not synced (`options.durability` is ignored): the replicated log
    /// is the durable copy, and a replica that lost its tail in a power loss applies it
    /// again from there.
    pub fn open_replica(
        path: impl AsRef<Path>,
        options: StoreOptions,
        replicator: Box<dyn Replicator>,
    ) -> Result<Self, StoreError> {
        let options = StoreOptions {
            durability: Durability::Buffered,
            ..options
        };
        Self::open_with(path.as_ref(), options, Some(replicator))
    }

    fn open_with(
        path: &Path,
        options: StoreOptions,
        replicator: Option<Box<dyn Replicator>>,
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
            what: format!("cannot create {}", path.display()),
            source,
        })?;
        let db = open_writable(&path, options.durability)?;
        let (head, tip) = recover_tip(&db)?;
        let deletions = lifecycle::any_deleted(&db)?;
        let mut replica = None;
        let replication = match replicator {
            None => None,
            Some(replicator) => {
                let sequence = read_log_sequence(&db)?;
                let (sequence_tx, sequence_rx) = watch::channel(sequence);
                let leading = Arc::new(AtomicBool::new(false));
                replica = Some(ReplicaState {
                    sequence: sequence_rx,
                    leading: leading.clone(),
                });
                Some(Replication::new(
                    replicator,
                    sequence,
                    sequence_tx,
                    leading,
                    head,
                    tip,
                ))
            }
        };
        let db = Arc::new(db);
        let slot = Arc::new(DbSlot::new(db.clone()));

        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = crossbeam_channel::bounded(options.queue_capacity);
        let stats = Arc::new(WriterStats::default());
        let failure: Failure = Arc::default();
        let syncer = match options.durability {
            Durability::Buffered => None,
            Durability::Fsync => Some(spawn_syncer(
                db.clone(),
                head,
                head_tx.clone(),
                stats.clone(),
                failure.clone(),
            )?),
        };
        let writer = Writer::new(WriterSetup {
            db,
            slot: slot.clone(),
            path: path.clone(),
            options: options.clone(),
            head,
            tip,
            head_tx,
            stats: stats.clone(),
            syncer,
            failure: failure.clone(),
            replication,
        });
        let handle = std::thread::Builder::new()
            .name("annals-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::Io {
                what: "cannot start the writer thread".into(),
                source,
            })?;
        tracing::info!(path = %path.display(), head = head.0, "event store opened");
        Ok(Self {
            inner: Arc::new(Inner {
                db: slot,
                path,
                permits: Arc::new(Semaphore::new(options.queue_capacity)),
                options,
                requests: tx,
                head: head_rx,
                stats,
                closed: AtomicBool::new(false),
                writer: std::sync::Mutex::new(Some(handle)),
                snapshot_lock: AsyncMutex::new(()),
                read_only: false,
                deletions: AtomicBool::new(deletions),
                failure,
                replica,
            }),
        })
    }

    /// Opens the event log in `path` for reading only, beside a process that may hold it
    /// open for writing (RocksDB's read-only mode takes no lock).
    ///
    /// The handle sees the log as it was when it was opened: its head is fixed, which makes
    /// every read through it one consistent prefix of the log (appends are atomic batches
    /// and positions gapless). It starts no writer thread; appends and snapshot saves fail
    /// with [`StoreError::ReadOnly`]. Reopen it to see newer events.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if !path.join("CURRENT").is_file() {
            return Err(StoreError::Io {
                what: format!("no event log in {}", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let db = open_read_only_db(&path)?;
        if let Some(bytes) = db.get_cf(cf(&db, CF_META), keys::META_FORMAT_VERSION)? {
            let found = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .unwrap_or(u32::MAX);
            if found > keys::FORMAT_VERSION {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: keys::FORMAT_VERSION,
                });
            }
        }
        let (head, _tip) = recover_tip(&db)?;
        let deletions = lifecycle::any_deleted(&db)?;
        // Nobody receives on this channel: the read-only check in `append_multi` comes
        // first, and a request that got past it would fail as `Closed`.
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let (_head_tx, head_rx) = watch::channel(head);
        let options = StoreOptions::default();
        tracing::debug!(path = %path.display(), head = head.0, "event store opened read-only");
        Ok(Self {
            inner: Arc::new(Inner {
                db: Arc::new(DbSlot::new(Arc::new(db))),
                path,
                permits: Arc::new(Semaphore::new(1)),
                options,
                requests: tx,
                head: head_rx,
                stats: Arc::new(WriterStats::default()),
                closed: AtomicBool::new(false),
                writer: std::sync::Mutex::new(None),
                snapshot_lock: AsyncMutex::new(()),
                read_only: true,
                deletions: AtomicBool::new(deletions),
                failure: Failure::default(),
                replica: None,
            }),
        })
    }

    /// Whether this handle was opened with [`RocksEventStore::open_replica`].
    pub fn is_replica(&self) -> bool {
        self.inner.replica.is_some()
    }

    /// Whether this replica writes: it leads and no failure or foreign group has stopped
    /// it since. Always false for a store that is not a replica.
    pub fn is_leading(&self) -> bool {
        self.inner
            .replica
            .as_ref()
            .is_some_and(|r| r.leading.load(Ordering::Acquire))
    }

    /// The sequence of the replicated log's last group this replica holds (0 for a store
    /// that is not a replica).
    pub fn log_sequence(&self) -> u64 {
        self.inner
            .replica
            .as_ref()
            .map_or(0, |r| *r.sequence.borrow())
    }

    /// A receiver of [`RocksEventStore::log_sequence`] as it moves.
    pub fn subscribe_log_sequence(&self) -> watch::Receiver<u64> {
        match &self.inner.replica {
            Some(replica) => replica.sequence.clone(),
            None => watch::channel(0).1,
        }
    }

    /// Applies groups of the replicated log, `(sequence, encoded group)` in sequence order,
    /// to this replica in one write; returns the last sequence it holds. Groups it already
    /// holds are skipped; a group that does not continue it is refused with
    /// [`StoreError::ReplicaDiverged`], and nothing of the call is written. A group that
    /// another writer wrote stops this replica writing.
    pub async fn apply_groups(&self, groups: Vec<(u64, Vec<u8>)>) -> Result<u64, StoreError> {
        let permit = self.control_permit().await?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(WriteRequest::Apply {
                groups,
                reply,
                _permit: permit,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Starts writing, as the holder of the write lease, once this replica holds the
    /// replicated log up to group `after` (its last): refused with
    /// [`StoreError::NotWriter`] while the replica is elsewhere.
    pub async fn lead(&self, after: u64) -> Result<(), StoreError> {
        let permit = self.control_permit().await?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(WriteRequest::Lead {
                after,
                reply,
                _permit: permit,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops writing (the lease is lost), once the groups in flight are settled; appends
    /// after it get [`StoreError::NotWriter`].
    pub async fn follow(&self) -> Result<(), StoreError> {
        let permit = self.control_permit().await?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(WriteRequest::Follow {
                reply,
                _permit: permit,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    async fn control_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        if self.inner.replica.is_none() {
            return Err(StoreError::NotWriter);
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Whether this handle was opened with [`RocksEventStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Counters of the write path.
    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.stats;
        StoreStats {
            commits: s.commits.load(Ordering::Relaxed),
            appends: s.appends.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            failed_appends: s.failed_appends.load(Ordering::Relaxed),
            idle_nanos: s.idle_nanos.load(Ordering::Relaxed),
            stage_nanos: s.stage_nanos.load(Ordering::Relaxed),
            write_nanos: s.write_nanos.load(Ordering::Relaxed),
            sync_nanos: s.sync_nanos.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
        }
    }

    /// Stops taking appends, lets the writer finish what it was given and joins it.
    /// Appends after this fail with [`StoreError::Closed`]; reads keep working.
    pub fn close(&self) {
        self.inner.shutdown();
    }

    /// The current database handle, for one read. Take it after reading the head.
    fn db(&self) -> Arc<DB> {
        self.inner.db.get()
    }

    /// Records that a stream now has a deletion mark, so stream reads look for marks.
    pub(crate) fn mark_deletions(&self) {
        self.inner.deletions.store(true, Ordering::Release);
    }

    /// Whether appends are refused because of a storage failure the store has not yet
    /// recovered from (the writer retries reopening the database with a backoff).
    pub fn is_failed(&self) -> bool {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    fn read_stream_sync(
        &self,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let head = self.head();
        let db = self.db();
        // A deleted stream's events up to its deletion read as absent.
        let hidden = if self.inner.deletions.load(Ordering::Acquire) {
            lifecycle::deleted_through(&db, stream)?
        } else {
            0
        };
        let from_version = match direction {
            Direction::Forward => from_version.max(hidden + 1),
            Direction::Backward if from_version <= hidden => return Ok(Vec::new()),
            Direction::Backward => from_version,
        };
        let positions = stream_positions(&db, stream, from_version, direction, limit)?;
        let cf = cf(&db, CF_EVENTS);
        let keys: Vec<[u8; 8]> = positions
            .iter()
            .filter(|p| **p <= head)
            .map(|p| keys::position_key(*p))
            .collect();
        let values = db.batched_multi_get_cf(cf, keys.iter(), direction == Direction::Forward);
        let mut events = Vec::with_capacity(keys.len());
        for (key, value) in keys.iter().zip(values) {
            let position = Position(u64::from_be_bytes(*key));
            let value = value?.ok_or(StoreError::Corruption { position })?;
            let event = decode_at(position, &value)?;
            if &event.stream_id != stream {
                return Err(StoreError::Corruption { position });
            }
            if event.stream_version <= hidden {
                break;
            }
            events.push(event);
        }
        Ok(events)
    }

    fn read_all_sync(
        &self,
        from: Position,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<EventPage, StoreError> {
        let head = self.head();
        let from = from.max(Position::FIRST);
        if limit == 0 || from > head {
            return Ok(EventPage {
                events: Vec::new(),
                next: from,
                head,
            });
        }
        // Room for the most events this read can return, so a catch-up page of thousands
        // of events is not moved by repeated doubling. A filtered read may return fewer,
        // which costs memory only until the page is dropped.
        let most = (head.0 - from.0 + 1).min(MAX_SCAN_PER_READ as u64) as usize;
        let mut page = EventPage {
            events: Vec::with_capacity(limit.min(most)),
            next: from,
            head,
        };
        let db = self.db();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::position_key(head.next()));
        opts.set_readahead_size(2 * 1024 * 1024);
        // A scan reads each block once: caching it would only evict the blocks point reads
        // (rehydration) use.
        opts.fill_cache(false);
        let mut iter = db.raw_iterator_cf_opt(cf(&db, CF_EVENTS), opts);
        iter.seek(keys::position_key(from));
        let mut examined = 0usize;
        while let Some((key, value)) = iter.item() {
            let position = keys::decode_position_key(key).ok_or(StoreError::Corruption {
                position: page.next,
            })?;
            if position != page.next {
                // Positions are gapless: a missing key is damage, not a skip.
                return Err(StoreError::Corruption {
                    position: page.next,
                });
            }
            // A filtered read decodes only the head of the records it skips.
            let wanted = filtered_in(filter, position, value)?;
            page.next = position.next();
            examined += 1;
            if wanted {
                page.events.push(decode_at(position, value)?);
                if page.events.len() >= limit {
                    break;
                }
            }
            if examined >= MAX_SCAN_PER_READ {
                break;
            }
            iter.next();
        }
        iter.status()?;
        if page.next <= head && examined == 0 {
            // The iterator found nothing although the head says events exist.
            return Err(StoreError::Corruption {
                position: page.next,
            });
        }
        Ok(page)
    }

    fn verify_chain_sync(&self, from: Position, to: Position) -> Result<ChainReport, StoreError> {
        let head = self.head();
        let from = from.max(Position::FIRST);
        let to = to.min(head);
        let mut report = ChainReport {
            checked: 0,
            first_fault: None,
        };
        if from > to {
            return Ok(report);
        }
        let db = self.db();
        let mut prev: Hash = if from == Position::FIRST {
            GENESIS_HASH
        } else {
            let before = Position(from.0 - 1);
            match get_event(&db, before) {
                Ok(Some(event)) => event.hash,
                Ok(None) => {
                    report.first_fault = Some((before, ChainFault::Missing));
                    return Ok(report);
                }
                Err(_) => {
                    report.first_fault = Some((before, ChainFault::Undecodable));
                    return Ok(report);
                }
            }
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::position_key(to.next()));
        opts.set_readahead_size(2 * 1024 * 1024);
        let mut iter = db.raw_iterator_cf_opt(cf(&db, CF_EVENTS), opts);
        iter.seek(keys::position_key(from));
        let mut expected = from;
        while let Some((key, value)) = iter.item() {
            let fault = match keys::decode_position_key(key) {
                Some(p) if p != expected => Some(ChainFault::Missing),
                None => Some(ChainFault::Undecodable),
                Some(_) => match codec::decode_record(value) {
                    Err(_) => Some(ChainFault::Undecodable),
                    Ok(event) if event.position != expected => Some(ChainFault::Undecodable),
                    Ok(event) if event.prev_hash != prev => Some(ChainFault::BrokenLink),
                    Ok(event) if !codec::hash_checks(&event) => Some(ChainFault::HashMismatch),
                    Ok(event) => {
                        prev = event.hash;
                        None
                    }
                },
            };
            if let Some(fault) = fault {
                report.first_fault = Some((expected, fault));
                return Ok(report);
            }
            report.checked += 1;
            expected = expected.next();
            iter.next();
        }
        iter.status()?;
        if expected <= to {
            report.first_fault = Some((expected, ChainFault::Missing));
        }
        Ok(report)
    }
}

impl Inner {
    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.requests.send(WriteRequest::Shutdown);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the writer thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl EventStore for RocksEventStore {
    async fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<MultiAppendResult, StoreError> {
        let inner = &self.inner;
        if inner.read_only {
            return Err(StoreError::ReadOnly {
                path: inner.path.clone(),
            });
        }
        if inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (events, bytes) = validate_appends(&appends, &inner.options)?;
        let permit = inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        inner
            .requests
            .send(WriteRequest::Append {
                appends,
                events,
                bytes,
                reply,
                _permit: permit,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_sync(stream, from_version, direction, limit)
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<EventPage, StoreError> {
        self.read_all_sync(from, limit, filter)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let head = self.head();
        durable_stream_version(&self.db(), &keys::stream_key(stream.as_str()), head)
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let head = self.head();
        let db = self.db();
        let Some(value) =
            db.get_pinned_cf(cf(&db, keys::CF_EVENT_IDS), keys::event_id_key(&event_id))?
        else {
            return Ok(None);
        };
        let entry = EventIdEntry::decode(&value).ok_or(StoreError::Corruption {
            position: Position::ZERO,
        })?;
        if entry.position > head {
            return Ok(None);
        }
        let event = get_event(&db, entry.position)?.ok_or(StoreError::Corruption {
            position: entry.position,
        })?;
        if event.event_id != event_id {
            return Err(StoreError::Corruption {
                position: entry.position,
            });
        }
        Ok(Some(event))
    }

    fn head(&self) -> Position {
        *self.inner.head.borrow()
    }

    fn subscribe_head(&self) -> watch::Receiver<Position> {
        self.inner.head.clone()
    }

    async fn verify_chain(&self, from: Position, to: Position) -> Result<ChainReport, StoreError> {
        self.verify_chain_sync(from, to)
    }

    fn stats(&self) -> StoreStats {
        RocksEventStore::stats(self)
    }

    fn is_failed(&self) -> bool {
        RocksEventStore::is_failed(self)
    }

    fn close(&self) {
        RocksEventStore::close(self)
    }
}

impl SnapshotStore for RocksEventStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let db = self.db();
        let value = db.get_pinned_cf(cf(&db, CF_SNAPSHOTS), keys::stream_key(stream.as_str()))?;
        // A snapshot this build cannot read is as good as none: the events are the truth.
        Ok(value.and_then(|v| codec::decode_snapshot(&v)))
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        // Snapshots are saved off the command path by concurrent tasks: serialise them so
        // an older one never overwrites a newer one.
        if self.inner.read_only {
            return Err(StoreError::ReadOnly {
                path: self.inner.path.clone(),
            });
        }
        let _guard = self.inner.snapshot_lock.lock().await;
        if let Some(existing) = self.load_snapshot(stream).await?
            && existing.version >= snapshot.version
            && existing.schema_version == snapshot.schema_version
        {
            return Ok(());
        }
        let db = self.db();
        db.put_cf(
            cf(&db, CF_SNAPSHOTS),
            keys::stream_key(stream.as_str()),
            codec::encode_snapshot(&snapshot),
        )?;
        Ok(())
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // Every CF in keys::ALL_CFS is created on open, so a missing handle is a bug here.
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} is opened with the database"))
}

fn get_event(db: &DB, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
    let Some(bytes) = db.get_pinned_cf(cf(db, CF_EVENTS), keys::position_key(position))? else {
        return Ok(None);
    };
    decode_at(position, &bytes).map(Some)
}

/// Opens the log for writing (creating what is missing) and checks its format version.
pub(crate) fn open_writable(path: &Path, durability: Durability) -> Result<DB, StoreError> {
    let cfs = keys::ALL_CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name)));
    let db = DB::open_cf_descriptors(&db_options(durability), path, cfs).map_err(|e| {
        if e.as_ref().contains("lock") {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::Storage(e)
        }
    })?;
    check_format(&db)?;
    Ok(db)
}

/// Opens the log read-only: no lock taken, nothing written (so it works on a full disk).
pub(crate) fn open_read_only_db(path: &Path) -> Result<DB, rocksdb::Error> {
    let cfs = keys::ALL_CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name)));
    DB::open_cf_descriptors_read_only(&Options::default(), path, cfs, false)
}

/// Deletes every record above `head` (the last acknowledged position) with its stream-index
/// run and event-id entry, and syncs the deletion; returns how many records it removed.
///
/// Used when the writer reopens the database after a failed write or sync: what the failed
/// groups wrote may or may not have reached the disk, and their callers were told it failed,
/// so none of it may come back. Without this, a group that did reach the disk would appear
/// once the head moved past it, and a failed append's event ids would look like duplicates.
/// An append's stream-index run is keyed by its first version, so deleting the index key of
/// every removed event's version removes the run.
pub(crate) fn truncate_above(db: &DB, head: Position) -> Result<u64, StoreError> {
    let (events_cf, streams_cf, ids_cf) = (
        cf(db, CF_EVENTS),
        cf(db, CF_STREAMS),
        cf(db, keys::CF_EVENT_IDS),
    );
    let mut batch = WriteBatch::default();
    let mut removed = 0;
    let mut iter = db.raw_iterator_cf(events_cf);
    iter.seek(keys::position_key(head.next()));
    while let Some((key, value)) = iter.item() {
        let position = keys::decode_position_key(key).ok_or(StoreError::Corruption {
            position: head.next(),
        })?;
        let event = decode_at(position, value)?;
        batch.delete_cf(events_cf, key);
        let stream_key = keys::stream_key(event.stream_id.as_str());
        batch.delete_cf(
            streams_cf,
            keys::stream_index_key(&stream_key, event.stream_version),
        );
        let id_key = keys::event_id_key(&event.event_id);
        let names_this = db
            .get_pinned_cf(ids_cf, id_key)?
            .and_then(|v| EventIdEntry::decode(&v))
            .is_some_and(|entry| entry.position == position);
        if names_this {
            batch.delete_cf(ids_cf, id_key);
        }
        removed += 1;
        iter.next();
    }
    iter.status()?;
    drop(iter);
    if removed > 0 {
        db.write(batch)?;
        db.flush_wal(true)?;
    }
    Ok(removed)
}

/// Whether the record at `position` passes `filter`, from its head alone.
fn filtered_in(filter: &ReadFilter, position: Position, bytes: &[u8]) -> Result<bool, StoreError> {
    if filter.is_all() {
        return Ok(true);
    }
    match codec::peek_head(bytes) {
        Ok(head) if head.position == position.0 => {
            Ok(filter.matches(head.stream_id, head.event_type))
        }
        _ => Err(StoreError::Corruption { position }),
    }
}

fn decode_at(position: Position, bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
    match codec::decode_record(bytes) {
        Ok(event) if event.position == position => Ok(event),
        _ => Err(StoreError::Corruption { position }),
    }
}

fn check_format(db: &DB) -> Result<(), StoreError> {
    let meta = cf(db, CF_META);
    match db.get_cf(meta, keys::META_FORMAT_VERSION)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .unwrap_or(u32::MAX);
            if found > keys::FORMAT_VERSION {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: keys::FORMAT_VERSION,
                });
            }
        }
        None => db.put_cf(
            meta,
            keys::META_FORMAT_VERSION,
            keys::FORMAT_VERSION.to_be_bytes(),
        )?,
    }
    Ok(())
}

/// The head and chain tip, read from the last record of the log.
fn recover_tip(db: &DB) -> Result<(Position, Hash), StoreError> {
    let mut iter = db.raw_iterator_cf(cf(db, CF_EVENTS));
    iter.seek_to_last();
    let result = match iter.item() {
        None => (Position::ZERO, GENESIS_HASH),
        Some((key, value)) => {
            let position = keys::decode_position_key(key).ok_or(StoreError::Corruption {
                position: Position::ZERO,
            })?;
            let event = decode_at(position, value)?;
            (position, event.hash)
        }
    };
    iter.status()?;
    Ok(result)
}

/// The positions of up to `limit` events of a stream from `from_version` in `direction`,
/// read from the run-length stream index.
pub(crate) fn stream_positions(
    db: &DB,
    stream: &StreamId,
    from_version: u64,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Position>, StoreError> {
    let stream_key = keys::stream_key(stream.as_str());
    let mut opts = ReadOptions::default();
    opts.set_prefix_same_as_start(true);
    opts.set_iterate_lower_bound(keys::stream_index_key(&stream_key, 0));
    opts.set_iterate_upper_bound(keys::stream_index_key(&stream_key, u64::MAX));
    let mut iter = db.raw_iterator_cf_opt(cf(db, CF_STREAMS), opts);
    let mut positions = Vec::new();
    // The run holding `from_version` is the last run starting at or before it.
    iter.seek_for_prev(keys::stream_index_key(&stream_key, from_version));
    if direction == Direction::Forward && !iter.valid() {
        iter.seek(keys::stream_index_key(&stream_key, from_version));
    }
    while positions.len() < limit {
        let Some((key, value)) = iter.item() else {
            break;
        };
        let (Some(first_version), Some(run)) = (
            keys::decode_stream_index_version(key),
            StreamRun::decode(value),
        ) else {
            return Err(StoreError::Corruption {
                position: Position::ZERO,
            });
        };
        let last_version = first_version + u64::from(run.count) - 1;
        let at = |v: u64| Position(run.first_position.0 + (v - first_version));
        match direction {
            Direction::Forward => {
                let mut v = first_version.max(from_version);
                while v <= last_version && positions.len() < limit {
                    positions.push(at(v));
                    v += 1;
                }
                iter.next();
            }
            Direction::Backward => {
                let mut v = last_version.min(from_version);
                while v >= first_version && positions.len() < limit {
                    positions.push(at(v));
                    v -= 1;
                }
                iter.prev();
            }
        }
    }
    iter.status()?;
    Ok(positions)
}

/// The stream's last version according to the index, as the writer sees it: including
/// groups written but not yet synced (the writer builds on them).
pub(crate) fn indexed_stream_version(db: &DB, stream_key: &[u8]) -> Result<u64, StoreError> {
    durable_stream_version(db, stream_key, Position(u64::MAX))
}

/// The stream's last version whose events are at or below `head`.
///
/// The index may hold runs of groups that are written but not yet synced (with `Fsync` the
/// writer runs one fsync ahead); a run is one append, all above or all below the head, so
/// skipping the runs that start above it gives the durable version.
pub(crate) fn durable_stream_version(
    db: &DB,
    stream_key: &[u8],
    head: Position,
) -> Result<u64, StoreError> {
    let mut opts = ReadOptions::default();
    opts.set_prefix_same_as_start(true);
    opts.set_iterate_lower_bound(keys::stream_index_key(stream_key, 0));
    opts.set_iterate_upper_bound(keys::stream_index_key(stream_key, u64::MAX));
    let mut iter = db.raw_iterator_cf_opt(cf(db, CF_STREAMS), opts);
    iter.seek_for_prev(keys::stream_index_key(stream_key, u64::MAX));
    let mut version = 0;
    while let Some((key, value)) = iter.item() {
        let first = keys::decode_stream_index_version(key);
        let run = StreamRun::decode(value);
        match (first, run) {
            // Not durable yet: the version before this run is the answer.
            (Some(_), Some(run)) if run.first_position > head => iter.prev(),
            (Some(first), Some(run)) => {
                version = first + u64::from(run.count) - 1;
                break;
            }
            _ => {
                return Err(StoreError::Corruption {
                    position: Position::ZERO,
                });
            }
        }
    }
    iter.status()?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ExpectedVersion, NewEvent};

    /// Runs the writer wrote but did not sync yet must not count for readers: with a head
    /// below the second append, the stream is at the first append's version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_version_stops_at_the_durable_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
        let stream = StreamId::new("order-1").unwrap();
        let other = StreamId::new("order-2").unwrap();
        let event = || NewEvent::json("Thing", &serde_json::json!({}));
        let first = store
            .append(
                stream.clone(),
                ExpectedVersion::NoStream,
                vec![event(), event()],
            )
            .await
            .unwrap();
        store
            .append(other, ExpectedVersion::NoStream, vec![event()])
            .await
            .unwrap();
        let second = store
            .append(stream.clone(), ExpectedVersion::Exact(2), vec![event()])
            .await
            .unwrap();
        let key = keys::stream_key(stream.as_str());
        let db = store.db();
        let db = &*db;
        assert_eq!(
            durable_stream_version(db, &key, second.last_position).unwrap(),
            3
        );
        assert_eq!(
            durable_stream_version(db, &key, Position(second.last_position.0 - 1)).unwrap(),
            2
        );
        assert_eq!(
            durable_stream_version(db, &key, first.last_position).unwrap(),
            2
        );
        assert_eq!(
            durable_stream_version(db, &key, Position(first.first_position.0 - 1)).unwrap(),
            0
        );
        assert_eq!(indexed_stream_version(db, &key).unwrap(), 3);
        assert_eq!(store.stream_version(&stream).await.unwrap(), 3);
    }

    /// The unacknowledged tail a failed group may leave on disk goes entirely: records,
    /// stream-index runs and event-id entries above the head, and nothing at or below it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncate_above_removes_the_tail_and_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let stream = StreamId::new("order-1").unwrap();
        let other = StreamId::new("order-2").unwrap();
        let event = || NewEvent::json("Thing", &serde_json::json!({})).with_id(Uuid::now_v7());
        let (kept, gone) = (vec![event(), event()], vec![event(), event()]);
        let kept_ids: Vec<Uuid> = kept.iter().filter_map(|e| e.event_id).collect();
        let gone_ids: Vec<Uuid> = gone.iter().filter_map(|e| e.event_id).collect();
        {
            let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
            store
                .append(stream.clone(), ExpectedVersion::NoStream, kept)
                .await
                .unwrap();
            // Positions 3 and 4: one more run of the first stream, one of a new stream.
            store
                .append(
                    stream.clone(),
                    ExpectedVersion::Exact(2),
                    vec![gone[0].clone()],
                )
                .await
                .unwrap();
            store
                .append(
                    other.clone(),
                    ExpectedVersion::NoStream,
                    vec![gone[1].clone()],
                )
                .await
                .unwrap();
            store.close();
        }
        let db = open_writable(dir.path(), Durability::Fsync).unwrap();
        assert_eq!(truncate_above(&db, Position(2)).unwrap(), 2);
        assert_eq!(truncate_above(&db, Position(2)).unwrap(), 0);
        assert_eq!(recover_tip(&db).unwrap().0, Position(2));
        let key = keys::stream_key(stream.as_str());
        assert_eq!(indexed_stream_version(&db, &key).unwrap(), 2);
        let other_key = keys::stream_key(other.as_str());
        assert_eq!(indexed_stream_version(&db, &other_key).unwrap(), 0);
        let ids = cf(&db, keys::CF_EVENT_IDS);
        for id in &kept_ids {
            assert!(db.get_cf(ids, keys::event_id_key(id)).unwrap().is_some());
        }
        for id in &gone_ids {
            assert!(db.get_cf(ids, keys::event_id_key(id)).unwrap().is_none());
        }
        drop(db);
        // Reopened, the log continues at position 3 with the truncated ids free again.
        let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.head(), Position(2));
        let again = store
            .append(
                stream.clone(),
                ExpectedVersion::Exact(2),
                vec![gone[0].clone()],
            )
            .await
            .unwrap();
        assert!(!again.duplicate);
        assert_eq!(again.last_position, Position(3));
        let report = store
            .verify_chain(Position::FIRST, Position(3))
            .await
            .unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
}
