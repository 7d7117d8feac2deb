//! `ReadModelStore`: the RocksDB instance that holds every read model, and the two ways
//! into it — [`ReadView`] for readers and [`ReadModelTx`] for projection handlers.
//!
//! - [`meta`]: the records of the meta column family (active generation, checkpoints,
//!   rebuilds, pending drops, parked events) and every operation on them;
//! - [`view`]: [`ReadView`], reads of one generation's rows;
//! - [`tx`]: [`ReadModelTx`], the changes of a batch and how they become one `WriteBatch`.

mod meta;
mod tx;
mod view;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options, WriteBatch};

use crate::error::ProjectionError;
use crate::keys::{self, CF_DATA, CF_META, Generation};

pub use meta::{ActiveRecord, ParkedEvent, RebuildRecord};
pub(crate) use tx::Changes;
pub use tx::ReadModelTx;
pub use view::ReadView;

/// One read-model row: key and value.
pub type Row = (Vec<u8>, Vec<u8>);

/// The read-model database (`<data-dir>/read`): one RocksDB instance, separate from the
/// event log, with a keyspace per projection generation (see [`crate::keys`]).
pub struct ReadModelStore {
    db: DB,
    path: PathBuf,
    /// The generation each projection's readers use; changed only by a take-over, after
    /// the take-over's batch is written.
    active: RwLock<HashMap<String, Generation>>,
}

impl std::fmt::Debug for ReadModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModelStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts
}

impl ReadModelStore {
    /// Opens (or creates) the read-model database in `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ProjectionError> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|e| ProjectionError::Corruption {
            what: path.display().to_string(),
            reason: format!("cannot create the directory: {e}"),
        })?;
        let opts = db_options();
        let cfs = keys::ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, db_options_for(name)));
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| {
            if e.as_ref().contains("lock") {
                ProjectionError::Locked { path: path.clone() }
            } else {
                ProjectionError::Storage(e)
            }
        })?;
        let meta = db
            .cf_handle(CF_META)
            .expect("meta column family was just opened");
        match db.get_cf(meta, keys::FORMAT_KEY)? {
            None => db.put_cf(meta, keys::FORMAT_KEY, [keys::FORMAT_VERSION])?,
            Some(v) if v.as_slice() == [keys::FORMAT_VERSION] => {}
            Some(v) => {
                return Err(ProjectionError::UnsupportedFormat {
                    found: v.first().copied().unwrap_or(0),
                    supported: keys::FORMAT_VERSION,
                });
            }
        }
        Ok(Self {
            db,
            path,
            active: RwLock::new(HashMap::new()),
        })
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Backs the read models up into the backup engine directory `dir` while the
    /// projections write (every batch is atomic, so the backup holds each projection at a
    /// checkpoint), and returns the backup's id.
    pub fn backup(&self, dir: &Path) -> Result<u32, ProjectionError> {
        Ok(annals_store::backup::backup_db(&self.db, dir)?)
    }

    /// A column family's handle (see [`crate::keys`] for what each holds).
    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened with the database")
    }

    /// A reader over the generation that currently serves `projection`.
    pub fn view(&self, projection: &str) -> Result<ReadView<'_>, ProjectionError> {
        let generation = self.active_generation(projection).ok_or_else(|| {
            ProjectionError::UnknownProjection {
                name: projection.to_string(),
            }
        })?;
        Ok(self.view_generation(projection, generation))
    }

    /// A reader over one generation of a projection.
    pub(crate) fn view_generation(&self, projection: &str, generation: Generation) -> ReadView<'_> {
        ReadView {
            store: self,
            prefix: keys::keyspace_prefix(projection, generation),
        }
    }

    /// The generation serving `projection`'s readers, if the projection is known.
    pub fn active_generation(&self, projection: &str) -> Option<Generation> {
        if let Some(g) = self.active.read().expect("active map lock").get(projection) {
            return Some(*g);
        }
        Some(self.active_record(projection).ok()??.generation)
    }

    /// Switches `projection`'s readers to `generation`: at start-up, and after a
    /// take-over's batch is written.
    pub(crate) fn set_active(&self, projection: &str, generation: Generation) {
        self.active
            .write()
            .expect("active map lock")
            .insert(projection.to_string(), generation);
    }

    /// Writes one batch atomically.
    fn write(&self, batch: WriteBatch) -> Result<(), ProjectionError> {
        // No fsync: a read model is rebuildable, and its checkpoint is in the same batch, so
        // after a crash it resumes from the last batch the WAL kept.
        self.db.write(batch)?;
        Ok(())
    }

    /// Writes rows of the generation serving `projection` outside its worker's batches, in
    /// one atomic write: `puts` then `deletes`, keys without the keyspace prefix.
    ///
    /// For rows the worker creates and then leaves to someone else (a process manager's
    /// outbox, which its dispatcher empties): in the normal course the worker does not
    /// write such a row again. Only a rewind or rebuild writes it again, with the same
    /// contents, which a process manager's idempotency keys make harmless.
    pub fn write_rows(
        &self,
        projection: &str,
        puts: &[Row],
        deletes: &[Vec<u8>],
    ) -> Result<(), ProjectionError> {
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let generation = self.active_generation(projection).ok_or_else(|| {
            ProjectionError::UnknownProjection {
                name: projection.to_string(),
            }
        })?;
        let prefix = keys::keyspace_prefix(projection, generation);
        let data = self.cf(CF_DATA);
        let mut batch = WriteBatch::default();
        for (key, value) in puts {
            batch.put_cf(data, [prefix.as_slice(), key].concat(), value);
        }
        for key in deletes {
            batch.delete_cf(data, [prefix.as_slice(), key].concat());
        }
        self.write(batch)
    }

    /// Every row of the generation serving `projection`, keys without the keyspace prefix:
    /// for comparing two builds of one read model.
    pub fn dump(&self, projection: &str) -> Result<Vec<Row>, ProjectionError> {
        self.view(projection)?.scan(&[], None, usize::MAX)
    }

    /// Every row of one generation of `projection` (serving or not, e.g. one a rebuild is
    /// filling), keys without the keyspace prefix.
    pub fn dump_generation(
        &self,
        projection: &str,
        generation: Generation,
    ) -> Result<Vec<Row>, ProjectionError> {
        self.view_generation(projection, generation)
            .scan(&[], None, usize::MAX)
    }
}

fn db_options_for(name: &str) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    if name == CF_DATA {
        // Point lookups dominate (order by id, product by id): a bloom filter saves reads.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        // No memtable bloom filter: adding every key to it costs a catch-up CPU, and the
        // lookups it would speed up, of keys not in the database (a new order's), are not
        // made.
    }
    opts
}
