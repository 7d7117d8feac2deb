//! Payments, the checkout saga's state, and the administration of process managers.

use annals_projections::process::{ParkedCommand, ProcessHandle, ProcessStatus};
use async_graphql::{Context, Enum, Object, SimpleObject};

use super::error::ApiError;
use super::read_models::{Amount, ProjectionStatusObject};
use super::scalars::{Position, Version};
use super::{RoleGuard, api};
use crate::checkout::CheckoutStep as DomainCheckoutStep;
use crate::domain::PaymentStatus as DomainPaymentStatus;
use crate::read_models::{self, PaymentView};
use crate::server::auth::Role;
use crate::time;

/// Where a payment is.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Requested from the gateway, no answer yet.
    Requested,
    /// Authorized by the gateway.
    Authorized,
    /// Declined by the gateway.
    Declined,
    /// Captured (the order shipped).
    Captured,
    /// Given back (the order was cancelled after authorization).
    Refunded,
}

impl From<DomainPaymentStatus> for PaymentStatus {
    fn from(s: DomainPaymentStatus) -> Self {
        match s {
            DomainPaymentStatus::New | DomainPaymentStatus::Requested => PaymentStatus::Requested,
            DomainPaymentStatus::Authorized => PaymentStatus::Authorized,
            DomainPaymentStatus::Declined => PaymentStatus::Declined,
            DomainPaymentStatus::Captured => PaymentStatus::Captured,
            DomainPaymentStatus::Refunded => PaymentStatus::Refunded,
        }
    }
}

/// A payment (read model `payments`).
#[derive(SimpleObject)]
pub struct Payment {
    /// The payment's id (the checkout pays order `o` with payment `o`).
    pub id: String,
    /// The order it pays for.
    pub order_id: String,
    /// Where it is.
    pub status: PaymentStatus,
    /// The amount, in cents.
    pub amount_cents: Amount,
    /// The gateway's authorization reference.
    pub authorization: Option<String>,
    /// Why it was declined or refunded.
    pub reason: Option<String>,
    /// When it was requested (RFC 3339, UTC).
    pub requested_at: String,
    /// When it last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// The payment stream's version.
    pub version: Version,
}

impl From<PaymentView> for Payment {
    fn from(p: PaymentView) -> Self {
        Self {
            id: p.id,
            order_id: p.order_id,
            status: p.status.into(),
            amount_cents: Amount(p.amount_cents),
            authorization: p.authorization,
            reason: p.reason,
            requested_at: time::format(p.requested_at_micros).unwrap_or_default(),
            updated_at: time::format(p.updated_at_micros).unwrap_or_default(),
            version: Version(p.version),
        }
    }
}

/// Where a checkout is.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckoutStep {
    /// The order is placed; its payment is being requested.
    Started,
    /// Waiting for the gateway's answer (the payment deadline runs).
    AwaitingPayment,
    /// Paid and confirmed.
    Confirmed,
    /// Shipped; the payment is being captured.
    Shipped,
    /// Shipped and paid. Final.
    Completed,
    /// Cancelled after the payment was taken; the refund is under way.
    Compensating,
    /// Cancelled, stock released, payment refunded if it was taken. Final.
    Cancelled,
}

impl From<DomainCheckoutStep> for CheckoutStep {
    fn from(s: DomainCheckoutStep) -> Self {
        match s {
            DomainCheckoutStep::New | DomainCheckoutStep::Started => CheckoutStep::Started,
            DomainCheckoutStep::AwaitingPayment => CheckoutStep::AwaitingPayment,
            DomainCheckoutStep::Confirmed => CheckoutStep::Confirmed,
            DomainCheckoutStep::Shipped => CheckoutStep::Shipped,
            DomainCheckoutStep::Completed => CheckoutStep::Completed,
            DomainCheckoutStep::Compensating => CheckoutStep::Compensating,
            DomainCheckoutStep::Cancelled => CheckoutStep::Cancelled,
        }
    }
}

