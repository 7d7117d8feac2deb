//! Queries on the read models (with `atLeast` for reading one's own writes), the
//! projections' status, and the admin mutations that control projections.

use annals_projections::{ProjectionError, ProjectionState, ProjectionStatus};
use async_graphql::connection::{Connection, Edge};
use async_graphql::{
    ComplexObject, Context, Enum, InputValueError, InputValueResult, Object, Scalar, ScalarType,
    SimpleObject, Value,
};

use super::checkout::Payment;
use super::error::ApiError;
use super::scalars::{Position, Version};
use super::{RoleGuard, api};
use crate::domain::OrderStatus as DomainOrderStatus;
use crate::read_models::{self, OrderFilter, OrderView, Page, ProductView};
use crate::server::auth::Role;
use crate::time;

/// A non-negative 64-bit integer (money in cents, units of stock, counts), serialized as a
/// decimal string because GraphQL's `Int` has 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount(pub u64);

#[Scalar(name = "Amount")]
impl ScalarType for Amount {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => s.parse().map(Amount).map_err(|_| {
                InputValueError::custom(
                    "Amount must be a decimal string of a non-negative 64-bit integer",
                )
            }),
            Value::Number(n) => n.as_u64().map(Amount).ok_or_else(|| {
                InputValueError::custom("Amount must be a non-negative 64-bit integer")
            }),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// Where an order is in its life.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Placed, stock reserved.
    Placed,
    /// The checkout requested the payment and waits for the gateway's answer.
    AwaitingPayment,
    /// Confirmed by the shop.
    Confirmed,
    /// Handed to the carrier.
    Shipped,
    /// Cancelled, stock released.
    Cancelled,
}

impl From<OrderStatus> for DomainOrderStatus {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Placed => DomainOrderStatus::Placed,
            OrderStatus::AwaitingPayment => DomainOrderStatus::AwaitingPayment,
            OrderStatus::Confirmed => DomainOrderStatus::Confirmed,
            OrderStatus::Shipped => DomainOrderStatus::Shipped,
            OrderStatus::Cancelled => DomainOrderStatus::Cancelled,
        }
    }
}

impl From<DomainOrderStatus> for OrderStatus {
    fn from(s: DomainOrderStatus) -> Self {
        match s {
            DomainOrderStatus::New | DomainOrderStatus::Placed => OrderStatus::Placed,
            DomainOrderStatus::AwaitingPayment => OrderStatus::AwaitingPayment,
            DomainOrderStatus::Confirmed => OrderStatus::Confirmed,
            DomainOrderStatus::Shipped => OrderStatus::Shipped,
            DomainOrderStatus::Cancelled => OrderStatus::Cancelled,
        }
    }
}

/// One line of an order.
#[derive(SimpleObject)]
pub struct OrderLine {
    /// The product.
    pub product_id: String,
    /// Units ordered.
    pub quantity: Amount,
    /// Unit price when ordered, in cents.
    pub unit_price_cents: Amount,
}

/// An order (read model `orders`).
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Order {
    /// The order's id.
    pub id: String,
    /// The customer id as stored (sealed), revealed by the `customerId` field.
    #[graphql(skip)]
    pub stored_customer_id: String,
    /// Where it is.
    pub status: OrderStatus,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Total in cents.
    pub total_cents: Amount,
    /// Tracking number once shipped.
    pub tracking_number: Option<String>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// When it was placed (RFC 3339, UTC).
    pub placed_at: String,
    /// When it last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// The order stream's version.
    pub version: Version,
    /// Position of the last event applied to it.
    pub position: Position,
    /// The payment's id, resolved by the `payment` field.
    #[graphql(skip)]
    pub payment_id: Option<String>,
}

