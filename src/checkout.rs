//! The checkout saga: the process manager that takes an order from placement to a final
//! state, and the executor that carries out its commands through the domain.
//!
//! ```text
//! OrderPlaced ──► request payment ──► PaymentRequested ──► authorize at the gateway
//!                 (deadline "payment")        │
//!        ┌────────────────────────────────────┼──────────────────────────┐
//!   PaymentAuthorized                  PaymentDeclined          deadline fires first
//!        │                                    │                          │
//!   confirm order                      cancel order (stock released, in one commit)
//!        │
//!   OrderShipped ──► capture payment          OrderCancelled after authorization ──► refund
//! ```
//!
//! Stock is reserved with `OrderPlaced` in one commit, so the saga has no reservation step;
//! compensation runs backwards from where the checkout got to: a declined or unanswered
//! payment cancels the order (which releases its stock), and a cancellation after the
//! payment was authorized or captured refunds it. Every command carries the checkout's
//! correlation id (the order placement's) and the id of the event that caused it.

use std::time::Duration;

use annals_projections::process::{
    CommandExecutor, CommandFailure, Instance, ProcessManager, Reaction,
};
use annals_projections::{HandlerError, ProjectionError, ReadModelStore};
use annals_store::{
    CommandContext, CommandError, EventStore, ReadFilter, RecordedEvent, SnapshotStore,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::domain::{Commerce, CommerceError, OrderEvent, PaymentEvent};

/// The process manager's name: its projection, and the category of its deadline streams
/// (`checkout-{order id}`).
pub const CHECKOUT: &str = "checkout";
/// The deadline for the gateway's answer.
pub const PAYMENT_DEADLINE: &str = "payment";
/// Most history entries kept per checkout (the state stays bounded).
const HISTORY: usize = 32;

/// Where a checkout is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckoutStep {
    /// Not started (no order seen).
    #[default]
    New,
    /// The order is placed; its payment is being requested.
    Started,
    /// Waiting for the gateway's answer (the payment deadline runs).
    AwaitingPayment,
    /// The payment is authorized and the order confirmed.
    Confirmed,
    /// The order shipped; its payment is being captured.
    Shipped,
    /// Shipped and paid. Final.
    Completed,
    /// The order was cancelled after its payment was authorized; the refund is under way.
    Compensating,
    /// The order was cancelled (stock released, payment refunded if it had been taken).
    /// Final.
    Cancelled,
}

/// What the checkout knows of its order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderPhase {
    /// No order seen.
    #[default]
    None,
    /// Placed (or waiting for its payment).
    Open,
    /// Confirmed.
    Confirmed,
    /// Shipped.
    Shipped,
    /// Cancelled.
    Cancelled,
}

/// What the checkout knows of its payment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentPhase {
    /// Not requested.
    #[default]
    None,
    /// Requested, no answer.
    Requested,
    /// Authorized.
    Authorized,
    /// Declined.
    Declined,
    /// Captured.
    Captured,
    /// Refunded.
    Refunded,
}

/// One step of a checkout's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutEntry {
    /// When the event was recorded (microseconds since the Unix epoch).
    pub at_micros: i64,
    /// The event's type.
    pub event_type: String,
    /// Its position in the log.
    pub position: u64,
}

/// One checkout's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutState {
    /// The order, as far as the checkout knows.
    pub order: OrderPhase,
    /// The payment, as far as the checkout knows.
    pub payment: PaymentPhase,
    /// The order's total, in cents.
    pub amount_cents: u64,
    /// Why the order was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// The last events of the checkout, oldest first (at most 32).
    pub history: Vec<CheckoutEntry>,
}

impl CheckoutState {
    /// Where the checkout is: derived from what it knows of the order and the payment,
    /// so it cannot disagree with them.
    pub fn step(&self) -> CheckoutStep {
        match (self.order, self.payment) {
            (OrderPhase::None, _) => CheckoutStep::New,
            (OrderPhase::Cancelled, PaymentPhase::Authorized | PaymentPhase::Captured) => {
                CheckoutStep::Compensating
            }
            (OrderPhase::Cancelled, _) => CheckoutStep::Cancelled,
            (OrderPhase::Shipped, PaymentPhase::Captured) => CheckoutStep::Completed,
            (OrderPhase::Shipped, _) => CheckoutStep::Shipped,
            (OrderPhase::Confirmed, _) => CheckoutStep::Confirmed,
            (OrderPhase::Open, PaymentPhase::None) => CheckoutStep::Started,
            (OrderPhase::Open, _) => CheckoutStep::AwaitingPayment,
        }
    }
}

