//! The node's recent history, one sample a second: the head, the write path's rates and
//! each projection's lag. `overview` serves it, so the console plots the last minutes as
//! soon as it opens instead of only what it saw itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use annals_projections::ProjectionRuntime;
use annals_store::{EventStore, SharedStore, StoreStats, Timestamp};

/// Samples kept: ten minutes at one a second (a few hundred bytes each).
pub const CAPACITY: usize = 600;

/// One second of the node's life.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// When it was taken (microseconds since the Unix epoch).
    pub at_micros: i64,
    /// The durable head then.
    pub head: u64,
    /// Events that reached the log per second since the sample before (from the head, so
    /// a replica counts the events it applied).
    pub events_per_second: f64,
    /// Group commits this node wrote per second since the sample before.
    pub commits_per_second: f64,
    /// Events per group commit over the same second (0 without commits).
    pub mean_commit_events: f64,
    /// Each projection's lag and checkpoint then, by name.
    pub lags: Vec<ProjectionLag>,
}

/// A projection's distance from the head at one sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionLag {
    /// The projection.
    pub name: String,
    /// Events between its checkpoint and the head.
    pub lag: u64,
    /// Its checkpoint.
    pub checkpoint: u64,
}

/// The samples of the last [`CAPACITY`] seconds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Samples {
    inner: Arc<Mutex<Inner>>,
    started_at_micros: i64,
}

#[derive(Debug, Default)]
struct Inner {
    samples: VecDeque<Sample>,
    previous: Option<(Instant, u64, StoreStats)>,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            started_at_micros: Timestamp::now().as_micros(),
        }
    }
}

impl Samples {
    /// When this node started sampling (its start, near enough).
    pub fn started_at_micros(&self) -> i64 {
        self.started_at_micros
    }

    /// Takes a sample of `store` and `projections` now. The first call only sets the
    /// baseline that rates are measured from.
    pub fn record(&self, store: &SharedStore, projections: &ProjectionRuntime) {
        let now = Instant::now();
        let head = store.head().get();
        let stats = store.stats();
        let lags = projections
            .status()
            .into_iter()
            .map(|s| ProjectionLag {
                name: s.name,
                lag: s.lag,
                checkpoint: s.checkpoint.get(),
            })
            .collect();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = inner.previous.replace((now, head, stats));
        let Some((then, then_head, then_stats)) = previous else {
            return;
        };
        let seconds = now.duration_since(then).as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let delta = stats.since(&then_stats);
        let sample = Sample {
            at_micros: Timestamp::now().as_micros(),
            head,
            events_per_second: head.saturating_sub(then_head) as f64 / seconds,
            commits_per_second: delta.commits as f64 / seconds,
            mean_commit_events: delta.mean_commit_events(),
            lags,
        };
        if inner.samples.len() == CAPACITY {
            inner.samples.pop_front();
        }
        inner.samples.push_back(sample);
    }

    /// The samples of the last `seconds` seconds (at most [`CAPACITY`]), oldest first.
    pub fn last(&self, seconds: usize) -> Vec<Sample> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = inner.samples.len().saturating_sub(seconds);
        inner.samples.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_store::{ExpectedVersion, InMemoryEventStore, NewEvent, StoreOptions, StreamId};

    #[tokio::test]
    async fn samples_measure_the_head_between_calls_and_keep_the_last_ones() {
        let store = SharedStore::new(InMemoryEventStore::new(StoreOptions::default()));
        let read = tempfile::tempdir().unwrap();
        let projections = crate::read_models::start(
            Arc::new(store.clone()),
            Arc::new(annals_projections::ReadModelStore::open(read.path()).unwrap()),
            annals_projections::RuntimeOptions::default(),
        )
        .unwrap();
        let samples = Samples::default();
        samples.record(&store, &projections);
        assert!(
            samples.last(10).is_empty(),
            "the first call is the baseline"
        );
        let stream = StreamId::new("thing-1").unwrap();
        let event = NewEvent::json("Happened", &serde_json::json!({}));
        store
            .append(stream, ExpectedVersion::Any, vec![event.clone(), event])
            .await
            .unwrap();
        samples.record(&store, &projections);
        let taken = samples.last(10);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].head, 2);
        assert!(taken[0].events_per_second > 0.0);
        assert!(taken[0].lags.iter().any(|l| l.name == "streams"));
        for _ in 0..CAPACITY + 5 {
            samples.record(&store, &projections);
        }
        assert_eq!(samples.last(usize::MAX).len(), CAPACITY);
        assert_eq!(samples.last(3).len(), 3);
        projections.shutdown().await;
    }
}
