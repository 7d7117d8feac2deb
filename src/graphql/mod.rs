//! The GraphQL schema: the log (`head`, `stream`, `events`), one mutation per domain
//! command, admin appends, and the live `events` subscription.
//!
//! The roots are merged objects so that more parts plug in without touching these:
//! the read-model queries join [`Query`] as another member, projection control joins
//! [`Mutation`]. Errors leave through [`error`], the only module that sets
//! `extensions.code`.

mod checkout;
mod console;
mod documents;
pub mod error;
mod lifecycle;
mod mutation;
mod query;
mod read_models;
pub mod scalars;
mod subscription;
pub mod types;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use annals_projections::ProjectionRuntime;
use annals_store::{CommandContext, SharedStore};
use async_graphql::{
    Context, Guard, MergedObject, MergedSubscription, Schema, SchemaBuilder, ValidationMode,
};
use tokio::sync::watch;

use crate::domain::Commerce;
use crate::read_models::CommerceReadModels;
use crate::server::auth::{KeyRing, Principal, Role};
use checkout::{CheckoutQuery, ProcessMutation};
use console::ConsoleQuery;
use error::ApiError;
use lifecycle::LifecycleMutation;
use webhooks::{WebhookMutation, WebhookQuery};

pub use documents::Graphql;
pub use mutation::{AdminMutation, CommandMutation};
pub use query::LogQuery;
pub use read_models::{Amount, ProjectionMutation, ReadModelQuery};
pub use subscription::LogSubscription;

/// Every query.
#[derive(MergedObject, Default)]
pub struct Query(
    LogQuery,
    ReadModelQuery,
    CheckoutQuery,
    WebhookQuery,
    ConsoleQuery,
);

/// Every mutation: domain commands (writer), raw appends and projection control (admin).
#[derive(MergedObject, Default)]
pub struct Mutation(
    CommandMutation,
    AdminMutation,
    ProjectionMutation,
    ProcessMutation,
    WebhookMutation,
    LifecycleMutation,
);

/// Every subscription.
#[derive(MergedSubscription, Default)]
pub struct Subscription(LogSubscription);

/// The schema type the server executes.
pub type AnnalsSchema = Schema<Query, Mutation, Subscription>;

/// Limits the schema enforces on every operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphqlLimits {
    /// Deepest selection nesting allowed (graphql-js's introspection query needs 13).
    pub max_depth: usize,
    /// Highest complexity allowed (each selected field counts 1).
    pub max_complexity: usize,
    /// Largest page any list query returns; larger `limit`s are capped to it.
    pub max_page: usize,
    /// Live subscriptions one principal (API key) may hold at once, over all its
    /// connections; one more is refused with `RATE_LIMITED`.
    pub max_subscriptions_per_key: usize,
    /// Most operations one batched request (a JSON array) may hold.
    pub max_batch: usize,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        Self {
            max_depth: 16,
            max_complexity: 1000,
            max_page: 1000,
            max_subscriptions_per_key: 16,
            max_batch: 100,
        }
    }
}

/// What resolvers need, shared by every request (schema data).
#[derive(Clone)]
pub struct ApiContext {
    /// The event log.
    pub store: SharedStore,
    /// The domain's commands.
    pub commerce: Arc<Commerce<SharedStore>>,
    /// Page caps.
    pub limits: GraphqlLimits,
    /// Turns true when the server shuts down: live subscriptions end.
    pub shutdown: watch::Receiver<bool>,
    /// The projection workers (status, control, `wait_for`).
    pub projections: ProjectionRuntime,
    /// The queries over the domain's read models.
    pub read_models: CommerceReadModels,
    /// How long a query with `atLeast` waits for its read model.
    pub stale_read_timeout: Duration,
    /// The live subscriptions per principal, against `limits.max_subscriptions_per_key`.
    pub subscriptions: SubscriptionSlots,
    /// The API keys in force: a live subscription ends when its key is revoked.
    pub keys: KeyRing,
    /// The process managers' dispatchers (status, parked commands).
    pub processes: Vec<annals_projections::process::ProcessHandle>,
    /// Webhook delivery (status, dead letters, redrive).
    pub webhooks: crate::webhooks::Deliverer,
    /// Reveals personal fields (or `[erased]`) in what the API returns.
    pub privacy: crate::privacy::Privacy,
    /// Erasure, deletion, retention and backup (admin).
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// The node's last minutes, for `overview`.
    pub samples: crate::server::samples::Samples,
    /// The public key of the export signatures (hex), when exports are signed.
    pub export_public_key: Option<String>,
}

