//! The stream catalog: a built-in projection that knows every stream of the log.
//!
//! The event log finds a stream by the hash of its id, so it cannot list streams or
//! search them by prefix. The catalog keeps, per stream, its category, version, and last
//! position and time, ordered by stream id, with an index per category and a summary per
//! category. It runs over every event of the log, so it never reads what it overwrites. It is domain-free: any application can run it
//! beside its own projections ([`StreamCatalogProjection`]) and query it ([`streams`],
//! [`categories`]).

use annals_store::{ReadFilter, RecordedEvent};
use serde::{Deserialize, Serialize};

use crate::keys::catalog as keys;
use crate::{HandlerError, Projection, ProjectionError, ReadModelTx, ReadView};

/// The catalog projection's name.
pub const NAME: &str = "streams";

/// One stream as the catalog knows it: what its last event says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// The stream's id.
    pub stream_id: String,
    /// Its category (the id up to the first `-`).
    pub category: String,
    /// Its current version: the events appended to it (versions run from 1 without gaps).
    pub version: u64,
    /// Position of its last event.
    pub last_position: u64,
    /// When its last event was recorded (microseconds since the Unix epoch).
    pub last_recorded_micros: i64,
}

/// One category as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategorySummary {
    /// The category.
    pub name: String,
    /// Streams in it.
    pub streams: u64,
    /// Events in its streams.
    pub events: u64,
    /// When its last event was recorded (microseconds since the Unix epoch).
    pub last_recorded_micros: i64,
}

/// Builds the catalog from every event of the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamCatalogProjection;

impl Projection for StreamCatalogProjection {
    fn name(&self) -> &str {
        NAME
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter::all()
    }

    /// Writes without reading: an event says all the catalog keeps of its stream, so the
    /// summary and the index entry are overwritten blind (a batch writes each key once,
    /// however many of its events name it). Only the category's totals are read, and they
    /// stay in the batch. A stream counts as new at its version 1.
    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        let id = event.stream_id.as_str();
        let category = event.category();
        let at = event.recorded_at.as_micros();
        tx.put_typed(
            keys::stream(id),
            StreamSummary {
                stream_id: id.to_string(),
                category: category.to_string(),
                version: event.stream_version,
                last_position: event.position.get(),
                last_recorded_micros: at,
            },
        );
        tx.put(keys::in_category(category, id), Vec::new());
        let key = keys::category(category);
        let mut totals: CategorySummary = tx.get_typed(&key)?.unwrap_or(CategorySummary {
            name: category.to_string(),
            streams: 0,
            events: 0,
            last_recorded_micros: at,
        });
        totals.streams += u64::from(event.stream_version == 1);
        totals.events += 1;
        totals.last_recorded_micros = at;
        tx.put_typed(key, totals);
        Ok(())
    }
}

/// A page of streams: the summaries in stream-id order, and whether more follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamList {
    /// The streams.
    pub streams: Vec<StreamSummary>,
    /// Whether streams after the last one match too.
    pub has_more: bool,
}

/// Up to `limit` streams whose id starts with `prefix`, in `category` when given, in id
/// order after the stream id `after` (exclusive).
pub fn streams(
    view: &ReadView<'_>,
    category: Option<&str>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<StreamList, ProjectionError> {
    // Without a category the summaries are scanned themselves; within one, its index is,
    // and each entry's summary is read.
    let key = |id: &str| match category {
        None => keys::stream(id),
        Some(category) => keys::in_category(category, id),
    };
    let after = after.map(key);
    let mut rows = view.scan(&key(prefix), after.as_deref(), limit + 1)?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let id_start = key("").len();
    let mut streams = Vec::with_capacity(rows.len());
    for (row_key, value) in rows {
        let summary = match category {
            None => serde_json::from_slice(&value)?,
            Some(_) => {
                let id = String::from_utf8_lossy(&row_key[id_start..]);
                // The index and the summaries are written in one batch: a hole is a bug.
                view.get_json(&keys::stream(&id))?
                    .ok_or_else(|| ProjectionError::Corruption {
                        what: "stream catalog".into(),
                        reason: format!(
                            "the category index names stream {id}, which has no summary"
                        ),
                    })?
            }
        };
        streams.push(summary);
    }
    Ok(StreamList { streams, has_more })
}

/// Every category, by name (at most `limit`).
pub fn categories(
    view: &ReadView<'_>,
    limit: usize,
) -> Result<Vec<CategorySummary>, ProjectionError> {
    view.scan(&keys::category(""), None, limit)?
        .into_iter()
        .map(|(_, value)| Ok(serde_json::from_slice(&value)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{EventLog, given};

    /// The test log records event `p` at this time plus `p` microseconds.
    const T: i64 = 1_700_000_000_000_000;

    fn log() -> Vec<RecordedEvent> {
        let payload = serde_json::json!({});
        EventLog::new()
            .event("order-1", "Happened", payload.clone())
            .event("product-a", "Happened", payload.clone())
            .event("order-2", "Happened", payload.clone())
            .event("order-1", "Happened", payload.clone())
            .event("order-10", "Happened", payload.clone())
            .event("audit", "Happened", payload)
            .into_events()
    }

    #[test]
    fn streams_are_listed_by_id_with_counts_and_last_activity() {
        given(StreamCatalogProjection, log()).then_read_model(|view| {
            let all = streams(view, None, "", None, 10).unwrap();
            let ids: Vec<_> = all.streams.iter().map(|s| s.stream_id.as_str()).collect();
            assert_eq!(
                ids,
                ["audit", "order-1", "order-10", "order-2", "product-a"]
            );
            assert!(!all.has_more);
            let order_1 = &all.streams[1];
            assert_eq!(order_1.category, "order");
            assert_eq!(order_1.version, 2);
            assert_eq!(order_1.last_position, 4);
            assert_eq!(order_1.last_recorded_micros, T + 4);
        });
    }

    #[test]
    fn a_prefix_and_a_category_narrow_the_list_and_pages_resume_after_a_cursor() {
        given(StreamCatalogProjection, log()).then_read_model(|view| {
            let ids = |list: StreamList| -> Vec<String> {
                list.streams.into_iter().map(|s| s.stream_id).collect()
            };
            assert_eq!(
                ids(streams(view, None, "order-1", None, 10).unwrap()),
                ["order-1", "order-10"]
            );
            let first = streams(view, Some("order"), "", None, 2).unwrap();
            assert!(first.has_more);
            assert_eq!(ids(first), ["order-1", "order-10"]);
            let rest = streams(view, Some("order"), "", Some("order-10"), 2).unwrap();
            assert!(!rest.has_more);
            assert_eq!(ids(rest), ["order-2"]);
            assert_eq!(
                ids(streams(view, Some("order"), "order-2", None, 10).unwrap()),
                ["order-2"]
            );
            assert!(ids(streams(view, Some("product"), "order", None, 10).unwrap()).is_empty());
            // The category `audit` is the whole id: the stream is in it.
            assert_eq!(
                ids(streams(view, Some("audit"), "", None, 10).unwrap()),
                ["audit"]
            );
        });
    }

    #[test]
    fn categories_count_their_streams_and_events() {
        given(StreamCatalogProjection, log()).then_read_model(|view| {
            let all = categories(view, 100).unwrap();
            let summary: Vec<_> = all
                .iter()
                .map(|c| (c.name.as_str(), c.streams, c.events, c.last_recorded_micros))
                .collect();
            assert_eq!(
                summary,
                [
                    ("audit", 1, 1, T + 6),
                    ("order", 3, 4, T + 5),
                    ("product", 1, 1, T + 2)
                ]
            );
        });
    }
}