impl From<OrderView> for Order {
    fn from(o: OrderView) -> Self {
        Self {
            id: o.id,
            stored_customer_id: o.customer_id,
            status: o.status.into(),
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLine {
                    product_id: l.product_id,
                    quantity: Amount(l.quantity),
                    unit_price_cents: Amount(l.unit_price_cents),
                })
                .collect(),
            total_cents: Amount(o.total_cents),
            tracking_number: o.tracking_number,
            cancel_reason: o.cancel_reason,
            placed_at: time::format(o.placed_at_micros).unwrap_or_default(),
            updated_at: time::format(o.updated_at_micros).unwrap_or_default(),
            version: Version(o.version),
            position: Position(o.last_position),
            payment_id: o.payment_id,
        }
    }
}

#[ComplexObject]
impl Order {
    /// Who ordered: `"[erased]"` once the customer was forgotten.
    async fn customer_id(&self, ctx: &Context<'_>) -> String {
        api(ctx)
            .privacy
            .reveal(&self.stored_customer_id)
            .into_owned()
    }

    /// The order's payment, once the checkout requested it.
    async fn payment(&self, ctx: &Context<'_>) -> Result<Option<Payment>, ApiError> {
        let Some(id) = &self.payment_id else {
            return Ok(None);
        };
        Ok(api(ctx).read_models.payment(id)?.map(Payment::from))
    }
}

/// A customer's order statistics (read model `orders`).
#[derive(SimpleObject)]
pub struct CustomerStats {
    /// The customer.
    pub customer_id: String,
    /// Orders placed, cancelled or not.
    pub total_orders: Amount,
    /// Orders cancelled.
    pub cancelled_orders: Amount,
    /// Sum of the totals of the orders not cancelled, in cents.
    pub revenue_cents: Amount,
    /// Mean total of the orders not cancelled, in cents (rounded down).
    pub average_order_value_cents: Amount,
}

/// A product's catalogue data and stock (read model `products`).
#[derive(SimpleObject)]
pub struct Product {
    /// The product's id.
    pub id: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: Amount,
    /// Units received.
    pub on_hand: Amount,
    /// Units held by open orders.
    pub reserved: Amount,
    /// Units that can still be ordered.
    pub available: Amount,
    /// The product stream's version.
    pub version: Version,
}

impl From<ProductView> for Product {
    fn from(p: ProductView) -> Self {
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            price_cents: Amount(p.price_cents),
            on_hand: Amount(p.on_hand),
            reserved: Amount(p.reserved),
            available: Amount(p.available),
            version: Version(p.version),
        }
    }
}

/// What a projection is doing.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionStateName {
    /// Following the log.
    Running,
    /// Stopped by an operator.
    Paused,
    /// Following the log while a new generation is built.
    Rebuilding,
    /// Stopped on an event it could not apply, or on a storage error.
    Failed,
}

/// Progress of a blue/green rebuild.
#[derive(SimpleObject)]
pub struct RebuildProgress {
    /// The generation being built.
    pub generation: i32,
    /// The projection version building it.
    pub version: i32,
    /// Events done.
    pub checkpoint: Position,
    /// The durable head it heads for.
    pub head: Position,
    /// Recent rate.
    pub events_per_second: f64,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
}

/// Where a projection is.
#[derive(SimpleObject)]
#[graphql(name = "ProjectionStatus")]
pub struct ProjectionStatusObject {
    /// The projection's name.
    pub name: String,
    /// Version of the handler that built the serving generation.
    pub version: i32,
    /// The serving generation.
    pub generation: i32,
    /// What it is doing.
    pub state: ProjectionStateName,
    /// Last position applied.
    pub checkpoint: Position,
    /// The log's durable head.
    pub head: Position,
    /// Events between checkpoint and head.
    pub lag: Amount,
    /// Events per second over the last seconds.
    pub events_per_second: f64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Where it stopped, when failed on an event.
    pub failed_position: Option<Position>,
    /// Events parked.
    pub parked: Amount,
    /// The rebuild in progress.
    pub rebuild: Option<RebuildProgress>,
}

