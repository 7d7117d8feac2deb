//! The write lease: which node writes, and its handover.
//!
//! The lease is one key of a key-value bucket whose entries expire `lease_ttl` after
//! their last write. A node takes it with `create` (which succeeds only when the key is
//! absent: free, or expired because its holder stopped renewing) and renews it with
//! `update` at the revision it last wrote (compare-and-set). The lease says who *should*
//! write; what makes two writers harmless is the stream's fencing
//! (`Nats-Expected-Last-Sequence`). So a holder that cannot reach the bucket writes on
//! (a bucket's leader election is then no pause for writes), and gives up only when the
//! bucket says another node holds the lease or the stream refuses its group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_store::RocksEventStore;
use async_nats::Client;
use async_nats::jetstream::kv::{CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::forward;
use crate::health::Health;
use crate::names::LEASE_KEY;

/// What the lease task works with.
pub(crate) struct Lease {
    pub(crate) bucket: Store,
    pub(crate) stream: Stream,
    pub(crate) replica: RocksEventStore,
    pub(crate) client: Client,
    pub(crate) append_subject: String,
    pub(crate) node_id: String,
    pub(crate) ttl: Duration,
    pub(crate) health: Arc<Health>,
}

/// The forwarded-append server while this node writes.
struct Serving {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Lease {
    /// Takes, renews and gives up the lease until `stop` fires; leads while it holds the
    /// lease and its replica has caught up, and releases the lease on the way out.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let tick = self.ttl / 3;
        let mut held: Option<(u64, Instant)> = None;
        let mut serving: Option<Serving> = None;
        loop {
            held = match held {
                None => self.try_take().await,
                // A lease that expired while the bucket was away is taken back at once if
                // no other node took it.
                Some((revision, renewed)) => match self.renew(revision, renewed).await {
                    None => self.try_take().await,
                    renewed => renewed,
                },
            };
            match held {
                Some(_) if !self.replica.is_leading() => {
                    stop_serving(&mut serving).await;
                    if self.lead().await {
                        serving = Some(self.serve());
                    }
                }
                Some(_) => {
                    if serving.as_ref().is_some_and(|s| s.task.is_finished()) {
                        serving = Some(self.serve());
                    }
                }
                None => {
                    if self.replica.is_leading() {
                        let _ = self.replica.follow().await;
                    }
                    stop_serving(&mut serving).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => break,
            }
        }
        // Hand over at once instead of after the expiry.
        let _ = self.replica.follow().await;
        stop_serving(&mut serving).await;
        if let Some((revision, _)) = held {
            match self
                .bucket
                .delete_expect_revision(LEASE_KEY, Some(revision))
                .await
            {
                Ok(()) => tracing::info!(node = %self.node_id, "released the write lease"),
                Err(error) => tracing::debug!(%error, "cannot release the write lease"),
            }
        }
    }

    async fn try_take(&self) -> Option<(u64, Instant)> {
        match self
            .bucket
            .create(LEASE_KEY, Bytes::from(self.node_id.clone()))
            .await
        {
            Ok(revision) => {
                tracing::info!(node = %self.node_id, "took the write lease");
                self.health.set_writer(Some(self.node_id.clone()));
                Some((revision, Instant::now()))
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                if let Ok(Some(entry)) = self.bucket.entry(LEASE_KEY).await {
                    let holder = String::from_utf8_lossy(&entry.value).into_owned();
                    self.health
                        .set_writer((!holder.is_empty()).then_some(holder));
                }
                None
            }
            Err(error) => {
                tracing::debug!(%error, "cannot take the write lease");
                None
            }
        }
    }

    async fn renew(&self, revision: u64, renewed: Instant) -> Option<(u64, Instant)> {
        match self
            .bucket
            .update(LEASE_KEY, Bytes::from(self.node_id.clone()), revision)
            .await
        {
            Ok(revision) => Some((revision, Instant::now())),
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(node = %self.node_id, "lost the write lease (another node holds it)");
                None
            }
            // The bucket does not answer (its leader is being elected, or it is out of
            // reach). This node keeps writing meanwhile: were another node to take the
            // expired lease and write, the stream's fencing would refuse this node's next
            // group and stop it, so staying costs nothing but makes a bucket election no
            // pause for writes.
            Err(error) => {
                if renewed.elapsed() >= self.ttl {
                    tracing::warn!(%error, node = %self.node_id, "the write lease cannot be renewed; writing on until another node writes");
                } else {
                    tracing::debug!(%error, "cannot renew the write lease yet");
                }
                Some((revision, renewed))
            }
        }
    }

    /// Catches the replica up to the stream's last group and starts writing from it.
    async fn lead(&self) -> bool {
        let last = match self.stream.get_info().await {
            Ok(info) => info.state.last_sequence,
            Err(error) => {
                tracing::debug!(%error, "cannot read the log's last sequence");
                return false;
            }
        };
        let mut sequence = self.replica.subscribe_log_sequence();
        let caught_up = tokio::time::timeout(self.ttl, sequence.wait_for(|s| *s >= last))
            .await
            .is_ok_and(|waited| waited.is_ok());
        if !caught_up {
            tracing::info!(
                last,
                held = self.replica.log_sequence(),
                "the replica is still catching up before it writes"
            );
            return false;
        }
        match self.replica.lead(last).await {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%error, last, "cannot lead yet");
                false
            }
        }
    }

    fn serve(&self) -> Serving {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(forward::serve(
            self.client.clone(),
            self.append_subject.clone(),
            self.replica.clone(),
            stopped,
        ));
        Serving { stop, task }
    }
}

async fn stop_serving(serving: &mut Option<Serving>) {
    if let Some(serving) = serving.take() {
        let _ = serving.stop.send(true);
        let _ = serving.task.await;
    }
}
