//! The `orders` projection: order details, order indexes and customer statistics.

use annals_projections::{HandlerError, Projection, ReadModelTx};
use annals_store::{ReadFilter, RecordedEvent};
use serde::{Deserialize, Serialize};

use super::aggregate_id;
use crate::domain::{OrderEvent, OrderStatus};
use crate::privacy::index_id;

/// One line of an order in the read model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineView {
    /// The product.
    pub product_id: String,
    /// Units ordered.
    pub quantity: u64,
    /// Unit price when ordered, in cents.
    pub unit_price_cents: u64,
}

/// An order as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order's id.
    pub id: String,
    /// Who ordered, as the log holds it: sealed (`pii:1:…`) when personal data is sealed;
    /// the API reveals it through the key store.
    pub customer_id: String,
    /// Where the order is.
    pub status: OrderStatus,
    /// What was ordered.
    pub lines: Vec<OrderLineView>,
    /// Total in cents.
    pub total_cents: u64,
    /// Tracking number, once shipped.
    pub tracking_number: Option<String>,
    /// Why it was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// The payment the checkout requested for it, if any.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// When it was placed (microseconds since the Unix epoch).
    pub placed_at_micros: i64,
    /// When it last changed.
    pub updated_at_micros: i64,
    /// The order stream's version.
    pub version: u64,
    /// Position of `OrderPlaced`: the order's place in every index.
    pub placed_position: u64,
    /// Position of the last event applied to it.
    pub last_position: u64,
}

/// A customer's order statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerStats {
    /// The customer, as the last order's event holds it (sealed, see [`OrderView`]).
    pub customer_id: String,
    /// Orders placed, cancelled or not.
    pub total_orders: u64,
    /// Orders cancelled.
    pub cancelled_orders: u64,
    /// Sum of the totals of the orders that were not cancelled, in cents.
    pub revenue_cents: u64,
}

impl CustomerStats {
    /// Mean total of the orders that were not cancelled, in cents (rounded down).
    pub fn average_order_value_cents(&self) -> u64 {
        let kept = self.total_orders.saturating_sub(self.cancelled_orders);
        self.revenue_cents.checked_div(kept).unwrap_or(0)
    }
}

pub(super) fn order_key(id: &str) -> Vec<u8> {
    [b"o/".as_slice(), id.as_bytes()].concat()
}

pub(super) fn customer_stats_key(customer: &str) -> Vec<u8> {
    [b"k/".as_slice(), customer.as_bytes()].concat()
}

/// The statuses an order in the read model can have: one index part each.
pub(super) const INDEXED_STATUSES: [OrderStatus; 5] = [
    OrderStatus::Placed,
    OrderStatus::AwaitingPayment,
    OrderStatus::Confirmed,
    OrderStatus::Shipped,
    OrderStatus::Cancelled,
];

/// The index of the orders in one status, of one customer or of all customers: entries
/// `prefix ‖ position of OrderPlaced → order id`. Customer ids and status names never
/// contain 0x00, which separates the parts.
///
/// These two are the only order indexes written. All orders, or all of one customer's,
/// in placement order are the merge of the status parts by position (see
/// [`super::CommerceReadModels::orders`]): an order is in exactly one status, so the parts
/// never overlap. Writing two index entries per order instead of four halves the index
/// work of a catch-up; the price is that an unfiltered page reads one page from each of
/// the four parts instead of one.
pub(super) fn index_prefix(customer: Option<&str>, status: OrderStatus) -> Vec<u8> {
    index_key(customer, status, &[])
}

/// An index key: the prefix of [`index_prefix`], then `suffix`, built in one allocation
/// (the handler builds two keys per order event).
fn index_key(customer: Option<&str>, status: OrderStatus, suffix: &[u8]) -> Vec<u8> {
    let status = status.as_str().as_bytes();
    match customer {
        Some(c) => [b"x/", c.as_bytes(), b"\0", status, b"\0", suffix].concat(),
        None => [b"s/", status, b"\0", suffix].concat(),
    }
}

/// The index parts that list the orders a filter asks for.
pub(super) fn index_prefixes(customer: Option<&str>, status: Option<OrderStatus>) -> Vec<Vec<u8>> {
    match status {
        Some(status) => vec![index_prefix(customer, status)],
        None => INDEXED_STATUSES
            .iter()
            .map(|s| index_prefix(customer, *s))
            .collect(),
    }
}

fn index_keys(order: &OrderView) -> [Vec<u8>; 2] {
    let position = order.placed_position.to_be_bytes();
    [
        index_key(Some(&index_id(&order.customer_id)), order.status, &position),
        index_key(None, order.status, &position),
    ]
}

