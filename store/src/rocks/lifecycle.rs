//! Taking events out of the log without breaking its chain, and copies of the log: stream
//! deletion (soft and hard), retention, backup and restore (RocksDB's `BackupEngine`), and
//! import of a log record by record.
//!
//! A removed event stays at its position as a tombstone (`codec::RECORD_TOMBSTONE_V1`): the
//! envelope and both hashes, no metadata, no payload. Positions never move and stay
//! gapless, and the chain still links from one record to the next through the tombstones;
//! only a tombstone's own hash can no longer be recomputed. A tombstone is written over the
//! record in one synced batch, and its range is compacted afterwards so the dropped bytes
//! leave the disk rather than wait in older files.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rocksdb::backup::{BackupEngine, BackupEngineOptions, RestoreOptions};
use rocksdb::{DB, Env, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::{
    RocksEventStore, cf, decode_at, durable_stream_version, open_writable, recover_tip,
    stream_positions, truncate_above,
};
use crate::codec::{self, GENESIS_HASH, RecordFields};
use crate::error::StoreError;
use crate::keys::{self, CF_EVENTS, CF_META, CF_SNAPSHOTS, CF_STREAMS, EventIdEntry, StreamRun};
use crate::store::{Durability, EventStore};
use crate::types::Direction;
use crate::types::{
    ExpectedVersion, Hash, Position, RecordedEvent, StreamId, Timestamp, category_of,
};

/// How many records one synced batch rewrites or imports.
const BATCH: usize = 1024;

/// How a stream is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteMode {
    /// The stream reads as deleted (no events) and can be written again, its versions
    /// continuing; its events stay in the log, readable in `$all` and exports.
    Soft,
    /// As soft, and every event of the stream becomes a tombstone: its metadata and
    /// payload leave the disk.
    Hard,
}

/// What a deletion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDeletion {
    /// The stream.
    pub stream_id: StreamId,
    /// Its events up to this version read as deleted.
    pub through_version: u64,
    /// How many records became tombstones (0 for a soft deletion).
    pub removed: u64,
}

/// A retention rule of one category: an event of one of its streams is removed when it
/// is older than `max_age`, or when more than `max_count` newer events follow it in its
/// stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRule {
    /// The category (`webhook`, `order`).
    pub category: String,
    /// Events recorded longer ago than this are removed.
    pub max_age: Option<Duration>,
    /// Each stream keeps at most this many of its latest events.
    pub max_count: Option<u64>,
}

/// What a retention pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Events of a retained category looked at.
    pub examined: u64,
    /// Events that became tombstones.
    pub removed: u64,
}

