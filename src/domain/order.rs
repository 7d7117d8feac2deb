//! The Order aggregate: placed → awaiting payment → confirmed → shipped; cancelled from
//! any state before shipped. An order placed directly confirmed (without the checkout)
//! skips the payment step.

use annals_store::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CommerceError;

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Not placed yet: the aggregate does not exist.
    #[default]
    New,
    /// Placed, stock reserved.
    Placed,
    /// The checkout asked for its payment and waits for the answer.
    AwaitingPayment,
    /// Confirmed by the shop.
    Confirmed,
    /// Handed to the carrier. Final.
    Shipped,
    /// Cancelled, stock released. Final.
    Cancelled,
}

impl OrderStatus {
    /// The name used in errors and read models.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::New => "NEW",
            OrderStatus::Placed => "PLACED",
            OrderStatus::AwaitingPayment => "AWAITING_PAYMENT",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }
}

/// One line of an order, priced when the order was placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    /// The product.
    pub product_id: String,
    /// Units ordered (positive).
    pub quantity: u64,
    /// The product's unit price when the order was placed, in cents.
    pub unit_price_cents: u64,
}

/// An order as its events made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Where the order is.
    pub status: OrderStatus,
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Sum of quantity × unit price, in cents.
    pub total_cents: u64,
    /// The carrier's tracking number once shipped.
    pub tracking_number: Option<String>,
    /// The payment the checkout requested, if any.
    #[serde(default)]
    pub payment_id: Option<String>,
}

/// The payload of `OrderPlaced` at schema v1 (early releases), before `total_cents`.
///
/// Never written any more: old logs still hold it, [`crate::domain::upcasters`] turns it
/// into v2 on read, and its JSON Schema stays published for readers of those logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlacedV1 {
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
}

/// What happens to an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    /// The customer placed the order (schema v2: v1 had no `total_cents`).
    OrderPlaced {
        /// Who ordered. Personal data: stored sealed under the customer's key
        /// (`pii:1:…`), readable until the customer is forgotten, `[erased]` after.
        customer_id: String,
        /// What was ordered.
        lines: Vec<OrderLine>,
        /// Sum of quantity × unit price, in cents.
        total_cents: u64,
    },
    /// The checkout requested the order's payment.
    OrderAwaitingPayment {
        /// The payment (`payment-{id}`).
        payment_id: String,
    },
    /// The shop confirmed the order.
    OrderConfirmed {},
    /// The order left the warehouse.
    OrderShipped {
        /// The carrier's tracking number.
        tracking_number: String,
    },
    /// The order was cancelled.
    OrderCancelled {
        /// Why.
        reason: String,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::OrderAwaitingPayment { .. } => "OrderAwaitingPayment",
            OrderEvent::OrderConfirmed { .. } => "OrderConfirmed",
            OrderEvent::OrderShipped { .. } => "OrderShipped",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
        }
    }

    fn schema_version(&self) -> u16 {
        match self {
            OrderEvent::OrderPlaced { .. } => 2,
            _ => 1,
        }
    }
}

/// What can be asked of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place the order with priced lines.
    Place {
        /// Who orders.
        customer_id: String,
        /// What, at which prices.
        lines: Vec<OrderLine>,
    },
    /// Record that the order's payment was requested.
    AwaitPayment {
        /// The payment.
        payment_id: String,
    },
    /// Confirm a placed order by hand (orders the checkout handles wait for their
    /// payment instead).
    Confirm,
    /// Confirm an order whose payment was authorized (the checkout's confirmation).
    ConfirmPaid,
    /// Ship a confirmed order.
    Ship {
        /// The carrier's tracking number.
        tracking_number: String,
    },
    /// Cancel a placed or confirmed order.
    Cancel {
        /// Why.
        reason: String,
    },
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = CommerceError;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                customer_id,
                lines,
                total_cents,
            } => {
                self.status = OrderStatus::Placed;
                self.customer_id.clone_from(customer_id);
                self.lines.clone_from(lines);
                self.total_cents = *total_cents;
            }
            OrderEvent::OrderAwaitingPayment { payment_id } => {
                self.status = OrderStatus::AwaitingPayment;
                self.payment_id = Some(payment_id.clone());
            }
            OrderEvent::OrderConfirmed {} => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderShipped { tracking_number } => {
                self.status = OrderStatus::Shipped;
                self.tracking_number = Some(tracking_number.clone());
            }
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }

    fn handle(&self, id: &str, command: OrderCommand) -> Result<Vec<OrderEvent>, CommerceError> {
        let invalid = |action: &str| CommerceError::InvalidState {
            reason: format!("cannot {action} order {id}: it is {}", self.status.as_str()),
        };
        let not_found = || CommerceError::NotFound {
            order_id: id.to_string(),
        };
        match command {
            OrderCommand::Place { customer_id, lines } => {
                if self.status != OrderStatus::New {
                    return Err(invalid("place"));
                }
                CommerceError::check(
                    !customer_id.trim().is_empty(),
                    "customer_id must not be empty",
                )?;
                CommerceError::check(!lines.is_empty(), "an order needs at least one line")?;
                let mut total: u64 = 0;
                for (i, line) in lines.iter().enumerate() {
                    CommerceError::check(line.quantity > 0, "quantity must be positive")?;
                    CommerceError::check(
                        !lines[..i].iter().any(|l| l.product_id == line.product_id),
                        "each product may appear on one line only",
                    )?;
                    total = line
                        .quantity
                        .checked_mul(line.unit_price_cents)
                        .and_then(|t| t.checked_add(total))
                        .ok_or_else(|| CommerceError::Validation {
                            reason: "order total overflows".into(),
                        })?;
                }
                Ok(vec![OrderEvent::OrderPlaced {
                    customer_id,
                    lines,
                    total_cents: total,
                }])
            }
            OrderCommand::AwaitPayment { payment_id } => match self.status {
                OrderStatus::Placed => Ok(vec![OrderEvent::OrderAwaitingPayment { payment_id }]),
                OrderStatus::New => Err(not_found()),
                _ => Err(invalid("request the payment of")),
            },
            OrderCommand::Confirm => match self.status {
                OrderStatus::Placed => Ok(vec![OrderEvent::OrderConfirmed {}]),
                OrderStatus::New => Err(not_found()),
                _ => Err(invalid("confirm")),
            },
            OrderCommand::ConfirmPaid => match self.status {
                OrderStatus::AwaitingPayment => Ok(vec![OrderEvent::OrderConfirmed {}]),
                OrderStatus::New => Err(not_found()),
                _ => Err(invalid("confirm")),
            },
            OrderCommand::Ship { tracking_number } => match self.status {
                OrderStatus::Confirmed => {
                    CommerceError::check(
                        !tracking_number.trim().is_empty(),
                        "tracking_number must not be empty",
                    )?;
                    Ok(vec![OrderEvent::OrderShipped { tracking_number }])
                }
                OrderStatus::New => Err(not_found()),
                _ => Err(invalid("ship")),
            },
            OrderCommand::Cancel { reason } => match self.status {
                OrderStatus::Placed | OrderStatus::AwaitingPayment | OrderStatus::Confirmed => {
                    Ok(vec![OrderEvent::OrderCancelled { reason }])
                }
                OrderStatus::New => Err(not_found()),
                _ => Err(invalid("cancel")),
            },
        }
    }
}