fn small(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl From<ProjectionStatus> for ProjectionStatusObject {
    fn from(s: ProjectionStatus) -> Self {
        Self {
            name: s.name,
            version: small(s.version),
            generation: small(s.generation),
            state: match s.state {
                ProjectionState::Running => ProjectionStateName::Running,
                ProjectionState::Paused => ProjectionStateName::Paused,
                ProjectionState::Rebuilding => ProjectionStateName::Rebuilding,
                ProjectionState::Failed => ProjectionStateName::Failed,
            },
            checkpoint: s.checkpoint.into(),
            head: s.head.into(),
            lag: Amount(s.lag),
            events_per_second: s.events_per_second,
            last_error: s.last_error,
            failed_position: s.failed_position.map(Into::into),
            parked: Amount(s.parked),
            rebuild: s.rebuild.map(|r| RebuildProgress {
                generation: small(r.generation),
                version: small(r.version),
                checkpoint: r.checkpoint.into(),
                head: r.head.into(),
                events_per_second: r.events_per_second,
                eta_seconds: r.eta_seconds,
            }),
        }
    }
}

/// Waits until `projection` has applied `at_least` (read your own writes).
pub(super) async fn consistent(
    ctx: &Context<'_>,
    projection: &str,
    at_least: Option<Position>,
) -> Result<(), ApiError> {
    let Some(at_least) = at_least else {
        return Ok(());
    };
    let api = api(ctx);
    let head = annals_store::EventStore::head(&api.store);
    if at_least.0 > head.0 {
        return Err(ApiError::bad_input(format!(
            "atLeast {} is beyond the log's head {}",
            at_least.0, head.0
        )));
    }
    match api
        .projections
        .wait_for(projection, at_least.into(), api.stale_read_timeout)
        .await
    {
        Ok(()) => Ok(()),
        Err(ProjectionError::StaleRead {
            position,
            checkpoint,
            timeout,
            ..
        }) => Err(ApiError::stale_read_timeout(
            position.0,
            checkpoint.0,
            timeout,
        )),
        Err(e) => Err(e.into()),
    }
}

fn page_first(first: Option<i32>) -> Result<Option<usize>, ApiError> {
    match first {
        None => Ok(None),
        Some(n) if n < 1 => Err(ApiError::bad_input(format!(
            "first must be at least 1 (got {n})"
        ))),
        Some(n) => Ok(Some(n as usize)),
    }
}

fn connection<T, N: async_graphql::OutputType>(
    page: Page<T>,
    has_previous: bool,
    node: impl Fn(T) -> N,
) -> Connection<String, N> {
    let mut connection = Connection::new(has_previous, page.has_next_page);
    connection.edges.extend(
        page.items
            .into_iter()
            .map(|(cursor, item)| Edge::new(cursor, node(item))),
    );
    connection
}

/// Queries on the read models. Every one takes `atLeast`: it answers only once the read
/// model has applied that position (from a mutation's `position`), or fails with
/// `STALE_READ_TIMEOUT`.
#[derive(Default)]
pub struct ReadModelQuery;

#[Object]
impl ReadModelQuery {
    /// One order, or null.
    async fn order(
        &self,
        ctx: &Context<'_>,
        id: String,
        at_least: Option<Position>,
    ) -> Result<Option<Order>, ApiError> {
        consistent(ctx, read_models::ORDERS, at_least).await?;
        Ok(api(ctx).read_models.order(&id)?.map(Order::from))
    }

    /// Orders in the order they were placed, by customer and/or status, `first` per page
    /// (default 20, capped) after the cursor `after`.
    async fn orders(
        &self,
        ctx: &Context<'_>,
        customer_id: Option<String>,
        status: Option<OrderStatus>,
        first: Option<i32>,
        after: Option<String>,
        at_least: Option<Position>,
    ) -> Result<Connection<String, Order>, ApiError> {
        consistent(ctx, read_models::ORDERS, at_least).await?;
        let customer_id = match customer_id {
            Some(id) => Some(customer_index_id(ctx, &id)?),
            None => None,
        };
        let filter = OrderFilter {
            customer_id,
            status: status.map(Into::into),
        };
        let page = api(ctx)
            .read_models
            .orders(&filter, page_first(first)?, after.as_deref())?;
        Ok(connection(page, after.is_some(), Order::from))
    }

    /// A customer's order statistics, or null when the customer has no orders.
    async fn customer_stats(
        &self,
        ctx: &Context<'_>,
        id: String,
        at_least: Option<Position>,
    ) -> Result<Option<CustomerStats>, ApiError> {
        consistent(ctx, read_models::ORDERS, at_least).await?;
        let privacy = &api(ctx).privacy;
        Ok(api(ctx)
            .read_models
            .customer_stats(&customer_index_id(ctx, &id)?)?
            .map(|s| CustomerStats {
                average_order_value_cents: Amount(s.average_order_value_cents()),
                customer_id: privacy.reveal(&s.customer_id).into_owned(),
                total_orders: Amount(s.total_orders),
                cancelled_orders: Amount(s.cancelled_orders),
                revenue_cents: Amount(s.revenue_cents),
            }))
    }

    /// One product's stock, or null.
    async fn product(
        &self,
        ctx: &Context<'_>,
        id: String,
        at_least: Option<Position>,
    ) -> Result<Option<Product>, ApiError> {
        consistent(ctx, read_models::PRODUCTS, at_least).await?;
        Ok(api(ctx).read_models.product(&id)?.map(Product::from))
    }

    /// Every product by id, `first` per page (default 20, capped) after `after`.
    async fn products(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        at_least: Option<Position>,
    ) -> Result<Connection<String, Product>, ApiError> {
        consistent(ctx, read_models::PRODUCTS, at_least).await?;
        let page = api(ctx)
            .read_models
            .products(page_first(first)?, after.as_deref())?;
        Ok(connection(page, after.is_some(), Product::from))
    }

    /// Products with fewer than `threshold` units available, scarcest first.
    async fn low_stock(
        &self,
        ctx: &Context<'_>,
        threshold: i32,
        at_least: Option<Position>,
    ) -> Result<Vec<Product>, ApiError> {
        let threshold = u64::try_from(threshold)
            .map_err(|_| ApiError::bad_input("threshold must not be negative"))?;
        consistent(ctx, read_models::PRODUCTS, at_least).await?;
        Ok(api(ctx)
            .read_models
            .low_stock(threshold)?
            .into_iter()
            .map(Product::from)
            .collect())
    }

    /// The events a projection parked (its handler kept failing on them), in position
    /// order, with the handler's last error.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn parked_events(
        &self,
        ctx: &Context<'_>,
        projection: String,
    ) -> Result<Vec<ParkedEventObject>, ApiError> {
        Ok(api(ctx)
            .projections
            .parked(&projection)?
            .into_iter()
            .map(ParkedEventObject::from)
            .collect())
    }

    /// The status of every projection.
    async fn projections(&self, ctx: &Context<'_>) -> Vec<ProjectionStatusObject> {
        api(ctx)
            .projections
            .status()
            .into_iter()
            .map(Into::into)
            .collect()
    }
}

