//! The `Projection` role: what turns events into a read model.

use annals_store::{ReadFilter, RecordedEvent};

use crate::error::HandlerError;
use crate::storage::ReadModelTx;

/// What a worker does with an event whose handler still fails after its retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Park the event (a dead-letter record with position, error, attempts and time) and
    /// move on: the read model stays current, minus that event, until it is replayed.
    #[default]
    Continue,
    /// Stop before the event: the projection reports `failed` with the position, and
    /// `resume` tries it again. For read models where a skipped event would be worse than a
    /// stale one.
    Stop,
}

/// A read model builder: a pure function of the events it is given.
///
/// A handler must write only through the [`ReadModelTx`] it gets: the runtime writes those
/// changes and the checkpoint in one batch, which is what makes the read model exactly the
/// fold of the events up to its checkpoint after any crash. Handlers must be deterministic
/// (no clocks, no randomness) so that a rebuild gives the same read model.
pub trait Projection: Send + Sync + 'static {
    /// Unique name, `[a-z0-9_-]{1,64}`: the key of its checkpoint and keyspace.
    fn name(&self) -> &str;

    /// Version of the handler's logic. Raising it makes the runtime rebuild the read model
    /// blue/green on the next start while the old version keeps serving.
    fn version(&self) -> u32 {
        1
    }

    /// The events the projection wants (stream categories and/or event types).
    fn filter(&self) -> ReadFilter {
        ReadFilter::all()
    }

    /// What happens to an event whose handler keeps failing.
    fn poison_policy(&self) -> PoisonPolicy {
        PoisonPolicy::Continue
    }

    /// Applies one event (already upcast to its newest schema version) to the read model.
    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError>;
}

/// Checks a projection name: 1 to 64 characters of `[a-z0-9_-]`.
pub fn validate_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
