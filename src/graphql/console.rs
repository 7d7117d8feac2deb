//! The queries an operator's console needs beyond the log and the read models: who the
//! caller is, the node's last minutes, the stream catalog, one event by id or position
//! and a check of the hash chain around it. They are ordinary API queries, so whatever
//! the console shows a script can ask for too.

use annals_projections::catalog;
use annals_store::{EventStore, Position as StorePosition, ReadFilter};
use async_graphql::{Context, Enum, Object, SimpleObject};
use uuid::Uuid;

use super::error::ApiError;
use super::read_models::Amount;
use super::scalars::{Position, Version};
use super::types::Event;
use super::{api, page_size};
use crate::server::auth::{Principal, Role};
use crate::server::samples;
use crate::time;

/// Most positions one `verifyChain` checks: a console checks a few around an event, and
/// a whole-log check belongs to `annals verify`, not to a request.
pub const MAX_CHAIN_CHECK: u64 = 10_000;

/// Categories `categories` lists at most.
const MAX_CATEGORIES: usize = 1_000;

/// What a role may do, as the API names it.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(name = "Role")]
pub enum RoleName {
    /// Queries and subscriptions.
    Reader,
    /// Reader, plus the domain mutations.
    Writer,
    /// Writer, plus the admin mutations, parked events and exports.
    Admin,
}

impl From<Role> for RoleName {
    fn from(role: Role) -> Self {
        match role {
            Role::Reader => RoleName::Reader,
            Role::Writer => RoleName::Writer,
            Role::Admin => RoleName::Admin,
        }
    }
}

/// The caller.
#[derive(SimpleObject, Clone, Debug)]
pub struct Viewer {
    /// The caller's identity in logs and event metadata (`key:` and a hash prefix, or
    /// `anonymous` on a server without keys).
    pub id: String,
    /// What the caller may do.
    pub role: RoleName,
}

/// The node at a glance.
#[derive(SimpleObject, Clone, Debug)]
pub struct Overview {
    /// The durable head.
    pub head: Position,
    /// When the node started, RFC 3339.
    pub started_at: String,
    /// Events this node's writer has written since it started (0 on a replica).
    pub events: Amount,
    /// Group commits this node's writer has made since it started.
    pub commits: Amount,
    /// Mean events per group commit since the start.
    pub mean_commit_events: f64,
    /// The public key (hex) that verifies the signatures of `GET /export`'s manifests,
    /// or null when this server does not sign its exports.
    pub export_public_key: Option<String>,
    /// One sample per second, oldest first.
    pub samples: Vec<Sample>,
}

/// One second of the node's life.
#[derive(SimpleObject, Clone, Debug)]
pub struct Sample {
    /// When it was taken, RFC 3339.
    pub at: String,
    /// The durable head then.
    pub head: Position,
    /// Events that reached the log per second, over the second before.
    pub events_per_second: f64,
    /// Group commits this node wrote per second.
    pub commits_per_second: f64,
    /// Events per group commit over that second (0 without commits).
    pub mean_commit_events: f64,
    /// Each projection's distance from the head.
    pub lags: Vec<ProjectionLag>,
}

/// A projection's distance from the head at one sample.
#[derive(SimpleObject, Clone, Debug)]
pub struct ProjectionLag {
    /// The projection.
    pub name: String,
    /// Events between its checkpoint and the head.
    pub lag: Amount,
    /// Its checkpoint.
    pub checkpoint: Position,
}

impl From<samples::Sample> for Sample {
    fn from(s: samples::Sample) -> Self {
        Sample {
            at: time::format(s.at_micros).unwrap_or_default(),
            head: Position(s.head),
            events_per_second: s.events_per_second,
            commits_per_second: s.commits_per_second,
            mean_commit_events: s.mean_commit_events,
            lags: s
                .lags
                .into_iter()
                .map(|l| ProjectionLag {
                    name: l.name,
                    lag: Amount(l.lag),
                    checkpoint: Position(l.checkpoint),
                })
                .collect(),
        }
    }
}

