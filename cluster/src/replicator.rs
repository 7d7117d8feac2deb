//! The writer's side of the log: each commit group becomes one message of the stream.

use std::time::{Duration, Instant};

use annals_store::{ReplicaGroup, ReplicationError, Replicator};
use async_nats::HeaderMap;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use bytes::Bytes;
use tokio::runtime::Handle;

use crate::names;

/// Publishes commit groups to the log's stream, fenced by the last sequence the replica
/// holds, and waits for JetStream's acknowledgement.
pub(crate) struct NatsReplicator {
    pub(crate) jetstream: Context,
    pub(crate) subject: String,
    pub(crate) runtime: Handle,
    /// How long one attempt waits for its acknowledgement.
    pub(crate) attempt_timeout: Duration,
    /// How long a group is retried (same message id, same expectation) before the writer
    /// gives up on it.
    pub(crate) deadline: Duration,
}

/// The first wait between two attempts of one group.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest wait between two attempts of one group.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

impl Replicator for NatsReplicator {
    fn replicate(&mut self, group: ReplicaGroup<'_>) -> Result<u64, ReplicationError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            names::EXPECTED_LAST_SEQUENCE,
            group.after.to_string().as_str(),
        );
        // The chain's tip after the group names it uniquely: a retried publish of the same
        // group is recognised by JetStream and acknowledged with the original sequence.
        let id: String = group.tip[..16].iter().map(|b| format!("{b:02x}")).collect();
        headers.insert(names::MESSAGE_ID, id.as_str());
        let payload = Bytes::copy_from_slice(group.bytes);
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        self.runtime.block_on(async {
            loop {
                let attempt = async {
                    let ack = self
                        .jetstream
                        .publish_with_headers(self.subject.clone(), headers.clone(), payload.clone())
                        .await?;
                    ack.await
                };
                let reason = match tokio::time::timeout(self.attempt_timeout, attempt).await {
                    Ok(Ok(ack)) => return Ok(ack.sequence),
                    Ok(Err(error)) if error.kind() == PublishErrorKind::WrongLastSequence => {
                        return Err(ReplicationError::Fenced);
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "no acknowledgement in time".to_string(),
                };
                // Safe to repeat: the same message id within JetStream's duplicate window
                // is stored once, and the expectation refuses it after another writer.
                if started.elapsed() + backoff >= self.deadline {
                    return Err(ReplicationError::Unavailable(reason));
                }
                tracing::debug!(%reason, after = group.after, "publish of a commit group failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}
