//! What a projection's status reports: its state, its rebuild's progress, and the event
//! rates measured over a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use annals_store::Position;
use serde::Serialize;

use crate::keys::Generation;

/// What a projection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionState {
    /// Following the log.
    Running,
    /// Stopped by an operator; `resume` continues.
    Paused,
    /// Following the log while a new generation is built next to the serving one.
    Rebuilding,
    /// Stopped on an event it could not apply (stop policy) or on a storage error.
    Failed,
}

impl ProjectionState {
    /// The lowercase name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Running => "running",
            ProjectionState::Paused => "paused",
            ProjectionState::Rebuilding => "rebuilding",
            ProjectionState::Failed => "failed",
        }
    }
}

/// Progress of a blue/green rebuild.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RebuildProgress {
    /// The generation being built.
    pub generation: Generation,
    /// The projection version building it.
    pub version: u32,
    /// Events done (the new generation's checkpoint).
    pub checkpoint: Position,
    /// The durable head it is heading for.
    pub head: Position,
    /// Recent rate of the rebuild.
    pub events_per_second: f64,
    /// Estimated seconds left at the recent rate (none while the rate is unknown).
    pub eta_seconds: Option<f64>,
}

/// Where a projection is, for operators and `/ready`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The version of the handler that built the serving generation.
    pub version: u32,
    /// The serving generation.
    pub generation: Generation,
    /// What it is doing.
    pub state: ProjectionState,
    /// The last position the serving generation has applied.
    pub checkpoint: Position,
    /// The log's durable head.
    pub head: Position,
    /// Events between the checkpoint and the head.
    pub lag: u64,
    /// Events per second over the last few seconds.
    pub events_per_second: f64,
    /// The last handler or storage error, if any.
    pub last_error: Option<String>,
    /// The position it stopped at, when `failed` on an event.
    pub failed_position: Option<Position>,
    /// How many events are parked.
    pub parked: u64,
    /// The rebuild in progress, if any.
    pub rebuild: Option<RebuildProgress>,
}

/// Events counted over a sliding window of a few seconds.
#[derive(Default)]
pub(super) struct Rate {
    pub(super) samples: VecDeque<(Instant, u64)>,
    pub(super) total: u64,
}

const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Rate {
    pub(super) fn add(&mut self, events: u64) {
        let now = Instant::now();
        if self.samples.is_empty() {
            self.samples.push_back((now, self.total));
        }
        self.total += events;
        self.samples.push_back((now, self.total));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    pub(super) fn per_second(&self) -> f64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        if last.0.elapsed() > RATE_WINDOW {
            return 0.0;
        }
        let span = Instant::now().duration_since(first.0).as_secs_f64();
        if span <= 0.0 {
            0.0
        } else {
            (last.1 - first.1) as f64 / span
        }
    }
}