/// One event of a checkout.
#[derive(SimpleObject)]
pub struct CheckoutEvent {
    /// The event's type.
    pub event_type: String,
    /// Its position in the log.
    pub position: Position,
    /// When it was recorded (RFC 3339, UTC).
    pub at: String,
}

/// A pending deadline of a checkout.
#[derive(SimpleObject)]
pub struct CheckoutDeadline {
    /// Its name (`payment`).
    pub name: String,
    /// When it fires (RFC 3339, UTC).
    pub due_at: String,
}

/// The checkout saga's state for one order.
#[derive(SimpleObject)]
pub struct Checkout {
    /// The order.
    pub order_id: String,
    /// Where the checkout is.
    pub step: CheckoutStep,
    /// The amount to pay, in cents.
    pub amount_cents: Amount,
    /// Why the order was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// The deadlines still pending.
    pub deadlines: Vec<CheckoutDeadline>,
    /// Its last events (at most 32), oldest first.
    pub history: Vec<CheckoutEvent>,
    /// The checkout's correlation id, carried by every event it caused.
    pub correlation_id: Option<String>,
}

/// A process manager's status.
#[derive(SimpleObject)]
#[graphql(name = "ProcessStatus")]
pub struct ProcessStatusObject {
    /// Its name.
    pub name: String,
    /// Its decision half, a projection (checkpoint, lag, failures).
    pub projection: Option<ProjectionStatusObject>,
    /// Commands waiting to be sent.
    pub outbox: Amount,
    /// Deadlines pending.
    pub deadlines: Amount,
    /// When the next deadline fires (RFC 3339, UTC).
    pub next_deadline_at: Option<String>,
    /// Commands parked after their retries.
    pub parked: Amount,
    /// Commands carried out since the server started.
    pub sent: Amount,
    /// Commands the domain refused since the server started.
    pub rejected: Amount,
    /// Failed sends retried since the server started.
    pub retried: Amount,
    /// Commands parked since the server started.
    pub parked_total: Amount,
    /// Deadlines fired since the server started.
    pub deadlines_fired: Amount,
}

impl From<ProcessStatus> for ProcessStatusObject {
    fn from(s: ProcessStatus) -> Self {
        Self {
            name: s.name,
            projection: s.projection.map(Into::into),
            outbox: Amount(s.outbox),
            deadlines: Amount(s.deadlines),
            next_deadline_at: s.next_deadline_micros.and_then(time::format),
            parked: Amount(s.parked),
            sent: Amount(s.sent),
            rejected: Amount(s.rejected),
            retried: Amount(s.retried),
            parked_total: Amount(s.parked_total),
            deadlines_fired: Amount(s.deadlines_fired),
        }
    }
}

/// A command a process manager parked after its retries.
#[derive(SimpleObject)]
#[graphql(name = "ParkedCommand")]
pub struct ParkedCommandObject {
    /// The process manager.
    pub process: String,
    /// The position of the event that decided it.
    pub position: Position,
    /// Its index among that event's commands.
    pub index: i32,
    /// The instance (for the checkout, the order).
    pub instance: String,
    /// The command, as JSON.
    pub command: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// The last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: i32,
    /// When it was parked (RFC 3339, UTC).
    pub parked_at: String,
}

impl From<ParkedCommand> for ParkedCommandObject {
    fn from(p: ParkedCommand) -> Self {
        Self {
            process: p.process,
            position: Position(p.position),
            index: i32::from(p.index),
            instance: p.instance,
            command: p.command.to_string(),
            idempotency_key: p.idempotency_key,
            error: p.error,
            attempts: i32::try_from(p.attempts).unwrap_or(i32::MAX),
            parked_at: time::format(p.parked_at_micros).unwrap_or_default(),
        }
    }
}

/// Queries on payments, checkouts and process managers.
#[derive(Default)]
pub struct CheckoutQuery;

#[Object]
impl CheckoutQuery {
    /// One payment, or null.
    async fn payment(
        &self,
        ctx: &Context<'_>,
        id: String,
        at_least: Option<Position>,
    ) -> Result<Option<Payment>, ApiError> {
        super::read_models::consistent(ctx, read_models::PAYMENTS, at_least).await?;
        Ok(api(ctx).read_models.payment(&id)?.map(Payment::from))
    }