/// A stream as the catalog knows it.
#[derive(SimpleObject, Clone, Debug)]
pub struct StreamSummary {
    /// The stream's id.
    pub stream_id: String,
    /// Its category.
    pub category: String,
    /// Its current version.
    pub version: Version,
    /// Events appended to it (its version: versions run from 1 without gaps).
    pub events: Amount,
    /// Position of its last event.
    pub last_position: Position,
    /// When its last event was recorded (its last activity), RFC 3339.
    pub last_recorded_at: String,
}

impl From<catalog::StreamSummary> for StreamSummary {
    fn from(s: catalog::StreamSummary) -> Self {
        StreamSummary {
            stream_id: s.stream_id,
            category: s.category,
            version: Version(s.version),
            events: Amount(s.version),
            last_position: Position(s.last_position),
            last_recorded_at: time::format(s.last_recorded_micros).unwrap_or_default(),
        }
    }
}

/// Where a page of streams stops.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "StreamPageInfo")]
pub struct StreamPageInfo {
    /// Whether more streams match after this page.
    pub has_next_page: bool,
    /// Pass as `after` for the next page (the last stream's id).
    pub end_cursor: Option<String>,
}

/// A page of streams, by id.
#[derive(SimpleObject, Clone, Debug)]
pub struct StreamConnection {
    /// The streams.
    pub nodes: Vec<StreamSummary>,
    /// Where the page stops.
    pub page_info: StreamPageInfo,
}

/// A category as the catalog knows it.
#[derive(SimpleObject, Clone, Debug)]
pub struct CategorySummary {
    /// The category.
    pub name: String,
    /// Streams in it.
    pub streams: Amount,
    /// Events in its streams.
    pub events: Amount,
    /// When its last event was recorded, RFC 3339.
    pub last_recorded_at: String,
}

/// The result of checking a range of the hash chain against the store.
#[derive(SimpleObject, Clone, Debug)]
pub struct ChainCheck {
    /// First position checked.
    pub from: Position,
    /// Last position checked.
    pub to: Position,
    /// Events checked.
    pub checked: Amount,
    /// Whether every link and hash in the range holds.
    pub ok: bool,
    /// Where and how the chain is broken, when it is.
    pub error: Option<String>,
}

/// Queries for operators and their console.
#[derive(Default)]
pub struct ConsoleQuery;

