//! The Payment aggregate: requested → authorized → captured; requested → declined;
//! authorized | captured → refunded. Amounts are integer minor units (cents).
//!
//! The aggregate records what the payment gateway answered; it never calls the gateway
//! itself (decisions do no I/O). Its stream is `payment-{id}`, and the checkout uses the
//! order's id as its payment's id: one payment per order.

use annals_store::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CommerceError;

/// Where a payment is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Not requested: the aggregate does not exist.
    #[default]
    New,
    /// Requested from the gateway, no answer recorded yet.
    Requested,
    /// The gateway authorized the amount.
    Authorized,
    /// The gateway declined. Final.
    Declined,
    /// The authorized amount was captured.
    Captured,
    /// Given back (a void when it was only authorized). Final.
    Refunded,
}

impl PaymentStatus {
    /// The name used in errors and read models.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::New => "NEW",
            PaymentStatus::Requested => "REQUESTED",
            PaymentStatus::Authorized => "AUTHORIZED",
            PaymentStatus::Declined => "DECLINED",
            PaymentStatus::Captured => "CAPTURED",
            PaymentStatus::Refunded => "REFUNDED",
        }
    }
}

/// A payment as its events made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Where it is.
    pub status: PaymentStatus,
    /// The order it pays for.
    pub order_id: String,
    /// The amount, in cents.
    pub amount_cents: u64,
    /// The gateway's reference of the authorization.
    pub authorization: Option<String>,
}

/// What happens to a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum PaymentEvent {
    /// The payment of an order was requested.
    PaymentRequested {
        /// The order.
        order_id: String,
        /// The amount, in cents.
        amount_cents: u64,
    },
    /// The gateway authorized the amount.
    PaymentAuthorized {
        /// The gateway's reference.
        authorization: String,
    },
    /// The gateway declined.
    PaymentDeclined {
        /// The gateway's reason.
        reason: String,
    },
    /// The authorized amount was captured.
    PaymentCaptured {
        /// The amount, in cents.
        amount_cents: u64,
    },
    /// The amount was given back.
    PaymentRefunded {
        /// The amount, in cents.
        amount_cents: u64,
        /// Why.
        reason: String,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PaymentEvent::PaymentRequested { .. } => "PaymentRequested",
            PaymentEvent::PaymentAuthorized { .. } => "PaymentAuthorized",
            PaymentEvent::PaymentDeclined { .. } => "PaymentDeclined",
            PaymentEvent::PaymentCaptured { .. } => "PaymentCaptured",
            PaymentEvent::PaymentRefunded { .. } => "PaymentRefunded",
        }
    }
}

/// What can be asked of a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Request the payment of an order.
    Request {
        /// The order.
        order_id: String,
        /// The amount, in cents (positive).
        amount_cents: u64,
    },
    /// Record the gateway's authorization.
    Authorize {
        /// The gateway's reference.
        authorization: String,
    },
    /// Record the gateway's refusal.
    Decline {
        /// The gateway's reason.
        reason: String,
    },
    /// Record the capture of the authorized amount.
    Capture,
    /// Record that the amount was given back.
    Refund {
        /// Why.
        reason: String,
    },
}

impl Aggregate for Payment {
    const CATEGORY: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = CommerceError;

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentRequested {
                order_id,
                amount_cents,
            } => {
                self.status = PaymentStatus::Requested;
                self.order_id.clone_from(order_id);
                self.amount_cents = *amount_cents;
            }
            PaymentEvent::PaymentAuthorized { authorization } => {
                self.status = PaymentStatus::Authorized;
                self.authorization = Some(authorization.clone());
            }
            PaymentEvent::PaymentDeclined { .. } => self.status = PaymentStatus::Declined,
            PaymentEvent::PaymentCaptured { .. } => self.status = PaymentStatus::Captured,
            PaymentEvent::PaymentRefunded { .. } => self.status = PaymentStatus::Refunded,
        }
    }

    fn handle(
        &self,
        id: &str,
        command: PaymentCommand,
    ) -> Result<Vec<PaymentEvent>, CommerceError> {
        let invalid = |action: &str| CommerceError::InvalidState {
            reason: format!(
                "cannot {action} payment {id}: it is {}",
                self.status.as_str()
            ),
        };
        if self.status == PaymentStatus::New && !matches!(command, PaymentCommand::Request { .. }) {
            return Err(CommerceError::PaymentNotFound {
                payment_id: id.to_string(),
            });
        }
        match command {
            PaymentCommand::Request {
                order_id,
                amount_cents,
            } => {
                if self.status != PaymentStatus::New {
                    return Err(invalid("request"));
                }
                CommerceError::check(!order_id.trim().is_empty(), "order_id must not be empty")?;
                CommerceError::check(amount_cents > 0, "amount_cents must be positive")?;
                Ok(vec![PaymentEvent::PaymentRequested {
                    order_id,
                    amount_cents,
                }])
            }
            PaymentCommand::Authorize { authorization } => match self.status {
                PaymentStatus::Requested => {
                    Ok(vec![PaymentEvent::PaymentAuthorized { authorization }])
                }
                _ => Err(invalid("authorize")),
            },
            PaymentCommand::Decline { reason } => match self.status {
                PaymentStatus::Requested => Ok(vec![PaymentEvent::PaymentDeclined { reason }]),
                _ => Err(invalid("decline")),
            },
            PaymentCommand::Capture => match self.status {
                PaymentStatus::Authorized => Ok(vec![PaymentEvent::PaymentCaptured {
                    amount_cents: self.amount_cents,
                }]),
                _ => Err(invalid("capture")),
            },
            PaymentCommand::Refund { reason } => match self.status {
                PaymentStatus::Authorized | PaymentStatus::Captured => {
                    Ok(vec![PaymentEvent::PaymentRefunded {
                        amount_cents: self.amount_cents,
                        reason,
                    }])
                }
                _ => Err(invalid("refund")),
            },
        }
    }
}
