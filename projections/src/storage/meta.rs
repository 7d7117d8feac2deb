//! The records of the meta column family and the operations on them: which generation
//! serves each projection, each generation's checkpoint, the rebuild in progress, the
//! generations waiting to be dropped and the parked events. Their keys are built in
//! [`crate::keys`]; nothing outside this module reads or writes the meta column family.

use annals_store::Position;
use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

    pub(crate) fn meta_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        }
    }

    pub(crate) fn meta_scan(&self, prefix: &[u8]) -> Result<Vec<Row>, ProjectionError> {
        scan_raw(&self.db, self.cf(CF_META), prefix, None, usize::MAX)
    }

    /// Deletes every row of one generation and its pending-drop marker.
    pub(crate) fn drop_generation(
        &self,
        projection: &str,
        generation: Generation,
    ) -> Result<(), ProjectionError> {
        let prefix = keys::keyspace_prefix(projection, generation);
        let mut batch = WriteBatch::default();
        if let Some(end) = keys::prefix_end(&prefix) {
            batch.delete_range_cf(self.cf(CF_DATA), &prefix, &end);
        }
        batch.delete_cf(self.cf(CF_META), keys::drop_key(projection, generation));
        batch.delete_cf(
            self.cf(CF_META),
            keys::checkpoint_key(projection, generation),
        );
        self.write(batch)
    }

    /// The parked events of a projection, in position order.
    pub fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>, ProjectionError> {
        self.meta_scan(&keys::parked_prefix(projection))?
            .into_iter()
            .map(|(_, v)| Ok(serde_json::from_slice(&v)?))
            .collect()
    }

    /// The blue/green rebuild of `projection` recorded as in progress, if any: what a
    /// restarted runtime resumes.
    pub fn rebuild_in_progress(
        &self,
        projection: &str,
    ) -> Result<Option<RebuildRecord>, ProjectionError> {
        self.meta_json(&keys::rebuild_key(projection))
    }
}