/// Administration of projections.
#[derive(Default)]
pub struct ProjectionMutation;

#[Object]
impl ProjectionMutation {
    /// Starts a blue/green rebuild: the new generation is built from position 1 while the
    /// current one keeps serving, and takes over when it has caught up.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn rebuild_projection(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<ProjectionStatusObject, ApiError> {
        control(ctx, &name, |r| r.rebuild(&name))
    }

    /// Stops a projection after its current batch; queries keep answering from it.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn pause_projection(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<ProjectionStatusObject, ApiError> {
        control(ctx, &name, |r| r.pause(&name))
    }

    /// Hands the events from `from` (inclusive) to the projection again. For idempotent
    /// projections and for skipping forward past a known-bad range; `rebuildProjection` is
    /// the safe full reset.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn rewind_projection(
        &self,
        ctx: &Context<'_>,
        name: String,
        from: Position,
    ) -> Result<ProjectionStatusObject, ApiError> {
        control(ctx, &name, |r| {
            r.rewind(&name, annals_store::Position(from.0))
        })
    }

    /// Hands a parked event to its projection again: `true` when it applied (and is no
    /// longer parked), `false` when the handler failed again (it stays parked, with the
    /// new error). NOT_FOUND when no event is parked there.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn retry_parked_event(
        &self,
        ctx: &Context<'_>,
        projection: String,
        position: Position,
    ) -> Result<bool, ApiError> {
        let runtime = &api(ctx).projections;
        parked_at(runtime, &projection, position)?;
        Ok(runtime
            .replay_parked(&projection, annals_store::Position(position.0))
            .await?)
    }

    /// Gives up a parked event: its record is dropped and the read model stays without it
    /// until a rebuild. NOT_FOUND when no event is parked there.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn skip_parked_event(
        &self,
        ctx: &Context<'_>,
        projection: String,
        position: Position,
    ) -> Result<bool, ApiError> {
        let position = annals_store::Position(position.0);
        if api(ctx).projections.discard_parked(&projection, position)? {
            Ok(true)
        } else {
            Err(not_parked(&projection, position.0))
        }
    }

    /// Continues a paused projection, or retries the event a failed one stopped on.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn resume_projection(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<ProjectionStatusObject, ApiError> {
        control(ctx, &name, |r| r.resume(&name))
    }
}