    /// The checkout of an order, or null (no such order, or the checkout does not run).
    async fn checkout(
        &self,
        ctx: &Context<'_>,
        order_id: String,
        at_least: Option<Position>,
    ) -> Result<Option<Checkout>, ApiError> {
        let api = api(ctx);
        if api.processes.is_empty() {
            return Ok(None);
        }
        super::read_models::consistent(ctx, crate::checkout::CHECKOUT, at_least).await?;
        let Some(instance) = crate::checkout::load(api.projections.read_models(), &order_id)?
        else {
            return Ok(None);
        };
        let state = instance.state;
        Ok(Some(Checkout {
            order_id,
            step: state.step().into(),
            amount_cents: Amount(state.amount_cents),
            cancel_reason: state.cancel_reason,
            deadlines: instance
                .deadlines
                .into_iter()
                .map(|(name, due)| CheckoutDeadline {
                    name,
                    due_at: time::format(due.0).unwrap_or_default(),
                })
                .collect(),
            history: state
                .history
                .into_iter()
                .map(|e| CheckoutEvent {
                    event_type: e.event_type,
                    position: Position(e.position),
                    at: time::format(e.at_micros).unwrap_or_default(),
                })
                .collect(),
            correlation_id: instance.correlation_id.map(|id| id.to_string()),
        }))
    }

    /// The status of every process manager (the checkout's, when it runs).
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn processes(&self, ctx: &Context<'_>) -> Result<Vec<ProcessStatusObject>, ApiError> {
        api(ctx)
            .processes
            .iter()
            .map(|p| Ok(p.status()?.into()))
            .collect()
    }

    /// The commands a process manager parked after their retries, oldest first.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn parked_commands(
        &self,
        ctx: &Context<'_>,
        process: String,
    ) -> Result<Vec<ParkedCommandObject>, ApiError> {
        Ok(process_named(ctx, &process)?
            .parked()?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

/// Administration of process managers.
#[derive(Default)]
pub struct ProcessMutation;

#[Object]
impl ProcessMutation {
    /// Puts a parked command back in the outbox with its attempts reset; it is sent
    /// again at once, under its idempotency key. NOT_FOUND when none is parked there.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn retry_parked_command(
        &self,
        ctx: &Context<'_>,
        process: String,
        position: Position,
        index: i32,
    ) -> Result<bool, ApiError> {
        parked_command(ctx, &process, position, index, |p, at, i| {
            p.retry_parked(at, i)
        })
    }

    /// Gives up a parked command for good. NOT_FOUND when none is parked there.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn skip_parked_command(
        &self,
        ctx: &Context<'_>,
        process: String,
        position: Position,
        index: i32,
    ) -> Result<bool, ApiError> {
        parked_command(ctx, &process, position, index, |p, at, i| {
            p.skip_parked(at, i)
        })
    }
}

fn process_named<'a>(ctx: &Context<'a>, name: &str) -> Result<&'a ProcessHandle, ApiError> {
    api(ctx)
        .processes
        .iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| ApiError::not_found(format!("no process manager {name:?} runs here")))
}

/// Runs `operation` on the parked command at (`position`, `index`) of `process`.
fn parked_command(
    ctx: &Context<'_>,
    process: &str,
    position: Position,
    index: i32,
    operation: impl FnOnce(
        &ProcessHandle,
        annals_store::Position,
        u16,
    ) -> Result<bool, annals_projections::ProjectionError>,
) -> Result<bool, ApiError> {
    let handle = process_named(ctx, process)?;
    let index = u16::try_from(index)
        .map_err(|_| ApiError::bad_input("index must be between 0 and 65535"))?;
    if operation(handle, annals_store::Position(position.0), index)? {
        Ok(true)
    } else {
        Err(ApiError::not_found(format!(
            "no command of {process} is parked at position {} index {index}",
            position.0
        )))
    }
}
