//! Raw RocksDB, for the append benchmarks (feature `bench`): the same records written
//! straight into a default-configured database, without the log's checks, encoding, hash
//! chain or group commit. What an append costs above this floor is what the engine adds.
//!
//! ```text
//! let raw = RawDb::open(dir)?;
//! let writer = raw.writer(Durability::Fsync);
//! let batch = raw.batch(&payload, 10);
//! writer.write(batch)?;
//! ```
//!
//! Building a batch and writing it are separate steps, so that a caller can time the write
//! alone, as it times an append of the log.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{DB, Options, WriteBatch, WriteOptions};

use crate::error::StoreError;
use crate::store::Durability;

/// A raw RocksDB database with default options, created if missing. Keys are consecutive
/// big-endian `u64`s handed out across all writers, as positions are in the log.
pub struct RawDb {
    db: DB,
    next_key: AtomicU64,
}

/// Records ready to be written in one `WriteBatch`.
pub struct RawBatch(WriteBatch);

/// Writes batches with one durability; one per writer thread.
pub struct RawWriter<'a> {
    db: &'a DB,
    options: WriteOptions,
}

impl RawDb {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        Ok(Self {
            db: DB::open(&options, dir)?,
            next_key: AtomicU64::new(0),
        })
    }

    /// `records` copies of `payload`, each under the next key.
    pub fn batch(&self, payload: &[u8], records: usize) -> RawBatch {
        let mut batch = WriteBatch::default();
        for _ in 0..records {
            let key = self.next_key.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            batch.put(key, payload);
        }
        RawBatch(batch)
    }

    /// A writer whose writes are acknowledged as `durability` says: with
    /// [`Durability::Fsync`] each write syncs the WAL.
    pub fn writer(&self, durability: Durability) -> RawWriter<'_> {
        let mut options = WriteOptions::default();
        options.set_sync(durability == Durability::Fsync);
        RawWriter {
            db: &self.db,
            options,
        }
    }
}

impl RawWriter<'_> {
    /// Writes the batch atomically.
    pub fn write(&self, batch: RawBatch) -> Result<(), StoreError> {
        Ok(self.db.write_opt(batch.0, &self.options)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_write_consecutive_keys_across_writers() {
        let dir = tempfile::tempdir().unwrap();
        let raw = RawDb::open(dir.path()).unwrap();
        let buffered = raw.writer(Durability::Buffered);
        let synced = raw.writer(Durability::Fsync);
        buffered.write(raw.batch(b"a", 2)).unwrap();
        synced.write(raw.batch(b"b", 3)).unwrap();
        let keys: Vec<u64> = raw
            .db
            .iterator(rocksdb::IteratorMode::Start)
            .map(|item| {
                let (key, _) = item.unwrap();
                u64::from_be_bytes(key[..].try_into().unwrap())
            })
            .collect();
        assert_eq!(keys, [0, 1, 2, 3, 4]);
        assert_eq!(
            raw.db.get(3u64.to_be_bytes()).unwrap().as_deref(),
            Some(&b"b"[..])
        );
    }
}
