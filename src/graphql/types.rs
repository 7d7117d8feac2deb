//! The GraphQL object and input types of the log and of command results.

use std::collections::BTreeMap;

use annals_store::{AppendResult, CommandOutcome, ReadFilter, RecordedEvent};
use async_graphql::{Enum, InputObject, Json, OneofObject, SimpleObject};
use uuid::Uuid;

use super::scalars::{Position, Version};
use crate::privacy::Privacy;
use crate::time;

/// An event as it is in the log.
#[derive(SimpleObject, Clone, Debug)]
pub struct Event {
    /// Global position: gapless, from 1, in commit order. Resume a subscription from it.
    pub position: Position,
    /// The stream the event belongs to (`order-42`).
    pub stream_id: String,
    /// The stream's category (the part of the id before the first `-`).
    pub category: String,
    /// Version within the stream, from 1.
    pub stream_version: Version,
    /// The event id.
    pub event_id: Uuid,
    /// The event type name (`OrderPlaced`).
    #[graphql(name = "type")]
    pub event_type: String,
    /// The payload's schema version (see `schema/events/<type>.v<N>.json`).
    pub schema_version: i32,
    /// When the commit was made, RFC 3339 in UTC with microseconds.
    pub recorded_at: String,
    /// The payload. A payload that is not JSON is returned as a JSON string of its bytes
    /// (lossy UTF-8). Personal fields read in clear, or as `"[erased]"` once their subject
    /// was forgotten; `null` for a removed event.
    pub payload: Json<serde_json::Value>,
    /// Who, why and free key/values (empty for a removed event).
    pub metadata: EventMetadata,
    /// Whether the event was removed (a hard deletion or retention): a tombstone that
    /// keeps its position, envelope and hashes, without metadata or payload.
    pub removed: bool,
    /// The hash of the event before it in the log (hex; zeros before the first event).
    pub prev_hash: String,
    /// This event's hash over `prevHash` and its record (hex): the audit chain's link.
    pub hash: String,
}

/// Who did what, and why.
#[derive(SimpleObject, Clone, Debug)]
pub struct EventMetadata {
    /// Ties together every event caused by one request.
    pub correlation_id: Option<Uuid>,
    /// The command or event that caused this one.
    pub causation_id: Option<Uuid>,
    /// The API key (by hash prefix) or component that acted.
    pub actor: Option<String>,
    /// Free key/values.
    pub extra: Json<BTreeMap<String, String>>,
}

impl Event {
    /// The event as a client sees it: personal fields revealed through `privacy`.
    pub fn revealed(e: RecordedEvent, privacy: &Privacy) -> Self {
        let mut payload = if e.removed {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&e.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&e.payload).into_owned())
            })
        };
        privacy.reveal_json(&mut payload);
        Event {
            removed: e.removed,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
            position: e.position.into(),
            category: e.category().to_string(),
            stream_id: e.stream_id.into(),
            stream_version: Version(e.stream_version),
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: i32::from(e.schema_version),
            recorded_at: time::format(e.recorded_at.as_micros()).unwrap_or_default(),
            payload: Json(payload),
            metadata: EventMetadata {
                correlation_id: e.metadata.correlation_id,
                causation_id: e.metadata.causation_id,
                actor: e.metadata.actor,
                extra: Json(e.metadata.extra),
            },
        }
    }
}

/// A page of the global log.
#[derive(SimpleObject, Clone, Debug)]
pub struct EventPage {
    /// The matching events, in position order.
    pub events: Vec<Event>,
    /// Pass as `after` to get the next page. With a filter it can be past the last
    /// returned event: the scan moved on over events that did not match.
    pub cursor: Position,
    /// The durable head when the page was read.
    pub head: Position,
    /// Whether events past `cursor` existed when the page was read.
    pub has_more: bool,
}

