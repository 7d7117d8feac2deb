//! The records of the meta column family and the operations on them: which generation
//! serves each projection, each generation's checkpoint, the rebuild in progress, the
//! generations waiting to be dropped and the parked events. Their keys are built in
//! [`crate::keys`]; nothing outside this module reads or writes the meta column family.

use annals_store::Position;
use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::tx::{Changes, ReadModelTx, batch_of};
use super::view::scan_raw;
use super::{ReadModelStore, Row};
use crate::error::ProjectionError;
use crate::keys::{self, CF_DATA, CF_META, Generation};

/// Which generation serves a projection's readers, and which projection version built it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRecord {
    /// The keyspace generation.
    pub generation: Generation,
    /// The projection version whose handler built it.
    pub version: u32,
}

/// A blue/green rebuild in progress: the generation being filled and the version filling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildRecord {
    /// The keyspace generation being built.
    pub generation: Generation,
    /// The projection version whose handler builds it.
    pub version: u32,
    /// When the rebuild started (microseconds since the Unix epoch).
    pub started_at_micros: i64,
}

/// An event a projection could not apply after its retries, set aside so the projection
/// could move on. It can be listed and replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// The projection that parked it.
    pub projection: String,
    /// The event's global position.
    pub position: u64,
    /// The event's id.
    pub event_id: String,
    /// The event's stream.
    pub stream_id: String,
    /// The event's type.
    pub event_type: String,
    /// The handler's last error.
    pub error: String,
    /// How many times the handler was tried.
    pub attempts: u32,
    /// When it was parked (microseconds since the Unix epoch).
    pub parked_at_micros: i64,
}

impl ReadModelStore {
    /// The last position a generation of a projection has applied (0 when none).
    pub fn checkpoint(
        &self,
        projection: &str,
        generation: Generation,
    ) -> Result<Position, ProjectionError> {
        let key = keys::checkpoint_key(projection, generation);
        match self.db.get_pinned_cf(self.cf(CF_META), &key)? {
            None => Ok(Position::ZERO),
            Some(v) => keys::decode_position(&v).ok_or_else(|| ProjectionError::Corruption {
                what: format!("checkpoint of {projection}"),
                reason: "not an 8-byte position".into(),
            }),
        }
    }

    /// The blue/green rebuild of `projection` recorded as in progress, if any: what a
    /// restarted runtime resumes.
    pub fn rebuild_in_progress(
        &self,
        projection: &str,
    ) -> Result<Option<RebuildRecord>, ProjectionError> {
        self.meta_json(&keys::rebuild_key(projection))
    }

    /// The parked events of a projection, in position order.
    pub fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>, ProjectionError> {
        self.meta_scan(&keys::parked_prefix(projection))?
            .into_iter()
            .map(|(_, v)| Ok(serde_json::from_slice(&v)?))
            .collect()
    }

    /// How many events of a projection are parked (their records are counted, not read).
    pub(crate) fn parked_count(&self, projection: &str) -> Result<u64, ProjectionError> {
        Ok(self.meta_scan(&keys::parked_prefix(projection))?.len() as u64)
    }

    /// The record of the event of `projection` parked at `position`, if there is one.
    pub(crate) fn parked_event(
        &self,
        projection: &str,
        position: Position,
    ) -> Result<Option<ParkedEvent>, ProjectionError> {
        self.meta_json(&keys::parked_key(projection, position))
    }

    /// The generation recorded as serving `projection`, and the version that built it;
    /// `None` for a projection never started.
    pub(crate) fn active_record(
        &self,
        projection: &str,
    ) -> Result<Option<ActiveRecord>, ProjectionError> {
        self.meta_json(&keys::active_key(projection))
    }

    /// Records a projection seen for the first time: generation 1, built by `version`,
    /// serves it, from checkpoint 0.
    pub(crate) fn init_projection(
        &self,
        projection: &str,
        version: u32,
    ) -> Result<ActiveRecord, ProjectionError> {
        let active = ActiveRecord {
            generation: 1,
            version,
        };
        let mut batch = WriteBatch::default();
        self.put_active(&mut batch, projection, &active)?;
        self.put_checkpoint(&mut batch, projection, active.generation, Position::ZERO);
        self.write(batch)?;
        Ok(active)
    }

    /// Moves a generation's checkpoint to `to`, so that its worker hands the events after
    /// `to` to the projection again (or skips those up to it). Its rows stay as they are.
    pub(crate) fn rewind(
        &self,
        projection: &str,
        generation: Generation,
        to: Position,
    ) -> Result<(), ProjectionError> {
        let mut batch = WriteBatch::default();
        self.put_checkpoint(&mut batch, projection, generation, to);
        self.write(batch)
    }

    /// Records the start of a rebuild into `record.generation`, in one batch: that
    /// generation's keyspace is cleared, the rebuild record written and its checkpoint set
    /// to 0.
    pub(crate) fn begin_rebuild(
        &self,
        projection: &str,
        record: &RebuildRecord,
    ) -> Result<(), ProjectionError> {
        let mut batch = WriteBatch::default();
        // Nothing should be there; clearing makes a rebuild start from a clean slate even
        // if an earlier generation of that number was left behind.
        self.clear_keyspace(&mut batch, projection, record.generation);
        batch.put_cf(
            self.cf(CF_META),
            keys::rebuild_key(projection),
            serde_json::to_vec(record)?,
        );
        self.put_checkpoint(&mut batch, projection, record.generation, Position::ZERO);
        self.write(batch)
    }

