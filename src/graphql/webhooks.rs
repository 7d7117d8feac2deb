//! Webhook subscriptions and their delivery (admin role).

use annals_store::CommandContext;
use async_graphql::{Context, Object, SimpleObject};

use super::error::ApiError;
use super::read_models::Amount;
use super::scalars::Position;
use super::types::CommitResult;
use super::{RoleGuard, api, command_context};
use crate::server::auth::Role;
use crate::time;
use crate::webhooks::{DeadLetter, Webhook, WebhookCommand, WebhookStatus};

/// A webhook subscription and its delivery.
#[derive(SimpleObject)]
#[graphql(name = "Webhook")]
pub struct WebhookObject {
    /// Its id.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Event types delivered (empty: all).
    pub event_types: Vec<String>,
    /// Stream categories delivered (empty: all).
    pub categories: Vec<String>,
    /// Events queued, not yet delivered.
    pub pending: Amount,
    /// Positions between the oldest undelivered event and the head.
    pub lag: Amount,
    /// Events given up after their attempts.
    pub dead_letters: Amount,
    /// Events delivered since the server started.
    pub delivered: Amount,
    /// Failed attempts since the server started.
    pub failures: Amount,
    /// The last failure.
    pub last_error: Option<String>,
}

impl From<WebhookStatus> for WebhookObject {
    fn from(w: WebhookStatus) -> Self {
        Self {
            id: w.subscription.id,
            url: w.subscription.url,
            event_types: w.subscription.filter.event_types,
            categories: w.subscription.filter.categories,
            pending: Amount(w.pending),
            lag: Amount(w.lag),
            dead_letters: Amount(w.dead_letters),
            delivered: Amount(w.delivered),
            failures: Amount(w.failures),
            last_error: w.last_error,
        }
    }
}

/// A new subscription: its secret is shown here only.
#[derive(SimpleObject)]
pub struct CreatedWebhook {
    /// The subscription's id.
    pub id: String,
    /// The secret deliveries are signed with (HMAC-SHA256); shown once.
    pub secret: String,
    /// The commit that created it.
    pub commit: CommitResult,
}

/// An event a subscription gave up on.
#[derive(SimpleObject)]
#[graphql(name = "WebhookDeadLetter")]
pub struct DeadLetterObject {
    /// The event's position.
    pub position: Position,
    /// The body that was POSTed.
    pub body: String,
    /// The last failure.
    pub error: String,
    /// Attempts made.
    pub attempts: i32,
    /// When it was given up (RFC 3339, UTC).
    pub dead_at: String,
}

impl From<DeadLetter> for DeadLetterObject {
    fn from(d: DeadLetter) -> Self {
        Self {
            position: Position(d.position),
            body: d.body,
            error: d.error,
            attempts: i32::try_from(d.attempts).unwrap_or(i32::MAX),
            dead_at: time::format(d.dead_at_micros).unwrap_or_default(),
        }
    }
}

/// Webhook queries.
#[derive(Default)]
pub struct WebhookQuery;

#[Object]
impl WebhookQuery {
    /// Every active subscription with its delivery.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn webhooks(&self, ctx: &Context<'_>) -> Result<Vec<WebhookObject>, ApiError> {
        Ok(api(ctx)
            .webhooks
            .status()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// A subscription's dead letters, oldest first.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn webhook_dead_letters(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> Result<Vec<DeadLetterObject>, ApiError> {
        Ok(api(ctx)
            .webhooks
            .dead_letters(&id)?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

/// Webhook administration.
#[derive(Default)]
pub struct WebhookMutation;

#[Object]
impl WebhookMutation {
    /// Subscribes `url` to the events after this one that match the filter (empty lists:
    /// everything). Each is POSTed at least once, in log order, signed with the secret
    /// returned here (and only here).
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        id: String,
        url: String,
        #[graphql(default)] event_types: Vec<String>,
        #[graphql(default)] categories: Vec<String>,
        idempotency_key: Option<String>,
    ) -> Result<CreatedWebhook, ApiError> {
        let command = WebhookCommand::Subscribe {
            url,
            event_types,
            categories,
        };
        let outcome = run(ctx, &id, command, idempotency_key).await?;
        let api = api(ctx);
        api.webhooks.wake();
        Ok(CreatedWebhook {
            secret: api.webhooks.secret(&id),
            id,
            commit: CommitResult::from(&outcome),
        })
    }

    /// Ends a subscription: nothing more is delivered to it.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn delete_webhook(
        &self,
        ctx: &Context<'_>,
        id: String,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        let outcome = run(ctx, &id, WebhookCommand::Delete, idempotency_key).await?;
        Ok(CommitResult::from(&outcome))
    }

    /// Puts a dead letter back in its subscription's queue. NOT_FOUND when there is none
    /// at that position.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn redrive_webhook(
        &self,
        ctx: &Context<'_>,
        id: String,
        position: Position,
    ) -> Result<bool, ApiError> {
        if api(ctx)
            .webhooks
            .redrive(&id, annals_store::Position(position.0))?
        {
            Ok(true)
        } else {
            Err(ApiError::not_found(format!(
                "webhook {id} has no dead letter at position {}",
                position.0
            )))
        }
    }
}

async fn run(
    ctx: &Context<'_>,
    id: &str,
    command: WebhookCommand,
    idempotency_key: Option<String>,
) -> Result<annals_store::CommandOutcome, ApiError> {
    let command_ctx: CommandContext = command_context(ctx, idempotency_key)?;
    Ok(api(ctx)
        .commerce
        .bus()
        .execute::<Webhook>(id, command, &command_ctx)
        .await?)
}
