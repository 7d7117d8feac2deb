//! The `orders` projection: order details, order indexes and customer statistics.

use annals_projections::{HandlerError, Projection, ReadModelTx};
use annals_store::{ReadFilter, RecordedEvent};
use serde::{Deserialize, Serialize};

use super::aggregate_id;
use crate::domain::{OrderEvent, OrderStatus};

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
    /// Who ordered.
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
    /// The customer.
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

/// The index that serves a filter: by customer and status, by customer, by status, or all.
/// Customer ids and status names never contain 0x00, which separates the parts.
pub(super) fn index_prefix(customer: Option<&str>, status: Option<OrderStatus>) -> Vec<u8> {
    match (customer, status) {
        (Some(c), Some(s)) => [b"x/", c.as_bytes(), b"\0", s.as_str().as_bytes(), b"\0"].concat(),
        (Some(c), None) => [b"c/", c.as_bytes(), b"\0"].concat(),
        (None, Some(s)) => [b"s/", s.as_str().as_bytes(), b"\0"].concat(),
        (None, None) => b"a/".to_vec(),
    }
}

fn index_keys(order: &OrderView) -> [Vec<u8>; 4] {
    let position = order.placed_position.to_be_bytes();
    let customer = Some(order.customer_id.as_str());
    [
        [
            index_prefix(customer, Some(order.status)).as_slice(),
            &position,
        ]
        .concat(),
        [index_prefix(customer, None).as_slice(), &position].concat(),
        [index_prefix(None, Some(order.status)).as_slice(), &position].concat(),
        [index_prefix(None, None).as_slice(), &position].concat(),
    ]
}

/// Builds the orders read models.
pub struct OrdersProjection;

impl Projection for OrdersProjection {
    fn name(&self) -> &str {
        super::ORDERS
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter::categories(["order"])
    }

    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        let decoded: OrderEvent = super::decode(event)?;
        let id = aggregate_id(event.stream_id.as_str());
        let key = order_key(id);
        let previous: Option<OrderView> = tx.get_typed(&key)?;
        // Only the index entries whose key changes are rewritten: the customer and
        // all-orders indexes do not depend on the status.
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
                    placed_at_micros: event.recorded_at.as_micros(),
                    updated_at_micros: event.recorded_at.as_micros(),
                    version: event.stream_version,
                    placed_position: event.position.0,
                    last_position: event.position.0,
                };
                let stats_key = customer_stats_key(customer_id);
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
            OrderEvent::OrderConfirmed {} => order.status = OrderStatus::Confirmed,
            OrderEvent::OrderShipped { tracking_number } => {
                order.status = OrderStatus::Shipped;
                order.tracking_number = Some(tracking_number);
            }
            OrderEvent::OrderCancelled { reason } => {
                order.status = OrderStatus::Cancelled;
                order.cancel_reason = Some(reason);
                let stats_key = customer_stats_key(&order.customer_id);
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
                None => tx.put_new(key, order.id.as_bytes().to_vec()),
            }
        }
        tx.put_typed(key, order);
        Ok(())
    }
}