#[Object]
impl ConsoleQuery {
    /// Who the caller is and what it may do: a client offers only what the role allows.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer, ApiError> {
        let principal = ctx
            .data_opt::<Principal>()
            .ok_or_else(|| ApiError::unauthenticated("an API key is required"))?;
        Ok(Viewer {
            id: principal.id.clone(),
            role: principal.role.into(),
        })
    }

    /// The node at a glance: head, write-path totals, and the samples of the last
    /// `lastSeconds` seconds (1 to 600, default 300).
    async fn overview(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 300)] last_seconds: i32,
    ) -> Result<Overview, ApiError> {
        let api = api(ctx);
        let seconds = usize::try_from(last_seconds)
            .ok()
            .filter(|s| (1..=samples::CAPACITY).contains(s))
            .ok_or_else(|| {
                ApiError::bad_input(format!(
                    "lastSeconds must be between 1 and {}",
                    samples::CAPACITY
                ))
            })?;
        let stats = api.store.stats();
        Ok(Overview {
            head: api.store.head().into(),
            started_at: time::format(api.samples.started_at_micros()).unwrap_or_default(),
            events: Amount(stats.events),
            commits: Amount(stats.commits),
            mean_commit_events: stats.mean_commit_events(),
            export_public_key: api.export_public_key.clone(),
            samples: api
                .samples
                .last(seconds)
                .into_iter()
                .map(Into::into)
                .collect(),
        })
    }

    /// Every stream category, by name, with its stream and event counts.
    async fn categories(&self, ctx: &Context<'_>) -> Result<Vec<CategorySummary>, ApiError> {
        let read = api(ctx).projections.read_models().clone();
        let categories = tokio::task::spawn_blocking(move || {
            catalog::categories(&read.view(catalog::NAME)?, MAX_CATEGORIES)
        })
        .await
        .map_err(|e| ApiError::internal(&e))??;
        Ok(categories
            .into_iter()
            .map(|c| CategorySummary {
                name: c.name,
                streams: Amount(c.streams),
                events: Amount(c.events),
                last_recorded_at: time::format(c.last_recorded_micros).unwrap_or_default(),
            })
            .collect())
    }

    /// Streams by id, those whose id starts with `prefix` and, when given, in `category`;
    /// `first` per page (default 20, capped) after the stream id `after`.
    async fn streams(
        &self,
        ctx: &Context<'_>,
        category: Option<String>,
        prefix: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<StreamConnection, ApiError> {
        let api = api(ctx);
        let limit = match first {
            None => api.read_models.limits().default,
            Some(n) => page_size(Some(n), api.read_models.limits().max)?,
        };
        let read = api.projections.read_models().clone();
        let list = tokio::task::spawn_blocking(move || {
            catalog::streams(
                &read.view(catalog::NAME)?,
                category.as_deref().filter(|c| !c.is_empty()),
                prefix.as_deref().unwrap_or_default(),
                after.as_deref(),
                limit,
            )
        })
        .await
        .map_err(|e| ApiError::internal(&e))??;
        let end_cursor = list.streams.last().map(|s| s.stream_id.clone());
        Ok(StreamConnection {
            nodes: list.streams.into_iter().map(Into::into).collect(),
            page_info: StreamPageInfo {
                has_next_page: list.has_more,
                end_cursor,
            },
        })
    }

    /// One event, by its id or by its position (give exactly one); null when the log
    /// holds none.
    async fn event(
        &self,
        ctx: &Context<'_>,
        id: Option<Uuid>,
        position: Option<Position>,
    ) -> Result<Option<Event>, ApiError> {
        let api = api(ctx);
        let found = match (id, position) {
            (Some(id), None) => api.store.find_event(id).await?,
            (None, Some(position)) if position.0 > 0 => {
                let page = api
                    .store
                    .read_all(StorePosition(position.0), 1, &ReadFilter::all())
                    .await?;
                page.events
                    .into_iter()
                    .next()
                    .filter(|e| e.position.get() == position.0)
            }
            (None, Some(_)) => None,
            _ => {
                return Err(ApiError::bad_input(
                    "give exactly one of `id` and `position`",
                ));
            }
        };
        Ok(found.map(|e| Event::revealed(e, &api.privacy)))
    }

    /// Checks the hash chain from `from` to `to` (inclusive, at most 10,000 positions,
    /// cut at the head) against the store: each event's hash over its record, and each
    /// link to the event before.
    async fn verify_chain(
        &self,
        ctx: &Context<'_>,
        from: Position,
        to: Position,
    ) -> Result<ChainCheck, ApiError> {
        let api = api(ctx);
        if from.0 == 0 || to.0 < from.0 {
            return Err(ApiError::bad_input("verifyChain needs 1 <= from <= to"));
        }
        if to.0 - from.0 >= MAX_CHAIN_CHECK {
            return Err(ApiError::bad_input(format!(
                "verifyChain checks at most {MAX_CHAIN_CHECK} positions per call; \
                 `annals verify` checks a whole log"
            )));
        }
        let to = to.0.min(api.store.head().get());
        if to < from.0 {
            return Err(ApiError::bad_input(format!(
                "position {} is past the head ({to})",
                from.0
            )));
        }
        let report = api
            .store
            .verify_chain(StorePosition(from.0), StorePosition(to))
            .await?;
        Ok(ChainCheck {
            from,
            to: Position(to),
            checked: Amount(report.checked),
            ok: report.is_ok(),
            error: report
                .first_fault
                .map(|(position, fault)| format!("{fault} at position {position}")),
        })
    }
}