/// Counts live subscriptions per principal. A slot is a guard: it is given back when the
/// subscription's stream is dropped, which happens when the client completes it, when
/// the connection closes (async-graphql drops every stream of the connection), and when
/// the stream ends.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionSlots {
    live: Arc<Mutex<HashMap<String, usize>>>,
}

/// One live subscription of a principal; dropping it frees the slot.
#[derive(Debug)]
pub struct SubscriptionSlot {
    slots: SubscriptionSlots,
    principal: String,
}

impl SubscriptionSlots {
    /// Takes a slot for `principal` if it holds fewer than `max`.
    pub fn acquire(&self, principal: &str, max: usize) -> Result<SubscriptionSlot, ApiError> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let held = live.entry(principal.to_string()).or_default();
        if *held >= max {
            return Err(ApiError::too_many_subscriptions(max));
        }
        *held += 1;
        Ok(SubscriptionSlot {
            slots: self.clone(),
            principal: principal.to_string(),
        })
    }

    /// The live subscriptions of `principal`.
    pub fn held(&self, principal: &str) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.get(principal).copied().unwrap_or(0)
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut live = self
            .slots
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = live.get_mut(&self.principal) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                // Principals without subscriptions cost no memory.
                live.remove(&self.principal);
            }
        }
    }
}

/// The id of the HTTP request an operation belongs to (request data).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The schema's shape with its limits, without data: for printing the SDL.
pub fn schema_builder(limits: GraphqlLimits) -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(limits.max_depth)
    .limit_complexity(limits.max_complexity)
}

/// The executable schema behind its document cache: the schema proper validates in fast
/// mode (limits only) because [`Graphql`] validates each document's text once with a
/// strict copy of it and checks the variables of every request (see [`documents`]).
pub fn build_schema(context: ApiContext) -> Graphql {
    let limits = context.limits;
    let validated = documents::ValidateOnly::default();
    let validator = schema_builder(limits).extension(validated.clone()).finish();
    let schema = schema_builder(limits)
        .validation_mode(ValidationMode::Fast)
        .data(context)
        .finish();
    Graphql::new(schema, validator, validated)
}

/// The schema in SDL, as published in `schema/annals.graphql`.
pub fn sdl() -> String {
    let mut sdl = schema_builder(GraphqlLimits::default()).finish().sdl();
    if !sdl.ends_with('\n') {
        sdl.push('\n');
    }
    sdl
}

/// Lets a field run only for callers with at least `0`'s role.
pub struct RoleGuard(pub Role);

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        match ctx.data_opt::<Principal>() {
            Some(p) if p.role >= self.0 => Ok(()),
            Some(p) => Err(ApiError::forbidden(self.0.as_str(), p.role.as_str()).into()),
            None => Err(ApiError::unauthenticated("an API key is required").into()),
        }
    }
}

pub(crate) fn api<'a>(ctx: &Context<'a>) -> &'a ApiContext {
    ctx.data_unchecked::<ApiContext>()
}

/// The command context of a mutation: the caller is the actor, the request id goes into
/// the metadata, and the idempotency key (scoped to the actor) makes retries safe.
pub(crate) fn command_context(
    ctx: &Context<'_>,
    idempotency_key: Option<String>,
) -> Result<CommandContext, ApiError> {
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > 256)
    {
        return Err(ApiError::bad_input("idempotencyKey must be 1 to 256 bytes"));
    }
    let mut command = CommandContext {
        idempotency_key,
        actor: ctx.data_opt::<Principal>().map(|p| p.id.clone()),
        ..CommandContext::default()
    };
    if let Some(RequestId(id)) = ctx.data_opt::<RequestId>() {
        command.correlation_id = uuid::Uuid::parse_str(id).ok();
        command.extra.insert("requestId".into(), id.clone());
    }
    Ok(command)
}

/// Caps a requested page size: absent means `min(100, max)`; below 1 is refused.
pub(crate) fn page_size(limit: Option<i32>, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(max.min(100)),
        Some(n) if n < 1 => Err(ApiError::bad_input(format!(
            "limit must be at least 1 (got {n})"
        ))),
        Some(n) => Ok(usize::try_from(n).unwrap_or(max).min(max)),
    }
}