/// An event a projection parked.
#[derive(SimpleObject)]
#[graphql(name = "ParkedEvent")]
pub struct ParkedEventObject {
    /// The projection that parked it.
    pub projection: String,
    /// The event's position.
    pub position: Position,
    /// The event's id.
    pub event_id: String,
    /// The event's stream.
    pub stream_id: String,
    /// The event's type.
    pub event_type: String,
    /// The handler's last error.
    pub error: String,
    /// How many times the handler was tried.
    pub attempts: i32,
    /// When it was parked (RFC 3339, UTC).
    pub parked_at: String,
}

impl From<annals_projections::ParkedEvent> for ParkedEventObject {
    fn from(p: annals_projections::ParkedEvent) -> Self {
        Self {
            projection: p.projection,
            position: Position(p.position),
            event_id: p.event_id,
            stream_id: p.stream_id,
            event_type: p.event_type,
            error: p.error,
            attempts: small(p.attempts),
            parked_at: time::format(p.parked_at_micros).unwrap_or_default(),
        }
    }
}

/// NOT_FOUND unless an event of `projection` is parked at `position`.
fn parked_at(
    runtime: &annals_projections::ProjectionRuntime,
    projection: &str,
    position: Position,
) -> Result<(), ApiError> {
    if runtime
        .parked(projection)?
        .iter()
        .any(|p| p.position == position.0)
    {
        Ok(())
    } else {
        Err(not_parked(projection, position.0))
    }
}

fn not_parked(projection: &str, position: u64) -> ApiError {
    ApiError::not_found(format!(
        "no event of {projection} is parked at position {position}"
    ))
}

/// Runs one control operation on a projection and answers with its status after it.
fn control(
    ctx: &Context<'_>,
    name: &str,
    operation: impl FnOnce(&annals_projections::ProjectionRuntime) -> Result<(), ProjectionError>,
) -> Result<ProjectionStatusObject, ApiError> {
    let runtime = &api(ctx).projections;
    operation(runtime)?;
    Ok(runtime.status_of(name)?.into())
}

/// The id the read models file a customer's orders under: its ref when its personal data
/// is sealed, the id itself otherwise (orders placed before sealing, or with it off).
fn customer_index_id(ctx: &Context<'_>, customer: &str) -> Result<String, ApiError> {
    Ok(match api(ctx).privacy.subject_ref(customer)? {
        Some(subject) => crate::privacy::index_id_of(&subject),
        None => customer.to_string(),
    })
}