/// What the checkout asks of the domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CheckoutCommand {
    /// Request the order's payment.
    RequestPayment {
        /// The order.
        order_id: String,
    },
    /// Ask the gateway to authorize the payment.
    AuthorizePayment {
        /// The payment.
        payment_id: String,
    },
    /// Confirm the order.
    ConfirmOrder {
        /// The order.
        order_id: String,
    },
    /// Cancel the order (its stock is released in the same commit).
    CancelOrder {
        /// The order.
        order_id: String,
        /// Why.
        reason: String,
    },
    /// Capture the payment.
    CapturePayment {
        /// The payment.
        payment_id: String,
    },
    /// Refund the payment.
    RefundPayment {
        /// The payment.
        payment_id: String,
        /// Why.
        reason: String,
    },
}

/// The checkout saga. See the module docs.
#[derive(Clone, Debug)]
pub struct Checkout {
    /// How long the checkout waits for the gateway's answer before it cancels the order.
    pub payment_timeout: Duration,
}

impl Default for Checkout {
    /// A payment timeout of 15 minutes, what card payments with a customer's
    /// confirmation step commonly allow.
    fn default() -> Self {
        Self {
            payment_timeout: Duration::from_secs(15 * 60),
        }
    }
}

impl ProcessManager for Checkout {
    type State = CheckoutState;
    type Command = CheckoutCommand;

    fn name(&self) -> &str {
        CHECKOUT
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter::categories(["order", "payment"])
    }

    /// Orders and payments share ids: the checkout pays order `o` with payment `o`.
    fn instance_of(&self, event: &RecordedEvent) -> Option<String> {
        event.stream_id.aggregate_id().map(str::to_string)
    }

    fn react(
        &self,
        state: &mut CheckoutState,
        event: &RecordedEvent,
        out: &mut Reaction<CheckoutCommand>,
    ) -> Result<(), HandlerError> {
        let id = self.instance_of(event).unwrap_or_default();
        // An event of these streams that is not the domain's (a raw append of another
        // type) is not the checkout's business: it is ignored rather than stopping every
        // checkout behind it.
        let ignored = |error: &dyn std::fmt::Display| -> Result<(), HandlerError> {
            tracing::warn!(position = event.position.0, event_type = %event.event_type, %error, "checkout ignores an event it cannot read");
            Ok(())
        };
        match event.category() {
            "order" => match crate::read_models::decode(event) {
                Ok(decoded) => self.on_order(state, &id, decoded, out),
                Err(error) => return ignored(&error),
            },
            "payment" => match crate::read_models::decode(event) {
                Ok(decoded) => self.on_payment(state, &id, decoded, out),
                Err(error) => return ignored(&error),
            },
            _ => return Ok(()),
        }
        note(state, event);
        Ok(())
    }

    fn on_deadline(
        &self,
        state: &mut CheckoutState,
        deadline: &str,
        event: &RecordedEvent,
        out: &mut Reaction<CheckoutCommand>,
    ) -> Result<(), HandlerError> {
        let unanswered = matches!(state.payment, PaymentPhase::None | PaymentPhase::Requested);
        if deadline == PAYMENT_DEADLINE && state.order == OrderPhase::Open && unanswered {
            let order_id = self.instance_of(event).unwrap_or_default();
            out.send(CheckoutCommand::CancelOrder {
                order_id,
                reason: format!(
                    "no answer from the payment gateway within {}s",
                    self.payment_timeout.as_secs()
                ),
            });
        }
        note(state, event);
        Ok(())
    }
}

impl Checkout {
    fn on_order(
        &self,
        state: &mut CheckoutState,
        id: &str,
        event: OrderEvent,
        out: &mut Reaction<CheckoutCommand>,
    ) {
        match event {
            OrderEvent::OrderPlaced { total_cents, .. } if state.order == OrderPhase::None => {
                state.order = OrderPhase::Open;
                state.amount_cents = total_cents;
                out.send(CheckoutCommand::RequestPayment {
                    order_id: id.to_string(),
                });
                out.set_deadline(PAYMENT_DEADLINE, self.payment_timeout);
            }
            OrderEvent::OrderPlaced { .. } | OrderEvent::OrderAwaitingPayment { .. } => {}
            OrderEvent::OrderConfirmed {} => {
                state.order = OrderPhase::Confirmed;
                out.cancel_deadline(PAYMENT_DEADLINE);
            }
            OrderEvent::OrderShipped { .. } => {
                state.order = OrderPhase::Shipped;
                if state.payment == PaymentPhase::Authorized {
                    out.send(CheckoutCommand::CapturePayment {
                        payment_id: id.to_string(),
                    });
                }
            }
            OrderEvent::OrderCancelled { reason } => {
                state.order = OrderPhase::Cancelled;
                state.cancel_reason = Some(reason);
                out.cancel_deadline(PAYMENT_DEADLINE);
                if matches!(
                    state.payment,
                    PaymentPhase::Authorized | PaymentPhase::Captured
                ) {
                    out.send(refund(id));
                }
            }
        }
    }