    /// Makes a rebuilt generation the one serving `projection`: one batch records it as
    /// active, forgets the rebuild and marks the `old` generation to be dropped; then the
    /// readers switch to it.
    pub(crate) fn take_over(
        &self,
        projection: &str,
        active: ActiveRecord,
        old: Generation,
    ) -> Result<(), ProjectionError> {
        let meta = self.cf(CF_META);
        let mut batch = WriteBatch::default();
        self.put_active(&mut batch, projection, &active)?;
        batch.delete_cf(meta, keys::rebuild_key(projection));
        batch.put_cf(meta, keys::drop_key(projection, old), []);
        self.write(batch)?;
        self.set_active(projection, active.generation);
        Ok(())
    }

    /// The generations of `projection` that a take-over marked to be dropped.
    pub(crate) fn pending_drops(
        &self,
        projection: &str,
    ) -> Result<Vec<Generation>, ProjectionError> {
        Ok(self
            .meta_scan(&keys::drop_prefix(projection))?
            .into_iter()
            // The generation's bytes may contain 0x00 (generation 1 is `00 00 00 01`), so
            // the key is parsed by its known prefix, never by splitting on the separator.
            .filter_map(|(key, _)| keys::decode_drop_key(projection, &key))
            .collect())
    }

    /// Deletes every row of one generation, its checkpoint and its pending-drop marker.
    pub(crate) fn drop_generation(
        &self,
        projection: &str,
        generation: Generation,
    ) -> Result<(), ProjectionError> {
        let mut batch = WriteBatch::default();
        self.clear_keyspace(&mut batch, projection, generation);
        let meta = self.cf(CF_META);
        batch.delete_cf(meta, keys::drop_key(projection, generation));
        batch.delete_cf(meta, keys::checkpoint_key(projection, generation));
        self.write(batch)
    }

    /// Writes a worker's page in one batch: the read-model `changes` of its events, the
    /// records of the events it `parked` and the generation's new `checkpoint`, so that
    /// after any crash the generation is the fold of the events up to its checkpoint. The
    /// only way a worker writes read-model rows in checkpoint order.
    ///
    /// Looks up the keys the page deleted without knowing whether the database holds them
    /// (see [`batch_of`]), so the pages before this one must be written already.
    pub(crate) fn write_page(
        &self,
        projection: &str,
        generation: Generation,
        changes: &Changes,
        parked: &[ParkedEvent],
        checkpoint: Position,
    ) -> Result<(), ProjectionError> {
        let mut batch = batch_of(
            self,
            &keys::keyspace_prefix(projection, generation),
            changes,
        )?;
        for record in parked {
            self.put_parked(&mut batch, projection, Position(record.position), record)?;
        }
        self.put_checkpoint(&mut batch, projection, generation, checkpoint);
        self.write(batch)
    }

    /// Writes a replayed parked event's changes (`tx`, its event accepted) and removes its
    /// parked record at `position`, in one batch.
    pub(crate) fn write_replayed(
        &self,
        tx: ReadModelTx<'_>,
        projection: &str,
        position: Position,
    ) -> Result<(), ProjectionError> {
        let mut batch = tx.into_batch()?;
        batch.delete_cf(self.cf(CF_META), keys::parked_key(projection, position));
        self.write(batch)
    }

    /// Drops the record of the event of `projection` parked at `position`, leaving the
    /// read model without it for good; whether there was one.
    pub(crate) fn discard_parked(
        &self,
        projection: &str,
        position: Position,
    ) -> Result<bool, ProjectionError> {
        let key = keys::parked_key(projection, position);
        if self.meta_json::<ParkedEvent>(&key)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_META), key);
        self.write(batch)?;
        Ok(true)
    }

    /// Rewrites the record of the event parked at `position` (after a replay failed
    /// again: its attempts and error).
    pub(crate) fn update_parked(
        &self,
        projection: &str,
        position: Position,
        record: &ParkedEvent,
    ) -> Result<(), ProjectionError> {
        let mut batch = WriteBatch::default();
        self.put_parked(&mut batch, projection, position, record)?;
        self.write(batch)
    }

    /// Adds to `batch` the record of the generation serving `projection`.
    fn put_active(
        &self,
        batch: &mut WriteBatch,
        projection: &str,
        active: &ActiveRecord,
    ) -> Result<(), ProjectionError> {
        batch.put_cf(
            self.cf(CF_META),
            keys::active_key(projection),
            serde_json::to_vec(active)?,
        );
        Ok(())
    }

    /// Adds to `batch` the checkpoint of one generation.
    fn put_checkpoint(
        &self,
        batch: &mut WriteBatch,
        projection: &str,
        generation: Generation,
        checkpoint: Position,
    ) {
        batch.put_cf(
            self.cf(CF_META),
            keys::checkpoint_key(projection, generation),
            keys::encode_position(checkpoint),
        );
    }

    /// Adds to `batch` the record of an event parked at `position`.
    fn put_parked(
        &self,
        batch: &mut WriteBatch,
        projection: &str,
        position: Position,
        record: &ParkedEvent,
    ) -> Result<(), ProjectionError> {
        batch.put_cf(
            self.cf(CF_META),
            keys::parked_key(projection, position),
            serde_json::to_vec(record)?,
        );
        Ok(())
    }

    /// Adds to `batch` the range delete of every row of one generation.
    fn clear_keyspace(&self, batch: &mut WriteBatch, projection: &str, generation: Generation) {
        let prefix = keys::keyspace_prefix(projection, generation);
        if let Some(end) = keys::prefix_end(&prefix) {
            batch.delete_range_cf(self.cf(CF_DATA), &prefix, &end);
        }
    }

    /// The JSON record stored under a meta key.
    fn meta_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, ProjectionError> {
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        }
    }

    /// Every meta record whose key starts with `prefix`.
    fn meta_scan(&self, prefix: &[u8]) -> Result<Vec<Row>, ProjectionError> {
        scan_raw(&self.db, self.cf(CF_META), prefix, None, usize::MAX)
    }
}