/// A slice of one stream.
#[derive(SimpleObject, Clone, Debug)]
pub struct StreamPage {
    /// The stream.
    pub stream_id: String,
    /// The stream's current version.
    pub version: Version,
    /// The events, in the direction asked for.
    pub events: Vec<Event>,
    /// Where the next slice in the same direction starts (`fromVersion`), or null when
    /// this slice reached the end.
    pub next_version: Option<Version>,
}

/// Selects events of the global log. Empty or absent lists select everything.
#[derive(InputObject, Clone, Debug, Default)]
pub struct EventFilter {
    /// Stream categories to keep (`order`, `product`).
    pub categories: Option<Vec<String>>,
    /// Event types to keep (`OrderPlaced`).
    pub types: Option<Vec<String>>,
}

impl EventFilter {
    /// The store's filter.
    pub fn to_read_filter(&self) -> ReadFilter {
        ReadFilter {
            categories: self.categories.clone().unwrap_or_default(),
            event_types: self.types.clone().unwrap_or_default(),
        }
    }
}

/// One stream's part of a command's commit.
#[derive(SimpleObject, Clone, Debug)]
pub struct StreamResult {
    /// The stream appended to.
    pub stream_id: String,
    /// Version of the first event appended.
    pub first_version: Version,
    /// The stream's version after the commit.
    pub version: Version,
    /// Position of the first event appended.
    pub first_position: Position,
    /// Position of the last event appended.
    pub last_position: Position,
}

impl From<&AppendResult> for StreamResult {
    fn from(r: &AppendResult) -> Self {
        StreamResult {
            stream_id: r.stream_id.to_string(),
            first_version: Version(r.first_version),
            version: Version(r.last_version),
            first_position: r.first_position.into(),
            last_position: r.last_position.into(),
        }
    }
}

/// What a mutation committed.
#[derive(SimpleObject, Clone, Debug)]
pub struct CommitResult {
    /// Every stream the commit appended to, with its new version.
    pub streams: Vec<StreamResult>,
    /// The commit's last position: pass it as `atLeast` to read your own write.
    pub position: Position,
    /// True when this was a retry (same idempotency key or event ids) of a commit that
    /// had already happened: nothing new was written and this is the original result.
    pub duplicate: bool,
}

impl From<&CommandOutcome> for CommitResult {
    fn from(o: &CommandOutcome) -> Self {
        CommitResult {
            streams: o.streams.iter().map(StreamResult::from).collect(),
            position: o.position.into(),
            duplicate: o.duplicate,
        }
    }
}

/// One line of an order to place.
#[derive(InputObject, Clone, Debug)]
pub struct OrderLineInput {
    /// The product.
    pub product_id: String,
    /// Units (positive).
    pub quantity: i32,
}

/// A stream state to expect without naming a version.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// No check at all.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
}

/// What the stream's version must be before an append: exactly one of the fields.
#[derive(OneofObject, Clone, Debug)]
pub enum ExpectedVersionInput {
    /// Exactly this version (0: the stream has no events).
    Exact(Version),
    /// A state rather than a version.
    State(StreamState),
}

/// Metadata of an appended event. The actor is always the caller's API key.
#[derive(InputObject, Clone, Debug, Default)]
pub struct MetadataInput {
    /// Ties together the events of one request.
    pub correlation_id: Option<Uuid>,
    /// What caused the event.
    pub causation_id: Option<Uuid>,
    /// Free string key/values.
    pub extra: Option<Json<BTreeMap<String, String>>>,
}

/// An event to append.
#[derive(InputObject, Clone, Debug)]
pub struct EventInput {
    /// The caller's id: re-sending the same ids to the same stream in the same order is
    /// an idempotent retry. Generated when absent.
    pub event_id: Option<Uuid>,
    /// The event type (1 to 128 characters of `[A-Za-z0-9_.:-]`).
    #[graphql(name = "type")]
    pub event_type: String,
    /// The payload's schema version (default 1).
    pub schema_version: Option<i32>,
    /// The payload.
    pub payload: Json<serde_json::Value>,
    /// Correlation, causation, free key/values.
    pub metadata: Option<MetadataInput>,
}
