//! The `webhooks` projection: the subscriptions, and per subscription a queue of the
//! events still to deliver, written in the batch of the projection's checkpoint. An
//! event enters a subscription's queue exactly when the checkpoint passes it, so none is
//! skipped and none is queued twice, whatever the crashes.

use std::sync::Arc;

use annals_projections::{HandlerError, Projection, ReadModelTx};
use annals_store::{ReadFilter, RecordedEvent};
use serde::{Deserialize, Serialize};

use super::subscription::WebhookEvent;
use super::{Delivery, keys};

/// A subscription as the projection keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its id (`webhook-{id}`).
    pub id: String,
    /// Where to POST.
    pub url: String,
    /// Which events.
    pub filter: ReadFilter,
    /// The position it was created at: it receives the events after it.
    pub since: u64,
    /// The last position the writing node recorded as delivered.
    #[serde(default)]
    pub delivered_up_to: u64,
}

/// Builds the subscriptions and their delivery queues.
pub struct WebhooksProjection;

impl Projection for WebhooksProjection {
    fn name(&self) -> &str {
        super::WEBHOOKS
    }

    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        // Every event of the log comes here, so the subscriptions are read from the
        // database once per batch and shared from then on: a value read from the database
        // (or absent) is the only holder of its `Arc`, and is stored typed for the rest of
        // the batch; one taken from the batch is shared, and needs no write.
        let active: Arc<Vec<Subscription>> = tx.get_typed(keys::ACTIVE)?.unwrap_or_default();
        if Arc::strong_count(&active) == 1 && event.category() != "webhook" {
            tx.put_typed(keys::ACTIVE, active.clone());
        }
        if event.category() == "webhook" {
            let mut active = Vec::clone(&active);
            // A raw append to another stream of the category is not a subscription's.
            let Some(id) = event.stream_id.aggregate_id() else {
                return Ok(());
            };
            let id = id.to_string();
            let Ok(decoded) = crate::read_models::decode::<WebhookEvent>(event) else {
                return Ok(());
            };
            match decoded {
                WebhookEvent::WebhookSubscribed {
                    url,
                    event_types,
                    categories,
                } => {
                    active.retain(|s| s.id != id);
                    active.push(Subscription {
                        id,
                        url,
                        filter: ReadFilter {
                            categories,
                            event_types,
                        },
                        since: event.position.0,
                        delivered_up_to: event.position.0,
                    });
                }
                WebhookEvent::WebhookDeleted {} => active.retain(|s| s.id != id),
                WebhookEvent::WebhookDelivered { up_to } => {
                    for s in active.iter_mut().filter(|s| s.id == id) {
                        s.delivered_up_to = s.delivered_up_to.max(up_to);
                    }
                }
            }
            tx.put_typed(keys::ACTIVE, Arc::new(active));
            return Ok(());
        }
        let mut delivery: Option<Vec<u8>> = None;
        for subscription in active.iter() {
            if !subscription
                .filter
                .matches(event.stream_id.as_str(), &event.event_type)
            {
                continue;
            }
            let body = match &delivery {
                Some(body) => body.clone(),
                None => {
                    let body = serde_json::to_vec(&Delivery::of(event))?;
                    delivery = Some(body.clone());
                    body
                }
            };
            tx.put(keys::queued(&subscription.id, event.position), body);
        }
        Ok(())
    }
}
