//! The Webhook aggregate: a subscription's life (`webhook-{id}`), kept in the log so the
//! audit trail says who subscribed which URL to which events, and when.

use annals_store::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a webhook command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not an `http` or `https` URL, or the filter names nothing valid.
    #[error("{reason}")]
    Validation {
        /// What is wrong.
        reason: String,
    },
    /// No webhook has this id (or it was deleted).
    #[error("webhook {id} not found")]
    NotFound {
        /// The webhook.
        id: String,
    },
    /// A webhook with this id exists already.
    #[error("webhook {id} exists already")]
    Exists {
        /// The webhook.
        id: String,
    },
}

/// A subscription as its events made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Subscribed and not deleted.
    pub active: bool,
    /// Whether it ever existed.
    pub created: bool,
    /// Where events are POSTed.
    pub url: String,
}

/// What happens to a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum WebhookEvent {
    /// Events matching the filter are POSTed to the URL from here on.
    WebhookSubscribed {
        /// Where to POST.
        url: String,
        /// Event types to deliver (empty: all).
        event_types: Vec<String>,
        /// Stream categories to deliver (empty: all).
        categories: Vec<String>,
    },
    /// No more deliveries.
    WebhookDeleted {},
    /// The writing node delivered every queued event up to this position: progress that
    /// the other nodes of a cluster drop from their queues, so that a node taking over
    /// delivery resends only what came after it.
    WebhookDelivered {
        /// The last position delivered (or given up as a dead letter).
        up_to: u64,
    },
}

impl DomainEvent for WebhookEvent {
    fn event_type(&self) -> &'static str {
        match self {
            WebhookEvent::WebhookSubscribed { .. } => "WebhookSubscribed",
            WebhookEvent::WebhookDeleted { .. } => "WebhookDeleted",
            WebhookEvent::WebhookDelivered { .. } => "WebhookDelivered",
        }
    }
}

/// What can be asked of a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookCommand {
    /// Subscribe.
    Subscribe {
        /// Where to POST.
        url: String,
        /// Event types (empty: all).
        event_types: Vec<String>,
        /// Categories (empty: all).
        categories: Vec<String>,
    },
    /// Delete.
    Delete,
}

impl Aggregate for Webhook {
    const CATEGORY: &'static str = "webhook";
    type Command = WebhookCommand;
    type Event = WebhookEvent;
    type Error = WebhookError;

    fn apply(&mut self, event: &WebhookEvent) {
        match event {
            WebhookEvent::WebhookSubscribed { url, .. } => {
                self.active = true;
                self.created = true;
                self.url.clone_from(url);
            }
            WebhookEvent::WebhookDeleted {} => self.active = false,
            WebhookEvent::WebhookDelivered { .. } => {}
        }
    }

    fn handle(&self, id: &str, command: WebhookCommand) -> Result<Vec<WebhookEvent>, WebhookError> {
        match command {
            WebhookCommand::Subscribe {
                url,
                event_types,
                categories,
            } => {
                if self.created {
                    return Err(WebhookError::Exists { id: id.to_string() });
                }
                let valid_url = (url.starts_with("http://") || url.starts_with("https://"))
                    && url.len() <= 2048
                    && !url.chars().any(char::is_whitespace);
                if !valid_url {
                    return Err(WebhookError::Validation {
                        reason: format!("{url:?} is not an http(s) URL"),
                    });
                }
                for name in event_types.iter().chain(&categories) {
                    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                        return Err(WebhookError::Validation {
                            reason: format!("{name:?} is not an event type or category"),
                        });
                    }
                }
                Ok(vec![WebhookEvent::WebhookSubscribed {
                    url,
                    event_types,
                    categories,
                }])
            }
            WebhookCommand::Delete if self.active => Ok(vec![WebhookEvent::WebhookDeleted {}]),
            WebhookCommand::Delete => Err(WebhookError::NotFound { id: id.to_string() }),
        }
    }
}
