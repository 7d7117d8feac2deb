//! The `payments` projection: every payment with its status, amount and the gateway's
//! answers.

use annals_projections::{HandlerError, Projection, ReadModelTx};
use annals_store::{ReadFilter, RecordedEvent};
use serde::{Deserialize, Serialize};

use super::aggregate_id;
use crate::domain::{PaymentEvent, PaymentStatus};

/// A payment as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    /// The payment's id (the checkout uses the order's id).
    pub id: String,
    /// The order it pays for.
    pub order_id: String,
    /// Where it is.
    pub status: PaymentStatus,
    /// The amount, in cents.
    pub amount_cents: u64,
    /// The gateway's authorization reference.
    pub authorization: Option<String>,
    /// Why it was declined or refunded.
    pub reason: Option<String>,
    /// When it was requested (microseconds since the Unix epoch).
    pub requested_at_micros: i64,
    /// When it last changed.
    pub updated_at_micros: i64,
    /// The payment stream's version.
    pub version: u64,
}

pub(super) fn payment_key(id: &str) -> Vec<u8> {
    [b"p/".as_slice(), id.as_bytes()].concat()
}

/// Builds the payments read model.
pub struct PaymentsProjection;

impl Projection for PaymentsProjection {
    fn name(&self) -> &str {
        super::PAYMENTS
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter::categories(["payment"])
    }

    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        let decoded: PaymentEvent = super::decode(event)?;
        let id = aggregate_id(&event.stream_id);
        let key = payment_key(id);
        let previous: Option<PaymentView> = tx.get_typed(&key)?;
        let mut payment = match (&decoded, previous) {
            (
                PaymentEvent::PaymentRequested {
                    order_id,
                    amount_cents,
                },
                None,
            ) => PaymentView {
                id: id.to_string(),
                order_id: order_id.clone(),
                status: PaymentStatus::Requested,
                amount_cents: *amount_cents,
                authorization: None,
                reason: None,
                requested_at_micros: event.recorded_at.as_micros(),
                updated_at_micros: event.recorded_at.as_micros(),
                version: event.stream_version,
            },
            (PaymentEvent::PaymentRequested { .. }, Some(_)) => {
                return Err(format!("payment {id} requested twice").into());
            }
            (_, None) => {
                return Err(format!("{} for unknown payment {id}", event.event_type).into());
            }
            (_, Some(payment)) => payment,
        };
        match decoded {
            PaymentEvent::PaymentRequested { .. } => {}
            PaymentEvent::PaymentAuthorized { authorization } => {
                payment.status = PaymentStatus::Authorized;
                payment.authorization = Some(authorization);
            }
            PaymentEvent::PaymentDeclined { reason } => {
                payment.status = PaymentStatus::Declined;
                payment.reason = Some(reason);
            }
            PaymentEvent::PaymentCaptured { .. } => payment.status = PaymentStatus::Captured,
            PaymentEvent::PaymentRefunded { reason, .. } => {
                payment.status = PaymentStatus::Refunded;
                payment.reason = Some(reason);
            }
        }
        payment.updated_at_micros = event.recorded_at.as_micros();
        payment.version = event.stream_version;
        tx.put_typed(key, payment);
        Ok(())
    }
}
