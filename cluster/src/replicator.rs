//! The writer's side of the log: each commit group becomes one message of the stream.

use std::time::{Duration, Instant};

use annals_store::{Acknowledger, ReplicaGroup, ReplicationError, Replicator};
use async_nats::HeaderMap;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use tokio::runtime::Handle;

use crate::names;

/// Publishes commit groups to the log's stream, each fenced by the sequence of the group
/// before it, and reports JetStream's acknowledgements as they come.
pub(crate) struct NatsReplicator {
    pub(crate) jetstream: Context,
    /// The log's stream, to tell one's own group from another writer's.
    pub(crate) stream: Stream,
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
    fn publish(&mut self, group: ReplicaGroup<'_>, ack: Acknowledger) {
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
        let jetstream = self.jetstream.clone();
        let subject = self.subject.clone();
        // Sent here, in the order of the calls (JetStream checks each group's expectation
        // against the one before); only the wait for the acknowledgement runs apart.
        let sent = self.runtime.block_on(jetstream.publish_with_headers(
            subject.clone(),
            headers.clone(),
            payload.clone(),
        ));
        let (attempt_timeout, deadline, after) = (self.attempt_timeout, self.deadline, group.after);
        let stream = self.stream.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let mut backoff = FIRST_BACKOFF;
            let mut sent = sent;
            loop {
                let reason = match sent {
                    Ok(pending) => match tokio::time::timeout(attempt_timeout, pending).await {
                        Ok(Ok(published)) => return ack.acknowledge(Ok(published.sequence)),
                        Ok(Err(error)) if error.kind() == PublishErrorKind::WrongLastSequence => {
                            // A retry can reach the server after the group it expects was
                            // itself stored by an earlier attempt of ours (the groups of a
                            // pipeline retry independently): the group after `after` may
                            // be this one.
                            return ack.acknowledge(if is_ours(&stream, after + 1, &id).await {
                                Ok(after + 1)
                            } else {
                                Err(ReplicationError::Fenced)
                            });
                        }
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => "no acknowledgement in time".to_string(),
                    },
                    Err(error) => error.to_string(),
                };
                // Safe to repeat: the same message id within JetStream's duplicate window
                // is stored once, and the expectation refuses it after another writer.
                if started.elapsed() + backoff >= deadline {
                    return ack.acknowledge(Err(ReplicationError::Unavailable(reason)));
                }
                tracing::debug!(%reason, after, "publish of a commit group failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                sent = jetstream
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await;
            }
        });
    }
}

/// Whether the stream's message at `sequence` is the group named `id` (its message id).
async fn is_ours(stream: &Stream, sequence: u64, id: &str) -> bool {
    match stream.get_raw_message(sequence).await {
        Ok(message) => message
            .headers
            .get(names::MESSAGE_ID)
            .is_some_and(|value| value.as_str() == id),
        Err(_) => false,
    }
}
