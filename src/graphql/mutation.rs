//! Mutations: one per domain command (role writer), and raw appends (role admin).

use std::future::Future;
use std::time::Instant;

use annals_store::{
    CommandContext, CommandOutcome, EventStore, ExpectedVersion, Metadata, NewEvent, SharedStore,
    StreamId,
};
use async_graphql::{Context, Object};

use super::error::ApiError;
use super::types::{CommitResult, EventInput, ExpectedVersionInput, OrderLineInput, StreamState};
use super::{RoleGuard, api, command_context};
use crate::domain::{Commerce, LineRequest};
use crate::error::HasCode;
use crate::server::auth::{Principal, Role};

/// The domain's commands.
#[derive(Default)]
pub struct CommandMutation;

fn non_negative(name: &str, value: i32) -> Result<u64, ApiError> {
    u64::try_from(value).map_err(|_| ApiError::bad_input(format!("{name} must not be negative")))
}

/// Runs one command, records its metrics and turns its outcome into the API's result.
async fn run<'a, F, Fut, E>(
    ctx: &Context<'a>,
    command: &'static str,
    idempotency_key: Option<String>,
    f: F,
) -> Result<CommitResult, ApiError>
where
    F: FnOnce(&'a Commerce<SharedStore>, CommandContext) -> Fut,
    Fut: Future<Output = Result<CommandOutcome, E>>,
    E: HasCode,
    ApiError: From<E>,
{
    let command_ctx = command_context(ctx, idempotency_key)?;
    let started = Instant::now();
    let result = f(api(ctx).commerce.as_ref(), command_ctx).await;
    record(command, started, result.as_ref().map(|o| (o, o.duplicate)));
    result
        .map(|o| CommitResult::from(&o))
        .map_err(ApiError::from)
}

fn record<E: HasCode>(
    command: &'static str,
    started: Instant,
    outcome: Result<(&CommandOutcome, bool), &E>,
) {
    let label = match &outcome {
        Ok((_, true)) => "duplicate",
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    metrics::histogram!("annals_append_duration_seconds", "command" => command)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("annals_appends_total", "command" => command, "outcome" => label)
        .increment(1);
    if let Ok((outcome, false)) = outcome {
        let events: u64 = outcome
            .streams
            .iter()
            .map(|s| s.last_version + 1 - s.first_version)
            .sum();
        metrics::counter!("annals_events_appended_total").increment(events);
    }
}

#[Object]
impl CommandMutation {
    /// Registers a product in the catalogue (stream `product-<productId>`).
    #[graphql(guard = "RoleGuard(Role::Writer)")]
    async fn register_product(
        &self,
        ctx: &Context<'_>,
        product_id: String,
        sku: String,
        name: String,
        price_cents: i32,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        let price = non_negative("priceCents", price_cents)?;
        run(
            ctx,
            "registerProduct",
            idempotency_key,
            |c, cx| async move { c.register_product(&product_id, sku, name, price, &cx).await },
        )
        .await
    }

    /// Records units arriving for a product.
    #[graphql(guard = "RoleGuard(Role::Writer)")]
    async fn receive_stock(
        &self,
        ctx: &Context<'_>,
        product_id: String,
        quantity: i32,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        let quantity = non_negative("quantity", quantity)?;
        run(ctx, "receiveStock", idempotency_key, |c, cx| async move {
            c.receive_stock(&product_id, quantity, &cx).await
        })
        .await
    }

    /// Changes a product's price; orders already placed keep theirs.
    #[graphql(guard = "RoleGuard(Role::Writer)")]
    async fn change_price(
        &self,
        ctx: &Context<'_>,
        product_id: String,
        price_cents: i32,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        let price = non_negative("priceCents", price_cents)?;
        run(ctx, "changePrice", idempotency_key, |c, cx| async move {
            c.change_price(&product_id, price, &cx).await
        })
        .await
    }

    /// Places an order: prices every line from its product and reserves the stock, all
    /// in one atomic commit over the order and every product on it.
    #[graphql(guard = "RoleGuard(Role::Writer)")]
    async fn place_order(
        &self,
        ctx: &Context<'_>,
        order_id: String,
        customer_id: String,
        lines: Vec<OrderLineInput>,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        let lines = lines
            .into_iter()
            .map(|l| {
                Ok(LineRequest {
                    quantity: non_negative("quantity", l.quantity)?,
                    product_id: l.product_id,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        run(ctx, "placeOrder", idempotency_key, |c, cx| async move {
            c.place_order(&order_id, &customer_id, &lines, &cx).await
        })
        .await
    }

    /// Confirms a placed order by hand. Only with the checkout off: with it on, the
    /// checkout confirms each order once its payment is authorized, and this mutation is
    /// refused (`INVALID_STATE`; `NOT_FOUND` for an unknown order).
    #[graphql(guard = "RoleGuard(Role::Writer)")]
    async fn confirm_order(
        &self,
        ctx: &Context<'_>,
        order_id: String,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        run(ctx, "confirmOrder", idempotency_key, |c, cx| async move {
            c.confirm_order(&order_id, &cx).await
        })
        .await
    }

    /// Ships a confirmed order: its reserved stock leaves the warehouse in the same
    /// commit (on-hand and reserved units fall), and the checkout captures its payment.
    #[graphql(guard = "RoleGuard(Role::Writer)")]
    async fn ship_order(
        &self,
        ctx: &Context<'_>,
        order_id: String,
        tracking_number: String,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        run(ctx, "shipOrder", idempotency_key, |c, cx| async move {
            c.ship_order(&order_id, tracking_number, &cx).await
        })
        .await
    }

    /// Captures an authorized payment at the gateway and records it (the checkout does
    /// this when the order ships). For operators.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn capture_payment(
        &self,
        ctx: &Context<'_>,
        payment_id: String,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        run(ctx, "capturePayment", idempotency_key, |c, cx| async move {
            c.capture_payment(&payment_id, &cx).await
        })
        .await
    }

    /// Gives an authorized or captured payment back at the gateway and records it (the
    /// checkout does this when a paid order is cancelled). For operators.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn refund_payment(
        &self,
        ctx: &Context<'_>,
        payment_id: String,
        reason: String,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        run(ctx, "refundPayment", idempotency_key, |c, cx| async move {
            c.refund_payment(&payment_id, reason, &cx).await
        })
        .await
    }

    /// Cancels an order that is placed, waiting for its payment or confirmed, and releases
    /// its stock in the same commit; the checkout refunds a payment already taken.
    #[graphql(guard = "RoleGuard(Role::Writer)")]
    async fn cancel_order(
        &self,
        ctx: &Context<'_>,
        order_id: String,
        reason: String,
        idempotency_key: Option<String>,
    ) -> Result<CommitResult, ApiError> {
        run(ctx, "cancelOrder", idempotency_key, |c, cx| async move {
            c.cancel_order(&order_id, reason, &cx).await
        })
        .await
    }
}

/// Administration: raw appends.
#[derive(Default)]
pub struct AdminMutation;

fn to_expected(input: ExpectedVersionInput) -> ExpectedVersion {
    match input {
        ExpectedVersionInput::Exact(v) => ExpectedVersion::Exact(v.0),
        ExpectedVersionInput::State(StreamState::Any) => ExpectedVersion::Any,
        ExpectedVersionInput::State(StreamState::NoStream) => ExpectedVersion::NoStream,
        ExpectedVersionInput::State(StreamState::StreamExists) => ExpectedVersion::StreamExists,
    }
}

fn new_event(
    input: EventInput,
    actor: Option<&str>,
    request: Option<&str>,
) -> Result<NewEvent, ApiError> {
    let schema_version = match input.schema_version {
        None => 1,
        Some(v) => u16::try_from(v)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| ApiError::bad_input("schemaVersion must be 1 to 65535"))?,
    };
    let metadata = input.metadata.unwrap_or_default();
    let mut extra = metadata.extra.map(|e| e.0).unwrap_or_default();
    if let Some(request) = request {
        extra.insert("requestId".into(), request.to_string());
    }
    let payload = serde_json::to_vec(&input.payload.0)
        .map_err(|e| ApiError::bad_input(format!("payload: {e}")))?;
    Ok(NewEvent {
        event_id: input.event_id,
        event_type: input.event_type,
        schema_version,
        metadata: Metadata {
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            actor: actor.map(str::to_string),
            extra,
        },
        payload,
    })
}

#[Object]
impl AdminMutation {
    /// Appends raw events to one stream, atomically, if the stream is at
    /// `expectedVersion`. Re-sending the same `eventId`s is an idempotent retry.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn append_to_stream(
        &self,
        ctx: &Context<'_>,
        stream_id: String,
        expected_version: ExpectedVersionInput,
        events: Vec<EventInput>,
    ) -> Result<CommitResult, ApiError> {
        let stream = StreamId::new(stream_id)?;
        let actor = ctx.data_opt::<Principal>().map(|p| p.id.as_str());
        let request = ctx.data_opt::<super::RequestId>().map(|r| r.0.as_str());
        let events = events
            .into_iter()
            .map(|e| new_event(e, actor, request))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        let result = api(ctx)
            .store
            .append(stream, to_expected(expected_version), events)
            .await
            .map(|r| CommandOutcome {
                position: r.last_position,
                duplicate: r.duplicate,
                streams: vec![r],
            });
        record(
            "appendToStream",
            started,
            result.as_ref().map(|o| (o, o.duplicate)),
        );
        result
            .map(|o| CommitResult::from(&o))
            .map_err(ApiError::from)
    }
}