    fn on_payment(
        &self,
        state: &mut CheckoutState,
        id: &str,
        event: PaymentEvent,
        out: &mut Reaction<CheckoutCommand>,
    ) {
        match event {
            PaymentEvent::PaymentRequested { .. } => {
                state.payment = PaymentPhase::Requested;
                out.send(CheckoutCommand::AuthorizePayment {
                    payment_id: id.to_string(),
                });
            }
            PaymentEvent::PaymentAuthorized { .. } => {
                state.payment = PaymentPhase::Authorized;
                out.cancel_deadline(PAYMENT_DEADLINE);
                match state.order {
                    OrderPhase::Open => out.send(CheckoutCommand::ConfirmOrder {
                        order_id: id.to_string(),
                    }),
                    // The deadline or an operator cancelled the order first.
                    OrderPhase::Cancelled => out.send(refund(id)),
                    OrderPhase::Shipped => out.send(CheckoutCommand::CapturePayment {
                        payment_id: id.to_string(),
                    }),
                    OrderPhase::None | OrderPhase::Confirmed => {}
                }
            }
            PaymentEvent::PaymentDeclined { reason } => {
                state.payment = PaymentPhase::Declined;
                out.cancel_deadline(PAYMENT_DEADLINE);
                if state.order == OrderPhase::Open {
                    out.send(CheckoutCommand::CancelOrder {
                        order_id: id.to_string(),
                        reason: format!("payment declined: {reason}"),
                    });
                }
            }
            PaymentEvent::PaymentCaptured { .. } => state.payment = PaymentPhase::Captured,
            PaymentEvent::PaymentRefunded { .. } => state.payment = PaymentPhase::Refunded,
        }
    }
}

fn refund(id: &str) -> CheckoutCommand {
    CheckoutCommand::RefundPayment {
        payment_id: id.to_string(),
        reason: "order cancelled".into(),
    }
}

/// Adds the event to the history, keeping the last entries only.
fn note(state: &mut CheckoutState, event: &RecordedEvent) {
    if state.history.len() >= HISTORY {
        state.history.remove(0);
    }
    state.history.push(CheckoutEntry {
        at_micros: event.recorded_at.as_micros(),
        event_type: event.event_type.clone(),
        position: event.position.0,
    });
}

/// The checkout of an order as the process manager keeps it (`None`: no such order, or
/// the checkout does not run here).
pub fn load(
    read: &ReadModelStore,
    order_id: &str,
) -> Result<Option<Instance<CheckoutState>>, ProjectionError> {
    match annals_projections::process::load_instance(read, CHECKOUT, order_id) {
        Err(ProjectionError::UnknownProjection { .. }) => Ok(None),
        other => other,
    }
}

/// Carries out the checkout's commands through the domain.
#[derive(Debug)]
pub struct CheckoutExecutor<S> {
    commerce: Arc<Commerce<S>>,
}

impl<S> CheckoutExecutor<S> {
    /// An executor over the domain's commands.
    pub fn new(commerce: Arc<Commerce<S>>) -> Self {
        Self { commerce }
    }
}

