//! `InMemoryEventStore`: the simplest correct event store, kept deliberately naive.
//!
//! It is the model the property tests compare [`crate::RocksEventStore`] against, so it
//! shares only the pure pieces (validation, the record hash) and none of the write path.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use uuid::Uuid;

use crate::codec::{self, GENESIS_HASH, RecordFields};
use crate::error::StoreError;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{EventStore, MAX_SCAN_PER_READ, StoreOptions, validate_appends};
use crate::types::{
    AppendResult, ChainFault, ChainReport, Direction, EventPage, MultiAppendResult, Position,
    ReadFilter, RecordedEvent, StreamAppend, StreamId, Timestamp,
};

/// An event store in a `Vec`, behind a mutex.
#[derive(Debug)]
pub struct InMemoryEventStore {
    options: StoreOptions,
    state: Mutex<State>,
    head_tx: watch::Sender<Position>,
    head_rx: watch::Receiver<Position>,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<RecordedEvent>,
    /// Stream → indexes into `log`.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Event id → (index into `log`, index in its append, length of its append).
    ids: HashMap<Uuid, (usize, usize, usize)>,
    snapshots: HashMap<StreamId, Snapshot>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new(StoreOptions::default())
    }
}

impl InMemoryEventStore {
    /// An empty store with the given limits (durability is meaningless here).
    pub fn new(options: StoreOptions) -> Self {
        let (head_tx, head_rx) = watch::channel(Position::ZERO);
        Self {
            options,
            state: Mutex::new(State::default()),
            head_tx,
            head_rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn append_locked(
        &self,
        state: &mut State,
        appends: Vec<StreamAppend>,
    ) -> Result<MultiAppendResult, StoreError> {
        // Classify every stream's events as new, an exact earlier append, or a conflict.
        let mut originals = Vec::new();
        let mut any_new = false;
        for append in &appends {
            let known: Vec<Option<(usize, usize, usize)>> = append
                .events
                .iter()
                .map(|e| e.event_id.and_then(|id| state.ids.get(&id).copied()))
                .collect();
            if known.iter().all(Option::is_none) {
                any_new = true;
                originals.push(None);
                continue;
            }
            let n = append.events.len();
            let first = known[0];
            let exact = first.is_some_and(|(at, idx, len)| {
                idx == 0
                    && len == n
                    && state.log[at].stream_id == append.stream_id
                    && known
                        .iter()
                        .enumerate()
                        .all(|(i, k)| *k == Some((at + i, i, n)))
            });
            if !exact {
                let (i, (at, _, _)) = known
                    .iter()
                    .enumerate()
                    .find_map(|(i, k)| k.map(|k| (i, k)))
                    .expect("at least one id is known");
                return Err(StoreError::IdempotencyConflict {
                    event_id: append.events[i].event_id.unwrap_or_default(),
                    existing: state.log[at].position,
                });
            }
            let (at, _, _) = first.expect("exact implies known");
            let e = &state.log[at];
            originals.push(Some(AppendResult {
                stream_id: append.stream_id.clone(),
                first_version: e.stream_version,
                last_version: e.stream_version + n as u64 - 1,
                first_position: e.position,
                last_position: Position(e.position.0 + n as u64 - 1),
                duplicate: true,
            }));
        }
        if !any_new {
            let streams: Vec<AppendResult> = originals.into_iter().flatten().collect();
            return Ok(MultiAppendResult::from_streams(streams, true));
        }
        if let Some(index) = originals.iter().position(Option::is_some) {
            // Part of this commit is already in the log: not a retry of it.
            return Err(StoreError::IdempotencyConflict {
                event_id: appends[index].events[0].event_id.unwrap_or_default(),
                existing: originals[index]
                    .as_ref()
                    .map_or(Position::ZERO, |o| o.first_position),
            });
        }
        for append in &appends {
            let actual = state.streams.get(&append.stream_id).map_or(0, Vec::len) as u64;
            if !append.expected.accepts(actual) {
                return Err(StoreError::WrongExpectedVersion {
                    stream: append.stream_id.clone(),
                    expected: append.expected,
                    actual,
                });
            }
        }
        let now = Timestamp::now();
        let mut results = Vec::new();
        for append in appends {
            let n = append.events.len();
            let first_index = state.log.len();
            let first_version = state.streams.get(&append.stream_id).map_or(0, Vec::len) as u64 + 1;
            for (i, new) in append.events.into_iter().enumerate() {
                let prev_hash = state.log.last().map_or(GENESIS_HASH, |e| e.hash);
                let mut event = RecordedEvent {
                    position: Position(state.log.len() as u64 + 1),
                    stream_id: append.stream_id.clone(),
                    stream_version: first_version + i as u64,
                    event_id: new.event_id.unwrap_or_else(Uuid::now_v7),
                    event_type: new.event_type,
                    schema_version: new.schema_version,
                    recorded_at: now,
                    metadata: new.metadata,
                    payload: new.payload,
                    prev_hash,
                    hash: [0; 32],
                    removed: false,
                };
                event.hash = codec::chain_hash(&RecordFields::of(&event), &prev_hash);
                state.ids.insert(event.event_id, (state.log.len(), i, n));
                state
                    .streams
                    .entry(append.stream_id.clone())
                    .or_default()
                    .push(state.log.len());
                state.log.push(event);
            }
            results.push(AppendResult {
                stream_id: append.stream_id,
                first_version,
                last_version: first_version + n as u64 - 1,
                first_position: Position(first_index as u64 + 1),
                last_position: Position(state.log.len() as u64),
                duplicate: false,
            });
        }
        Ok(MultiAppendResult::from_streams(results, false))
    }
}

impl EventStore for InMemoryEventStore {
    async fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<MultiAppendResult, StoreError> {
        validate_appends(&appends, &self.options)?;
        let mut state = self.lock();
        let result = self.append_locked(&mut state, appends)?;
        self.head_tx.send_replace(Position(state.log.len() as u64));
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.lock();
        let Some(indexes) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let events: Vec<RecordedEvent> = match direction {
            Direction::Forward => indexes
                .iter()
                .skip(from_version.saturating_sub(1) as usize)
                .take(limit)
                .map(|i| state.log[*i].clone())
                .collect(),
            Direction::Backward => {
                let end = (from_version.min(indexes.len() as u64)) as usize;
                indexes[..end]
                    .iter()
                    .rev()
                    .take(limit)
                    .map(|i| state.log[*i].clone())
                    .collect()
            }
        };
        Ok(events)
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<EventPage, StoreError> {
        let state = self.lock();
        let head = Position(state.log.len() as u64);
        let from = from.max(Position::FIRST);
        let mut page = EventPage {
            events: Vec::new(),
            next: from,
            head,
        };
        if limit == 0 {
            return Ok(page);
        }
        for event in state
            .log
            .iter()
            .skip(from.0 as usize - 1)
            .take(MAX_SCAN_PER_READ)
        {
            page.next = event.position.next();
            if filter.matches(event.stream_id.as_str(), &event.event_type) {
                page.events.push(event.clone());
                if page.events.len() >= limit {
                    break;
                }
            }
        }
        Ok(page)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        Ok(self.lock().streams.get(stream).map_or(0, Vec::len) as u64)
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let state = self.lock();
        Ok(state
            .ids
            .get(&event_id)
            .map(|(at, _, _)| state.log[*at].clone()))
    }

    fn head(&self) -> Position {
        *self.head_rx.borrow()
    }

    fn subscribe_head(&self) -> watch::Receiver<Position> {
        self.head_rx.clone()
    }

    async fn verify_chain(&self, from: Position, to: Position) -> Result<ChainReport, StoreError> {
        let state = self.lock();
        let mut report = ChainReport {
            checked: 0,
            first_fault: None,
        };
        let from = from.max(Position::FIRST).0 as usize;
        let to = (to.0 as usize).min(state.log.len());
        for index in from - 1..to {
            let event = &state.log[index];
            let prev = if index == 0 {
                GENESIS_HASH
            } else {
                state.log[index - 1].hash
            };
            let fault = if event.prev_hash != prev {
                Some(ChainFault::BrokenLink)
            } else if codec::recompute_hash(event) != event.hash {
                Some(ChainFault::HashMismatch)
            } else {
                None
            };
            if let Some(fault) = fault {
                report.first_fault = Some((event.position, fault));
                break;
            }
            report.checked += 1;
        }
        Ok(report)
    }
}

impl SnapshotStore for InMemoryEventStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut state = self.lock();
        let newer = state.snapshots.get(stream).is_none_or(|existing| {
            existing.version < snapshot.version
                || existing.schema_version != snapshot.schema_version
        });
        if newer {
            state.snapshots.insert(stream.clone(), snapshot);
        }
        Ok(())
    }
}
