//! The command side's error: typed by the error of the aggregate (or decision) it runs.

use crate::error::StoreError;
use crate::types::StreamId;

/// Why a command did not commit. `E` is the refusal type of the aggregate or decision
/// (its `Aggregate::Error`, or a domain's own error for a decision over several
/// aggregates), so a caller matches on the business error without a downcast.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command (a business rule); nothing was written.
    ///
    /// Handling: report it to the caller; retrying the same command gets the same answer
    /// until the aggregate's state changes.
    #[error("{0}")]
    Rejected(E),

    /// The command kept losing the race for its streams: every attempt found a stream
    /// changed by someone else between load and append. Nothing was written.
    ///
    /// Handling: the caller may retry later (with the same idempotency key).
    #[error("command conflicted on stream {stream} after {attempts} attempts")]
    Conflict {
        /// The stream that changed under the last attempt.
        stream: StreamId,
        /// How many attempts were made.
        attempts: u32,
    },

    /// The store failed or refused the append (invalid input, storage failure, reused
    /// event id, undecodable history). See [`StoreError`] for each case.
    #[error(transparent)]
    Store(#[from] StoreError),
}