impl<S: EventStore + SnapshotStore> CommandExecutor<CheckoutCommand> for CheckoutExecutor<S> {
    async fn execute(
        &self,
        command: CheckoutCommand,
        ctx: CommandContext,
    ) -> Result<(), CommandFailure> {
        let c = &self.commerce;
        let done = match command {
            CheckoutCommand::RequestPayment { order_id } => {
                c.request_payment(&order_id, &ctx).await
            }
            CheckoutCommand::AuthorizePayment { payment_id } => {
                c.authorize_payment(&payment_id, &ctx).await
            }
            CheckoutCommand::ConfirmOrder { order_id } => {
                c.confirm_paid_order(&order_id, &ctx).await
            }
            CheckoutCommand::CancelOrder { order_id, reason } => {
                c.cancel_order(&order_id, reason, &ctx).await
            }
            CheckoutCommand::CapturePayment { payment_id } => {
                c.capture_payment(&payment_id, &ctx).await
            }
            CheckoutCommand::RefundPayment { payment_id, reason } => {
                c.refund_payment(&payment_id, reason, &ctx).await
            }
        };
        match done {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(error @ CommerceError::GatewayUnavailable { .. })) => {
                Err(CommandFailure::Transient(error.to_string()))
            }
            Err(CommandError::Rejected(error)) => Err(CommandFailure::Rejected(error.to_string())),
            Err(error) => Err(CommandFailure::Transient(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use annals_projections::process::testkit::given;
    use annals_projections::testkit::EventLog;
    use annals_store::RecordedEvent;
    use serde_json::json;

    use super::*;

    fn saga() -> Checkout {
        Checkout {
            payment_timeout: Duration::from_secs(60),
        }
    }

    fn log() -> EventLog {
        EventLog::new()
            .event(
                "order-o1",
                "OrderPlaced",
                json!({ "customer_id": "c", "lines": [], "total_cents": 500 }),
            )
            .event(
                "order-o1",
                "OrderAwaitingPayment",
                json!({ "payment_id": "o1" }),
            )
            .event(
                "payment-o1",
                "PaymentRequested",
                json!({ "order_id": "o1", "amount_cents": 500 }),
            )
    }

    fn last(log: EventLog) -> (Vec<RecordedEvent>, RecordedEvent) {
        let mut events = log.into_events();
        let last = events.pop().unwrap();
        (events, last)
    }

    #[test]
    fn a_placed_order_gets_its_payment_requested_and_a_deadline() {
        let (_, placed) = last(EventLog::new().event(
            "order-o1",
            "OrderPlaced",
            json!({ "customer_id": "c", "lines": [], "total_cents": 500 }),
        ));
        given(saga(), Vec::new())
            .when(placed)
            .then_commands([CheckoutCommand::RequestPayment {
                order_id: "o1".into(),
            }])
            .then_deadline_set(PAYMENT_DEADLINE, Duration::from_secs(60))
            .then_state("o1", |s| assert_eq!(s.step(), CheckoutStep::Started));
    }

    #[test]
    fn a_requested_payment_is_authorized_and_its_answer_decides_the_order() {
        let (given_events, requested) = last(log());
        given(saga(), given_events)
            .when(requested)
            .then_commands([CheckoutCommand::AuthorizePayment {
                payment_id: "o1".into(),
            }])
            .then_state("o1", |s| {
                assert_eq!(s.step(), CheckoutStep::AwaitingPayment)
            });
        let (given_events, authorized) = last(log().event(
            "payment-o1",
            "PaymentAuthorized",
            json!({ "authorization": "a" }),
        ));
        given(saga(), given_events)
            .when(authorized)
            .then_commands([CheckoutCommand::ConfirmOrder {
                order_id: "o1".into(),
            }])
            .then_pending_deadlines("o1", &[]);
        let (given_events, declined) =
            last(log().event("payment-o1", "PaymentDeclined", json!({ "reason": "no" })));
        given(saga(), given_events)
            .when(declined)
            .then_commands([CheckoutCommand::CancelOrder {
                order_id: "o1".into(),
                reason: "payment declined: no".into(),
            }])
            .then_pending_deadlines("o1", &[]);
    }

    #[test]
    fn an_unanswered_payment_cancels_the_order_when_the_deadline_fires() {
        given(saga(), log().into_events())
            .when_deadline("o1", PAYMENT_DEADLINE)
            .then_commands([CheckoutCommand::CancelOrder {
                order_id: "o1".into(),
                reason: "no answer from the payment gateway within 60s".into(),
            }]);
    }

    #[test]
    fn compensation_refunds_a_cancelled_paid_order_and_shipping_captures() {
        let paid = || {
            log()
                .event(
                    "payment-o1",
                    "PaymentAuthorized",
                    json!({ "authorization": "a" }),
                )
                .event("order-o1", "OrderConfirmed", json!({}))
        };
        let (given_events, cancelled) =
            last(paid().event("order-o1", "OrderCancelled", json!({ "reason": "changed" })));
        given(saga(), given_events)
            .when(cancelled)
            .then_commands([CheckoutCommand::RefundPayment {
                payment_id: "o1".into(),
                reason: "order cancelled".into(),
            }])
            .then_state("o1", |s| assert_eq!(s.step(), CheckoutStep::Compensating));
        let (given_events, shipped) = last(paid().event(
            "order-o1",
            "OrderShipped",
            json!({ "tracking_number": "T" }),
        ));
        given(saga(), given_events).when(shipped).then_commands([
            CheckoutCommand::CapturePayment {
                payment_id: "o1".into(),
            },
        ]);
    }

    #[test]
    fn events_it_cannot_read_are_ignored() {
        let (given_events, odd) = last(log().event("order-o1", "OrderTeleported", json!({})));
        given(saga(), given_events).when(odd).then_nothing();
    }
}
