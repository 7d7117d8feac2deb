//! Queries on the log itself: `head`, `stream`, `events`.

use annals_store::{Direction, EventStore, Position as StorePosition, StreamId};
use async_graphql::{Context, Object};

use super::error::ApiError;
use super::scalars::{Position, Version};
use super::types::{Event, EventFilter, EventPage, StreamPage};
use super::{api, page_size};

/// Queries on the event log.
#[derive(Default)]
pub struct LogQuery;

#[Object]
impl LogQuery {
    /// The last durable position (0 for an empty log).
    async fn head(&self, ctx: &Context<'_>) -> Position {
        api(ctx).store.head().into()
    }

    /// Events of one stream, from `fromVersion` (inclusive; default: the first event, or
    /// the last when `backwards`), at most `limit` (default 100, capped). NOT_FOUND when
    /// the stream has no events.
    async fn stream(
        &self,
        ctx: &Context<'_>,
        id: String,
        from_version: Option<Version>,
        backwards: Option<bool>,
        limit: Option<i32>,
    ) -> Result<StreamPage, ApiError> {
        let api = api(ctx);
        let limit = page_size(limit, api.limits.max_page)?;
        let stream = StreamId::new(id)?;
        let version = api.store.stream_version(&stream).await?;
        if version == 0 {
            return Err(ApiError::not_found(format!(
                "stream {stream} has no events"
            )));
        }
        if api.lifecycle.deleted_through(&stream)? >= version {
            return Err(ApiError::not_found(format!(
                "stream {stream} is deleted (through version {version}); appending recreates it"
            )));
        }
        let backwards = backwards.unwrap_or(false);
        let (from, direction) = if backwards {
            (from_version.map_or(u64::MAX, |v| v.0), Direction::Backward)
        } else {
            (from_version.map_or(1, |v| v.0), Direction::Forward)
        };
        let events = api
            .store
            .read_stream(&stream, from, direction, limit)
            .await?;
        let next_version = events.last().and_then(|last| {
            let v = last.stream_version;
            if backwards {
                (v > 1).then(|| Version(v - 1))
            } else {
                (v < version).then(|| Version(v + 1))
            }
        });
        Ok(StreamPage {
            stream_id: stream.into(),
            version: Version(version),
            events: events
                .into_iter()
                .map(|e| Event::revealed(e, &api.privacy))
                .collect(),
            next_version,
        })
    }

    /// A page of the global log after position `after` (exclusive; default 0: from the
    /// start), at most `limit` events (default 100, capped), optionally filtered.
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<Position>,
        limit: Option<i32>,
        filter: Option<EventFilter>,
    ) -> Result<EventPage, ApiError> {
        let api = api(ctx);
        let limit = page_size(limit, api.limits.max_page)?;
        let after = after.unwrap_or_default().0;
        let head = api.store.head();
        let Some(from) = after.checked_add(1) else {
            return Ok(EventPage {
                events: Vec::new(),
                cursor: Position(after),
                head: head.into(),
                has_more: false,
            });
        };
        let filter = filter.unwrap_or_default().to_read_filter();
        let page = api
            .store
            .read_all(StorePosition(from), limit, &filter)
            .await?;
        // `next` is the first position not examined, so the cursor (an `after`) is the
        // one before it; it never goes backwards.
        let cursor = page.next.get().saturating_sub(1).max(after);
        Ok(EventPage {
            events: page
                .events
                .into_iter()
                .map(|e| Event::revealed(e, &api.privacy))
                .collect(),
            cursor: Position(cursor),
            head: page.head.into(),
            has_more: cursor < page.head.get(),
        })
    }
}