/// One backup of the log in a backup engine's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPoint {
    /// The engine's id of the backup.
    pub backup_id: u32,
    /// The head the backup restores to.
    pub head: Position,
    /// The hash of the event at `head` (all zeros for an empty log).
    #[serde(with = "hex_hash")]
    pub tip: Hash,
    /// Bytes the backup's files take (shared files counted).
    pub size: u64,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex_of(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if text.len() != 64 {
            return Err(serde::de::Error::custom("a hash is 64 hex digits"));
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| serde::de::Error::custom("a hash is 64 hex digits"))?;
        }
        Ok(out)
    }

    pub fn hex_of(hash: &[u8; 32]) -> String {
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How far `stream`'s events are deleted (0: not deleted).
pub(crate) fn deleted_through(db: &DB, stream: &StreamId) -> Result<u64, StoreError> {
    let key = keys::deleted_key(&keys::stream_key(stream.as_str()));
    Ok(db
        .get_pinned_cf(cf(db, CF_META), key)?
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Whether any stream of the log has a deletion mark.
pub(crate) fn any_deleted(db: &DB) -> Result<bool, StoreError> {
    let mut iter = db.raw_iterator_cf(cf(db, CF_META));
    iter.seek(keys::META_DELETED_PREFIX);
    let found = iter
        .key()
        .is_some_and(|k| k.starts_with(keys::META_DELETED_PREFIX));
    iter.status()?;
    Ok(found)
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn storage_io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// Rewrites the records at `positions` as tombstones (those already removed are skipped),
/// in synced batches, then compacts their range. Returns how many it rewrote.
fn tombstone(db: &DB, positions: &[Position]) -> Result<u64, StoreError> {
    let events = cf(db, CF_EVENTS);
    let mut removed = 0;
    for chunk in positions.chunks(BATCH) {
        let keys: Vec<[u8; 8]> = chunk.iter().map(|p| keys::position_key(*p)).collect();
        let values = db.batched_multi_get_cf(events, keys.iter(), false);
        let mut batch = WriteBatch::default();
        for (position, value) in chunk.iter().zip(values) {
            let value = value?.ok_or(StoreError::Corruption {
                position: *position,
            })?;
            let event = decode_at(*position, &value)?;
            if !event.removed {
                batch.put_cf(
                    events,
                    keys::position_key(*position),
                    codec::encode_tombstone(&event),
                );
                removed += 1;
            }
        }
        if !batch.is_empty() {
            db.write_opt(batch, &synced())?;
        }
    }
    if let (Some(first), Some(last)) = (positions.iter().min(), positions.iter().max())
        && removed > 0
    {
        // Every column family shares the write-ahead log: flushing them all lets RocksDB
        // drop the log files that still hold the removed payloads, and the compaction
        // drops the older versions of the records from the table files.
        for name in keys::ALL_CFS {
            db.flush_cf(cf(db, name))?;
        }
        db.compact_range_cf(
            events,
            Some(keys::position_key(*first)),
            Some(keys::position_key(last.next())),
        );
    }
    Ok(removed)
}

impl RocksEventStore {
    fn refuse_lifecycle(&self, operation: &'static str) -> Result<(), StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                path: self.path().to_path_buf(),
            });
        }
        if self.is_replica() {
            return Err(StoreError::Unsupported {
                operation,
                reason: "a replica of a replicated log takes only the log's groups".into(),
            });
        }
        Ok(())
    }

    /// How far `stream`'s events are deleted (0: not deleted).
    pub fn deleted_through(&self, stream: &StreamId) -> Result<u64, StoreError> {
        deleted_through(&self.db(), stream)
    }

    /// Deletes `stream` as it is now (its current version must satisfy `expected`): its
    /// events read as deleted, and with [`DeleteMode::Hard`] they become tombstones and its
    /// snapshot is dropped. A stream with no events is refused with
    /// [`StoreError::WrongExpectedVersion`].
    pub async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<StreamDeletion, StoreError> {
        self.refuse_lifecycle("delete a stream")?;
        let store = self.clone();
        let stream = stream.clone();
        blocking(move || {
            let db = store.db();
            let head = store.head();
            let stream_key = keys::stream_key(stream.as_str());
            let actual = durable_stream_version(&db, &stream_key, head)?;
            let already = deleted_through(&db, &stream)?;
            let expected_ok = expected.accepts(actual)
                // A deleted stream reads as empty, as the append path sees it too.
                || (actual == already && matches!(expected, ExpectedVersion::NoStream));
            if !expected_ok || actual == 0 {
                return Err(StoreError::WrongExpectedVersion {
                    stream,
                    expected: if actual == 0 {
                        ExpectedVersion::StreamExists
                    } else {
                        expected
                    },
                    actual,
                });
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(
                cf(&db, CF_META),
                keys::deleted_key(&stream_key),
                actual.to_be_bytes(),
            );
            batch.delete_cf(cf(&db, CF_SNAPSHOTS), &stream_key);
            db.write_opt(batch, &synced())?;
            store.mark_deletions();
            let removed = match mode {
                DeleteMode::Soft => 0,
                DeleteMode::Hard => {
                    let positions: Vec<Position> =
                        stream_positions(&db, &stream, 1, Direction::Forward, usize::MAX)?
                            .into_iter()
                            .filter(|p| *p <= head)
                            .collect();
                    tombstone(&db, &positions)?
                }
            };
            tracing::info!(%stream, through = actual, ?mode, removed, "stream deleted");
            Ok(StreamDeletion {
                stream_id: stream,
                through_version: actual,
                removed,
            })
        })
        .await
    }

    /// Applies the retention rules once over the whole log: every event of a ruled
    /// category that is older than its `max_age` (at `now`) or followed by more than
    /// `max_count` events in its stream becomes a tombstone. Idempotent: a pass cut short
    /// by a crash is finished by the next.
    pub async fn apply_retention(
        &self,
        rules: Vec<RetentionRule>,
        now: Timestamp,
    ) -> Result<RetentionReport, StoreError> {
        self.refuse_lifecycle("apply retention")?;
        if rules.is_empty() {
            return Ok(RetentionReport::default());
        }
        let store = self.clone();
        blocking(move || {
            let db = store.db();
            let head = store.head();
            let by_category: HashMap<&str, &RetentionRule> =
                rules.iter().map(|r| (r.category.as_str(), r)).collect();
            let mut versions: HashMap<String, u64> = HashMap::new();
            let mut report = RetentionReport::default();
            let mut doomed = Vec::new();
            let mut iter = db.raw_iterator_cf(cf(&db, CF_EVENTS));
            iter.seek(keys::position_key(Position::FIRST));
            while let Some((key, value)) = iter.item() {
                let Some(position) = keys::decode_position_key(key) else {
                    return Err(StoreError::Corruption {
                        position: Position::ZERO,
                    });
                };
                if position > head {
                    break;
                }
                let head_of =
                    codec::peek_head(value).map_err(|_| StoreError::Corruption { position })?;
                if let Some(rule) = by_category.get(category_of(head_of.stream_id)) {
                    let event = decode_at(position, value)?;
                    if !event.removed {
                        report.examined += 1;
                        if retention_removes(&db, rule, &event, now, head, &mut versions)? {
                            doomed.push(position);
                        }
                    }
                }
                if doomed.len() >= BATCH {
                    report.removed += tombstone(&db, &doomed)?;
                    doomed.clear();
                }
                iter.next();
            }
            iter.status()?;
            drop(iter);
            report.removed += tombstone(&db, &doomed)?;
            if report.removed > 0 {
                tracing::info!(removed = report.removed, "retention applied");
            }
            Ok(report)
        })
        .await
    }

    /// Takes a backup of the log into the backup engine directory `dir` (created if
    /// missing), while appends go on: RocksDB flushes the memtables and copies the live
    /// files, sharing with earlier backups in `dir` every file they already hold.
    ///
    /// The backup restores to the head as it was when the backup began (a group written
    /// meanwhile is cut off on restore), and `tip` is the hash there.
    pub async fn backup(&self, dir: &Path) -> Result<BackupPoint, StoreError> {
        let store = self.clone();
        let dir = dir.to_path_buf();
        blocking(move || {
            let db = store.db();
            let head = store.head();
            let tip = tip_at(&db, head)?;
            let backup_id = backup_db(&db, &dir)?;
            let size = backup_size(&dir, backup_id)?;
            Ok(BackupPoint {
                backup_id,
                head,
                tip,
                size,
            })
        })
        .await
    }

    /// Restores the backup `point` from the engine directory `dir` into `target` (which
    /// must not hold a log), cuts it to the backup's head and checks the tip there.
    /// Returns the restored head and tip; open the store to use it.
    pub fn restore_backup(
        dir: &Path,
        point: &BackupPoint,
        target: &Path,
    ) -> Result<(Position, Hash), StoreError> {
        if target.join("CURRENT").exists() {
            return Err(StoreError::Unsupported {
                operation: "restore a backup",
                reason: format!("{} already holds a log", target.display()),
            });
        }
        restore_db(dir, point.backup_id, target)?;
        let db = open_writable(target, Durability::Fsync)?;
        truncate_above(&db, point.head)?;
        let (head, tip) = recover_tip(&db)?;
        if head != point.head || tip != point.tip {
            return Err(StoreError::Corruption { position: head });
        }
        Ok((head, tip))
    }

    /// Writes `records` (a whole log, from position 1, in order) into a new log at `path`,
    /// record by record: positions, versions, ids, times, metadata, payloads and hashes as
    /// given, tombstones as tombstones. Each record must continue the chain (its position,
    /// its stream's version, its `prev_hash`) and match its hash; the first that does not
    /// stops the import with [`StoreError::Corruption`] at its position, and nothing of a
    /// refused import is kept. Returns the head and tip.
    pub fn import<I>(path: &Path, records: I) -> Result<(Position, Hash), StoreError>
    where
        I: IntoIterator<Item = Result<RecordedEvent, StoreError>>,
    {
        std::fs::create_dir_all(path)
            .map_err(storage_io(format!("cannot create {}", path.display())))?;
        if path.join("CURRENT").exists() {
            return Err(StoreError::Unsupported {
                operation: "import a log",
                reason: format!("{} already holds a log", path.display()),
            });
        }
        let db = open_writable(path, Durability::Fsync)?;
        let result = import_into(&db, records);
        if result.is_err() {
            drop(db);
            let _ = std::fs::remove_dir_all(path);
        }
        result
    }
}

fn import_into<I>(db: &DB, records: I) -> Result<(Position, Hash), StoreError>
where
    I: IntoIterator<Item = Result<RecordedEvent, StoreError>>,
{
    let (events_cf, streams_cf, ids_cf) = (
        cf(db, CF_EVENTS),
        cf(db, CF_STREAMS),
        cf(db, keys::CF_EVENT_IDS),
    );
    let mut versions: HashMap<StreamId, u64> = HashMap::new();
    let (mut head, mut tip) = (Position::ZERO, GENESIS_HASH);
    let mut batch = WriteBatch::default();
    let mut buf = Vec::new();
    for record in records {
        let event = record?;
        let version = versions.entry(event.stream_id.clone()).or_default();
        let continues = event.position == head.next()
            && event.prev_hash == tip
            && event.stream_version == *version + 1
            && codec::hash_checks(&event);
        if !continues {
            return Err(StoreError::Corruption {
                position: event.position,
            });
        }
        *version = event.stream_version;
        let key = keys::position_key(event.position);
        if event.removed {
            batch.put_cf(events_cf, key, codec::encode_tombstone(&event));
        } else {
            // The batch copies the bytes, so one buffer serves every record.
            buf.clear();
            codec::encode_record(
                &RecordFields::of(&event),
                &event.prev_hash,
                &event.hash,
                &mut buf,
            );
            batch.put_cf(events_cf, key, &buf);
        }
        let stream_key = keys::stream_key(event.stream_id.as_str());
        batch.put_cf(
            streams_cf,
            keys::stream_index_key(&stream_key, event.stream_version),
            StreamRun {
                first_position: event.position,
                count: 1,
            }
            .encode(),
        );
        batch.put_cf(
            ids_cf,
            keys::event_id_key(&event.event_id),
            EventIdEntry {
                position: event.position,
                index: 0,
                append_len: 1,
            }
            .encode(),
        );
        (head, tip) = (event.position, event.hash);
        if batch.len() >= 3 * BATCH {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    db.write_opt(batch, &synced())?;
    db.flush_wal(true)?;
    Ok((head, tip))
}

/// Whether retention removes `event` under `rule`.
fn retention_removes(
    db: &DB,
    rule: &RetentionRule,
    event: &RecordedEvent,
    now: Timestamp,
    head: Position,
    versions: &mut HashMap<String, u64>,
) -> Result<bool, StoreError> {
    if let Some(max_age) = rule.max_age {
        let age = now.0.saturating_sub(event.recorded_at.0);
        if u128::try_from(age).unwrap_or(0) > max_age.as_micros() {
            return Ok(true);
        }
    }
    if let Some(max_count) = rule.max_count {
        let current = match versions.get(event.stream_id.as_str()) {
            Some(v) => *v,
            None => {
                let key = keys::stream_key(event.stream_id.as_str());
                let v = durable_stream_version(db, &key, head)?;
                versions.insert(event.stream_id.as_str().to_string(), v);
                v
            }
        };
        if event.stream_version + max_count <= current {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The hash of the event at `head` (the genesis hash for an empty log).
fn tip_at(db: &DB, head: Position) -> Result<Hash, StoreError> {
    if head == Position::ZERO {
        return Ok(GENESIS_HASH);
    }
    let value = db
        .get_pinned_cf(cf(db, CF_EVENTS), keys::position_key(head))?
        .ok_or(StoreError::Corruption { position: head })?;
    Ok(decode_at(head, &value)?.hash)
}

fn engine(dir: &Path) -> Result<BackupEngine, StoreError> {
    std::fs::create_dir_all(dir).map_err(storage_io(format!("cannot create {}", dir.display())))?;
    let options = BackupEngineOptions::new(dir)?;
    Ok(BackupEngine::open(&options, &Env::new()?)?)
}

/// Backs up any RocksDB database into the engine directory `dir` (flushing first, so the
/// backup needs no write-ahead log) and returns the new backup's id. The read models use
/// it too.
pub fn backup_db(db: &DB, dir: &Path) -> Result<u32, StoreError> {
    let mut engine = engine(dir)?;
    engine.create_new_backup_flush(db, true)?;
    engine
        .get_backup_info()
        .iter()
        .map(|b| b.backup_id)
        .max()
        .ok_or_else(|| StoreError::Unsupported {
            operation: "back up",
            reason: "the backup engine lists no backup after taking one".into(),
        })
}

/// Checks a backup's files against the sizes and checksums the engine recorded.
pub fn verify_backup(dir: &Path, backup_id: u32) -> Result<(), StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Io {
            what: format!("no backup in {}", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    Ok(engine(dir)?.verify_backup(backup_id)?)
}

/// Restores backup `backup_id` of the engine directory `dir` into `target`.
pub fn restore_db(dir: &Path, backup_id: u32, target: &Path) -> Result<(), StoreError> {
    verify_backup(dir, backup_id)?;
    let mut engine = engine(dir)?;
    std::fs::create_dir_all(target)
        .map_err(storage_io(format!("cannot create {}", target.display())))?;
    engine.restore_from_backup(target, target, &RestoreOptions::default(), backup_id)?;
    Ok(())
}

fn backup_size(dir: &Path, backup_id: u32) -> Result<u64, StoreError> {
    Ok(engine(dir)?
        .get_backup_info()
        .iter()
        .find(|b| b.backup_id == backup_id)
        .map_or(0, |b| b.size))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable {
            reason: format!("a lifecycle task failed: {e}"),
        })?
}

/// The hex form of a hash, for manifests and messages.
pub fn hash_hex(hash: &Hash) -> String {
    hex_hash::hex_of(hash)
}
