//! Appends forwarded from a node that does not write to the one that does, over NATS
//! request/reply, encoded with the store's message codec.

use annals_store::{
    EventStore, ExpectedVersion, MultiAppendResult, Position, RocksEventStore, StoreError,
    StreamAppend, StreamId, codec,
};
use async_nats::Client;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The writer's answer to a forwarded append.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Written (or an identical earlier append found).
    Written(MultiAppendResult),
    /// Refused or failed.
    Failed(WireError),
}

/// A [`StoreError`] as it crosses the wire: the variants a caller acts on keep their
/// fields, the rest travel as their message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: u64,
    },
    IdempotencyConflict {
        event_id: Uuid,
        existing: Position,
    },
    PayloadTooLarge {
        size: usize,
        limit: usize,
    },
    TooManyEvents {
        count: usize,
        limit: usize,
    },
    NotWriter,
    Unavailable(String),
}

impl From<StoreError> for WireError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => WireError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            },
            StoreError::IdempotencyConflict { event_id, existing } => {
                WireError::IdempotencyConflict { event_id, existing }
            }
            StoreError::PayloadTooLarge { size, limit } => {
                WireError::PayloadTooLarge { size, limit }
            }
            StoreError::TooManyEvents { count, limit } => WireError::TooManyEvents { count, limit },
            // Closed: the writer is shutting down; the lease passes on.
            StoreError::NotWriter | StoreError::Closed => WireError::NotWriter,
            other => WireError::Unavailable(other.to_string()),
        }
    }
}

impl From<WireError> for StoreError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            },
            WireError::IdempotencyConflict { event_id, existing } => {
                StoreError::IdempotencyConflict { event_id, existing }
            }
            WireError::PayloadTooLarge { size, limit } => {
                StoreError::PayloadTooLarge { size, limit }
            }
            WireError::TooManyEvents { count, limit } => StoreError::TooManyEvents { count, limit },
            WireError::NotWriter => StoreError::NotWriter,
            WireError::Unavailable(reason) => StoreError::Unavailable {
                reason: format!("the writer failed: {reason}"),
            },
        }
    }
}

/// Answers forwarded appends with the local replica, which leads, until `stop` fires or
/// the subscription ends. Each request is answered by its own task, so the writer's group
/// commit gathers them as it gathers local appends.
pub(crate) async fn serve(
    client: Client,
    subject: String,
    replica: RocksEventStore,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut requests = match client.subscribe(subject.clone()).await {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::warn!(%error, %subject, "cannot take forwarded appends");
            return;
        }
    };
    tracing::info!(%subject, "taking forwarded appends");
    loop {
        let message = tokio::select! {
            message = requests.next() => message,
            _ = stop.changed() => None,
        };
        let Some(message) = message else { break };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let (client, replica) = (client.clone(), replica.clone());
        tokio::spawn(async move {
            let reply = match codec::decode_message::<Vec<StreamAppend>>(&message.payload) {
                Ok(appends) => match replica.append_multi(appends).await {
                    Ok(result) => Reply::Written(result),
                    Err(error) => Reply::Failed(error.into()),
                },
                Err(error) => Reply::Failed(WireError::Unavailable(format!(
                    "the request does not decode: {error}"
                ))),
            };
            if let Err(error) = client
                .publish(reply_to, codec::encode_message(&reply).into())
                .await
            {
                tracing::debug!(%error, "cannot answer a forwarded append");
            }
        });
    }
    let _ = requests.unsubscribe().await;
    tracing::info!(%subject, "no longer taking forwarded appends");
}
