//! The one error type of `annals-projections`.

use std::path::PathBuf;
use std::time::Duration;

use annals_store::{Position, StoreError};

/// Everything that can go wrong in the projection runtime or the read-model storage.
/// The API edge gives each variant its client-visible code in its own error table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// No projection of this name is registered.
    #[error("unknown projection {name:?}")]
    UnknownProjection {
        /// The name asked for.
        name: String,
    },

    /// A projection name is empty, too long, or has characters outside `[a-z0-9_-]`.
    #[error("invalid projection name {name:?}: 1 to 64 characters of [a-z0-9_-]")]
    InvalidName {
        /// The offending name.
        name: String,
    },

    /// Two registered projections share a name.
    #[error("projection {name:?} is registered twice")]
    DuplicateProjection {
        /// The name.
        name: String,
    },

    /// `wait_for` gave up: the projection had not reached the position in time.
    ///
    /// Handling: retry later, or read without the consistency requirement.
    #[error("projection {name} reached {checkpoint}, not {position}, within {timeout:?}")]
    StaleRead {
        /// The projection waited on.
        name: String,
        /// The position asked for.
        position: Position,
        /// Where the projection was when the wait ended.
        checkpoint: Position,
        /// How long the caller waited.
        timeout: Duration,
    },

    /// The operation does not fit the projection's state (for example a rebuild while one
    /// runs already).
    #[error("projection {name}: {reason}")]
    InvalidState {
        /// The projection.
        name: String,
        /// Why the operation was refused.
        reason: String,
    },

    /// A stored read-model or checkpoint value could not be decoded.
    #[error("read model {what} is damaged: {reason}")]
    Corruption {
        /// What was being read.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The read-model directory was written by a newer, unknown format.
    #[error("read-model format version {found} is newer than this build understands ({supported})")]
    UnsupportedFormat {
        /// The version on disk.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },

    /// Another process (or another handle in this one) has the read-model directory open.
    #[error("read-model directory {path} is in use by another process")]
    Locked {
        /// The directory.
        path: PathBuf,
    },

    /// The event store failed while a worker read from it.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// RocksDB or the file system failed under the read models.
    #[error("read-model storage error: {0}")]
    Storage(#[from] rocksdb::Error),

    /// A value could not be encoded or decoded as JSON.
    #[error("read-model value is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// The runtime has shut down.
    #[error("the projection runtime has shut down")]
    Closed,
}

/// What a handler returns when it cannot apply an event: any error, boxed. The runtime
/// retries it with backoff and then parks the event (see [`crate::PoisonPolicy`]).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;
