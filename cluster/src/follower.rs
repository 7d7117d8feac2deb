//! Every node's tail of the log: the stream's groups, in order, applied to the replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_store::{RocksEventStore, StoreError};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::stream::Stream;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::health::Health;

/// Most groups applied in one write (more wait for the next).
const MAX_BATCH_GROUPS: usize = 256;
/// Most bytes of groups applied in one write.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// The wait before the tail is restarted after an error (a server lost, a leader change).
const RESTART_WAIT: Duration = Duration::from_millis(200);
/// How often the tail looks whether this node started or stopped writing.
const LEADING_POLL: Duration = Duration::from_millis(100);
/// How long the tail waits for a delivery before it checks that the stream has not moved
/// on without it.
const QUIET_CHECK: Duration = Duration::from_secs(2);

/// Applies the stream to the replica from the group after the replica's last, for ever:
/// an ordered consumer delivers the stream in sequence order and is recreated from the
/// replica's place after any error. Stops when `stop` fires or the replica diverges (then
/// `health` says why and the node reports it is not ready).
pub(crate) async fn run(
    stream: Stream,
    replica: RocksEventStore,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        if replica.is_leading() {
            // The writer's replica holds every group it published: its tail would only
            // receive its own groups back, at the cost of the servers' and this node's
            // CPU. It resumes from the replica's place when the node stops writing.
            tokio::select! {
                _ = tokio::time::sleep(LEADING_POLL) => continue,
                _ = stop.changed() => return,
            }
        }
        let outcome = tokio::select! {
            outcome = tail(&stream, &replica) => outcome,
            _ = stop.changed() => return,
        };
        match outcome {
            // The node leads now: the loop pauses the tail.
            Ok(()) => continue,
            Err(StoreError::ReplicaDiverged { sequence, reason }) => {
                tracing::error!(sequence, %reason, "the replica does not continue the log; it stops applying");
                health.set_diverged(format!("group {sequence}: {reason}"));
                return;
            }
            Err(StoreError::Closed) => return,
            Err(error) => {
                tracing::warn!(%error, "tailing the log failed; restarting from the replica's place");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART_WAIT) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One ordered consumer's life: returns when it fails.
async fn tail(stream: &Stream, replica: &RocksEventStore) -> Result<(), StoreError> {
    let unavailable = |what: &str, error: &dyn std::fmt::Display| StoreError::Unavailable {
        reason: format!("{what}: {error}"),
    };
    let start = replica.log_sequence() + 1;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| unavailable("cannot create the log's consumer", &e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable("cannot read the log", &e))?;
    tracing::debug!(start, "tailing the log");
    let mut poll = tokio::time::interval(LEADING_POLL);
    let mut last_delivery = Instant::now();
    loop {
        let first = tokio::select! {
            first = messages.next() => first,
            _ = poll.tick() => {
                if replica.is_leading() {
                    return Ok(());
                }
                // A consumer made while the stream's leader changes can stay silent
                // although the stream has grown: after a quiet spell the tail asks the
                // stream where it ends, and starts over if it is behind.
                if last_delivery.elapsed() >= QUIET_CHECK {
                    last_delivery = Instant::now();
                    if let Ok(info) = stream.get_info().await
                        && info.state.last_sequence > replica.log_sequence()
                    {
                        return Err(unavailable(
                            "the log's consumer is silent",
                            &format!(
                                "the stream ends at {}, the replica at {}",
                                info.state.last_sequence,
                                replica.log_sequence()
                            ),
                        ));
                    }
                }
                continue;
            }
        };
        last_delivery = Instant::now();
        let Some(first) = first else {
            return Err(unavailable("the log's consumer ended", &"no more messages"));
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let message = message.map_err(|e| unavailable("reading the log", &e))?;
            let sequence = message
                .info()
                .map_err(|e| unavailable("a message of the log has no metadata", &e))?
                .stream_sequence;
            bytes += message.payload.len();
            batch.push((sequence, message.message.payload.to_vec()));
            if batch.len() >= MAX_BATCH_GROUPS || bytes >= MAX_BATCH_BYTES {
                break;
            }
            // Whatever has arrived already joins this write; nothing waits for more.
            next = messages.next().now_or_never().flatten();
        }
        replica.apply_groups(batch).await?;
    }
}