/// Builds the orders read models.
pub struct OrdersProjection;

impl Projection for OrdersProjection {
    fn name(&self) -> &str {
        super::ORDERS
    }

    /// 2: the by-customer and all-orders indexes are no longer written (they are read as
    /// merges of the status indexes).
    fn version(&self) -> u32 {
        2
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter::categories(["order"])
    }

    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        let decoded: OrderEvent = super::decode(event)?;
        let id = aggregate_id(&event.stream_id);
        let key = order_key(id);
        // An `OrderPlaced` that opens its stream (the aggregate appends it to a stream that
        // does not exist) names an order no event before it named, and the runtime hands
        // each event over once: the order cannot be in the read model, and looking for it
        // (a miss through every bloom filter of the database) was the most expensive read
        // of a catch-up. Any other placement is looked up, and refused if the order exists.
        let opens_stream =
            matches!(decoded, OrderEvent::OrderPlaced { .. }) && event.stream_version == 1;
        let previous: Option<OrderView> = if opens_stream {
            None
        } else {
            tx.get_typed(&key)?
        };
        // Both index entries depend on the status: a status change moves them.
        let old_keys = previous.as_ref().map(index_keys);
        let mut order = match (&decoded, previous) {
            (
                OrderEvent::OrderPlaced {
                    customer_id,
                    lines,
                    total_cents,
                },
                None,
            ) => {
                let order = OrderView {
                    id: id.to_string(),
                    customer_id: customer_id.clone(),
                    status: OrderStatus::Placed,
                    lines: lines
                        .iter()
                        .map(|l| OrderLineView {
                            product_id: l.product_id.clone(),
                            quantity: l.quantity,
                            unit_price_cents: l.unit_price_cents,
                        })
                        .collect(),
                    total_cents: *total_cents,
                    tracking_number: None,
                    cancel_reason: None,
                    payment_id: None,
                    placed_at_micros: event.recorded_at.as_micros(),
                    updated_at_micros: event.recorded_at.as_micros(),
                    version: event.stream_version,
                    placed_position: event.position.0,
                    last_position: event.position.0,
                };
                let stats_key = customer_stats_key(&index_id(customer_id));
                let mut stats: CustomerStats = tx.get_typed(&stats_key)?.unwrap_or_default();
                stats.customer_id = customer_id.clone();
                stats.total_orders += 1;
                stats.revenue_cents += total_cents;
                tx.put_typed(stats_key, stats);
                order
            }
            (OrderEvent::OrderPlaced { .. }, Some(_)) => {
                return Err(format!("order {id} placed twice").into());
            }
            (_, None) => return Err(format!("{} for unknown order {id}", event.event_type).into()),
            (_, Some(order)) => order,
        };
        match decoded {
            OrderEvent::OrderPlaced { .. } => {}
            OrderEvent::OrderAwaitingPayment { payment_id } => {
                order.status = OrderStatus::AwaitingPayment;
                order.payment_id = Some(payment_id);
            }
            OrderEvent::OrderConfirmed {} => order.status = OrderStatus::Confirmed,
            OrderEvent::OrderShipped { tracking_number } => {
                order.status = OrderStatus::Shipped;
                order.tracking_number = Some(tracking_number);
            }
            OrderEvent::OrderCancelled { reason } => {
                order.status = OrderStatus::Cancelled;
                order.cancel_reason = Some(reason);
                let stats_key = customer_stats_key(&index_id(&order.customer_id));
                let mut stats: CustomerStats = tx.get_typed(&stats_key)?.unwrap_or_default();
                stats.cancelled_orders += 1;
                stats.revenue_cents = stats.revenue_cents.saturating_sub(order.total_cents);
                tx.put_typed(stats_key, stats);
            }
        }
        order.updated_at_micros = event.recorded_at.as_micros();
        order.version = event.stream_version;
        order.last_position = event.position.0;
        let new_keys = index_keys(&order);
        for (i, key) in new_keys.into_iter().enumerate() {
            match &old_keys {
                Some(old) if old[i] == key => {}
                Some(old) => {
                    tx.delete(old[i].clone());
                    tx.put(key, order.id.as_bytes().to_vec());
                }
                // Every index key ends with the position of this `OrderPlaced`, and the
                // order did not exist: no such key can be in the database, so a status
                // change later in the batch moves it without a lookup.
                None => tx.put_known_new(key, order.id.as_bytes().to_vec()),
            }
        }
        tx.put_typed(key, order);
        Ok(())
    }
}
