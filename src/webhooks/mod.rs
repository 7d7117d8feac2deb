//! Webhooks: events delivered to other services over HTTP, at least once, in log order per
//! subscription, signed.
//!
//! - A subscription is the `Webhook` aggregate (`webhook-{id}`): URL and event filter, in
//!   the log. Its secret is not: it is derived from the node's webhook key (a file in the
//!   data directory) and the subscription id, shown once when the subscription is made, so
//!   no secret ever reaches the log or its exports.
//! - The `webhooks` projection queues each matching event for each subscription in the
//!   batch of its checkpoint ([`projection`]): delivery state is checkpointed like a
//!   projection's.
//! - The [`Deliverer`] POSTs each subscription's queue in order ([`delivery`]): one event
//!   at a time, retried with backoff and jitter, then parked as a dead letter (which an
//!   operator can redrive), and the next one follows. A receiver deduplicates by the
//!   `X-Annals-Event-Id` header; the body is signed with HMAC-SHA256 in
//!   `X-Annals-Signature: t=<unix seconds>,v1=<hex of HMAC(secret, "<t>.<body>")>`.

mod delivery;
mod projection;
mod subscription;

use annals_store::RecordedEvent;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use delivery::{DeadLetter, Deliverer, DelivererOptions, WebhookStatus};
pub use projection::{Subscription, WebhooksProjection};
pub use subscription::{Webhook, WebhookCommand, WebhookError, WebhookEvent};

/// Name of the webhooks projection.
pub const WEBHOOKS: &str = "webhooks";
/// The header with the event's id, for the receiver's deduplication.
pub const EVENT_ID_HEADER: &str = "x-annals-event-id";
/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "x-annals-signature";

/// Keys of the webhooks projection's rows.
pub(crate) mod keys {
    use annals_store::Position;

    /// The active subscriptions (JSON list).
    pub const ACTIVE: &[u8] = b"a";

    /// Prefix of one subscription's queue: `q ‖ id ‖ 0x00`.
    pub fn queue(id: &str) -> Vec<u8> {
        [b"q", id.as_bytes(), b"\0"].concat()
    }

    /// A queued event: the queue's prefix, then its position (BE u64).
    pub fn queued(id: &str, position: Position) -> Vec<u8> {
        [queue(id).as_slice(), &position.0.to_be_bytes()].concat()
    }

    /// Prefix of one subscription's redriven dead letters, delivered before its queue and
    /// never dropped by recorded progress: `r ‖ id ‖ 0x00`.
    pub fn redriven(id: &str) -> Vec<u8> {
        [b"r", id.as_bytes(), b"\0"].concat()
    }

    /// A redriven dead letter.
    pub fn redriven_at(id: &str, position: Position) -> Vec<u8> {
        [redriven(id).as_slice(), &position.0.to_be_bytes()].concat()
    }

    /// Prefix of one subscription's dead letters: `x ‖ id ‖ 0x00`.
    pub fn dead(id: &str) -> Vec<u8> {
        [b"x", id.as_bytes(), b"\0"].concat()
    }

    /// A dead letter.
    pub fn dead_letter(id: &str, position: Position) -> Vec<u8> {
        [dead(id).as_slice(), &position.0.to_be_bytes()].concat()
    }

    /// The position at the end of a queue or dead-letter key.
    pub fn position_of(key: &[u8]) -> Position {
        let tail: [u8; 8] = key[key.len().saturating_sub(8)..]
            .try_into()
            .unwrap_or_default();
        Position(u64::from_be_bytes(tail))
    }
}

/// The JSON body POSTed for one event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The event's id: the receiver's deduplication key.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its position in the log.
    pub position: u64,
    /// When it was recorded (microseconds since the Unix epoch).
    pub recorded_at_micros: i64,
    /// Its schema version.
    pub schema_version: u16,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// The causation id.
    pub causation_id: Option<String>,
    /// The payload.
    pub payload: serde_json::Value,
}

impl Delivery {
    /// The body of `event`.
    pub fn of(event: &RecordedEvent) -> Self {
        Self {
            event_id: event.event_id.to_string(),
            event_type: event.event_type.clone(),
            stream_id: event.stream_id.to_string(),
            stream_version: event.stream_version,
            position: event.position.0,
            recorded_at_micros: event.recorded_at.as_micros(),
            schema_version: event.schema_version,
            correlation_id: event.metadata.correlation_id.map(|id| id.to_string()),
            causation_id: event.metadata.causation_id.map(|id| id.to_string()),
            payload: serde_json::from_slice(&event.payload).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The node's webhook key: every subscription's secret is derived from it.
#[derive(Clone)]
pub struct WebhookKey([u8; 32]);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(..)")
    }
}

impl WebhookKey {
    /// A fresh random key.
    pub fn random() -> std::io::Result<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(std::io::Error::other)?;
        Ok(Self(key))
    }

    /// The key in `path` (64 hex digits), made there (readable by its owner only) if
    /// the file does not exist.
    pub fn load_or_create(path: &std::path::Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                bytes.map(Self).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} does not hold 64 hex digits", path.display()),
                    )
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::random()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                use std::io::Write;
                options
                    .open(path)?
                    .write_all(hex::encode(key.0).as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// The secret of subscription `id`.
    pub fn secret(&self, id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"annals webhook secret\0");
        mac.update(id.as_bytes());
        format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// The signature header's value for `body` sent at `unix_seconds` with `secret`.
pub fn sign(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Whether `header` is a valid signature of `body` with `secret` (what a receiver runs).
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}
