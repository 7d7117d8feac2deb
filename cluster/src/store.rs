//! `ClusterEventStore`: the event store of a cluster's node.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_store::{
    ChainReport, Direction, EventPage, EventStore, MultiAppendResult, Position, ReadFilter,
    RecordedEvent, RocksEventStore, RocksKeyStore, SharedKeys, Snapshot, SnapshotStore, StoreError,
    StoreStats, StreamAppend, StreamId, codec, validate_appends,
};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, RequestErrorKind, ServerAddr};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::ClusterError;
use crate::forward::Reply;
use crate::health::Health;
use crate::lease::Lease;
use crate::names;
use crate::options::{ClusterOptions, Role};
use crate::replicator::NatsReplicator;

/// What a node knows of itself and its cluster, for readiness checks and status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: String,
    /// Whether it may write.
    pub role: Role,
    /// Whether it writes now.
    pub leading: bool,
    /// The node that holds the write lease, when this node has seen it.
    pub writer: Option<String>,
    /// The last group of the log this node's replica holds.
    pub log_sequence: u64,
    /// The replica's head.
    pub head: Position,
    /// Why the replica stopped applying the log, if it did.
    pub diverged: Option<String>,
}

/// The event store of one node of a cluster: appends go through the cluster's writer
/// (this node, while it holds the lease, or the one that does), reads are the local
/// replica's. Cheap to clone.
#[derive(Clone)]
pub struct ClusterEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    replica: RocksEventStore,
    client: Client,
    /// The log's stream, for the last sequence a read barrier waits for.
    stream: jetstream::stream::Stream,
    options: ClusterOptions,
    append_subject: String,
    /// Most estimated bytes of one append, so that any group fits in one message.
    max_append_bytes: usize,
    health: Arc<Health>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The node's key store and the cluster's keys it follows, once shared.
    keys: Mutex<Option<SharedKeyStore>>,
}

/// A node's key store and the cluster's keys it follows.
#[derive(Clone, Debug)]
pub struct SharedKeyStore {
    /// The node's copy, which reveals and seals locally.
    pub local: Arc<RocksKeyStore>,
    /// The cluster's keys, where keys are created and purged.
    pub shared: Arc<dyn SharedKeys>,
}

impl std::fmt::Debug for ClusterEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterEventStore")
            .field("node_id", &self.inner.options.node_id)
            .field("replica", &self.inner.replica)
            .finish_non_exhaustive()
    }
}

/// The first wait before an append is retried after a failover or a lost answer.
const FIRST_RETRY: Duration = Duration::from_millis(25);
/// The longest wait between two attempts of one append.
const MAX_RETRY: Duration = Duration::from_millis(500);
/// Room left in a NATS message for its headers and the group's framing.
const MESSAGE_HEADROOM: usize = 64 * 1024;
/// How long joining a cluster waits for JetStream to answer its set-up requests.
pub(crate) const SETUP_PATIENCE: Duration = Duration::from_secs(30);
/// Bytes a record takes beyond its payload, stream id, type and metadata, at most.
const RECORD_OVERHEAD: usize = 160;

impl ClusterEventStore {
    /// Joins the cluster: connects to NATS, creates the log's stream and the lease bucket
    /// if they are missing, opens the replica in `path`, catches it up to the stream's
    /// last group, and starts the log's tail and (for [`Role::All`]) the lease.
    ///
    /// Must be called inside a multi-threaded tokio runtime: the replica's writer thread
    /// publishes through it.
    pub async fn start(
        path: impl AsRef<Path>,
        options: ClusterOptions,
    ) -> Result<Self, ClusterError> {
        options.validate()?;
        let client = connect(
            &options.servers,
            ConnectOptions::new()
                .name(format!("annals-{}", options.node_id))
                .connection_timeout(options.request_timeout)
                .request_timeout(Some(options.request_timeout)),
        )
        .await?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .build(client.clone());

        let max_payload = client.server_info().max_payload;
        let max_group_bytes = options
            .max_group_bytes
            .min(max_payload.saturating_sub(MESSAGE_HEADROOM))
            .max(64 * 1024);
        // Right after the servers start, or when several nodes create the stream at once,
        // JetStream may not answer the first requests: they are retried for a while.
        let setup_deadline = Instant::now() + SETUP_PATIENCE;
        let stream = until(setup_deadline, || {
            open_log_stream(&jetstream, &options, max_group_bytes)
        })
        .await?;
        let bucket = until(setup_deadline, || open_lease_bucket(&jetstream, &options)).await?;

        let mut store_options = options.store.clone();
        store_options.max_commit_bytes = store_options.max_commit_bytes.min(max_group_bytes / 2);
        let replicator = NatsReplicator {
            jetstream: jetstream.clone(),
            stream: stream.clone(),
            subject: names::log_subject(&options.name),
            runtime: tokio::runtime::Handle::current(),
            attempt_timeout: options.publish_timeout,
            deadline: options.request_timeout * 2,
        };
        let replica = RocksEventStore::open_replica(path, store_options, Box::new(replicator))?;
        if replica.log_sequence() == 0 && replica.head() > Position::ZERO {
            return Err(ClusterError::InvalidOptions(format!(
                "{} holds an embedded log (events but no place in a cluster's log): give the cluster node its own data directory",
                replica.path().display()
            )));
        }
        let health = Arc::new(Health::default());
        let (stop, stopped) = watch::channel(false);

        let last = until(setup_deadline, || async {
            stream
                .get_info()
                .await
                .map(|info| info.state.last_sequence)
                .map_err(|e| ClusterError::JetStream {
                    what: "read the log's stream",
                    reason: e.to_string(),
                })
        })
        .await?;
        let mut tasks = vec![tokio::spawn(crate::follower::run(
            stream.clone(),
            replica.clone(),
            health.clone(),
            stopped.clone(),
        ))];
        let behind = last.saturating_sub(replica.log_sequence());
        if behind > 0 {
            tracing::info!(behind, last, "catching up with the log");
        }
        let mut sequence = replica.subscribe_log_sequence();
        let caught_up = Instant::now();
        tokio::select! {
            _ = sequence.wait_for(|s| *s >= last) => {}
            _ = wait_diverged(&health) => {
                let why = health.diverged().unwrap_or_default();
                let _ = stop.send(true);
                return Err(ClusterError::Store(StoreError::ReplicaDiverged { sequence: replica.log_sequence() + 1, reason: why }));
            }
        }
        tracing::info!(
            node = %options.node_id,
            sequence = replica.log_sequence(),
            head = replica.head().0,
            took_ms = caught_up.elapsed().as_millis() as u64,
            "joined the cluster"
        );
        let append_subject = names::append_subject(&options.name);
        if options.role == Role::All {
            let lease = Lease {
                bucket,
                stream: stream.clone(),
                replica: replica.clone(),
                client: client.clone(),
                append_subject: append_subject.clone(),
                node_id: options.node_id.clone(),
                ttl: options.lease_ttl,
                health: health.clone(),
            };
            tasks.push(tokio::spawn(lease.run(stopped)));
        }
        let max_append_bytes = max_group_bytes / 2;
        Ok(Self {
            inner: Arc::new(Inner {
                replica,
                client,
                stream,
                options,
                append_subject,
                max_append_bytes,
                health,
                stop,
                tasks: Mutex::new(tasks),
                keys: Mutex::new(None),
            }),
        })
    }

    /// Opens this node's key store in `path` as a follower of the cluster's keys (the
    /// bucket is created when missing, and the node adopts the cluster's keyed-hash
    /// secret), and keeps it for [`ClusterEventStore::keys`].
    pub async fn share_keys(&self, path: impl AsRef<Path>) -> Result<SharedKeyStore, ClusterError> {
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(self.inner.options.request_timeout)
            .build(self.inner.client.clone());
        let (local, shared, follower) = crate::keys::share(
            &jetstream,
            &self.inner.options,
            path.as_ref(),
            self.inner.stop.subscribe(),
        )
        .await?;
        let keys = SharedKeyStore {
            local,
            shared: Arc::new(shared),
        };
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(follower);
        *self
            .inner
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(keys.clone());
        Ok(keys)
    }

    /// The node's key store and the cluster's keys, once [`ClusterEventStore::share_keys`]
    /// opened them.
    pub fn keys(&self) -> Option<SharedKeyStore> {
        self.inner
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The local replica.
    pub fn replica(&self) -> &RocksEventStore {
        &self.inner.replica
    }

    /// Whether this node writes now.
    pub fn is_leading(&self) -> bool {
        self.inner.replica.is_leading()
    }

    /// This node's view of itself and its cluster.
    pub fn status(&self) -> ClusterStatus {
        let inner = &self.inner;
        ClusterStatus {
            node_id: inner.options.node_id.clone(),
            role: inner.options.role,
            leading: inner.replica.is_leading(),
            writer: inner.health.writer(),
            log_sequence: inner.replica.log_sequence(),
            head: inner.replica.head(),
            diverged: inner.health.diverged(),
        }
    }

    /// Leaves the cluster: stops writing, releases the lease (so another node writes at
    /// once), stops the log's tail and closes the replica. Reads keep working.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        self.inner.replica.close();
    }

    /// Sends an append to the writer and decodes its answer.
    async fn forward(&self, request: &[u8]) -> Result<MultiAppendResult, StoreError> {
        let inner = &self.inner;
        let sent = inner
            .client
            .request(inner.append_subject.clone(), request.to_vec().into());
        let message = match tokio::time::timeout(inner.options.request_timeout, sent).await {
            Ok(Ok(message)) => message,
            Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
                return Err(StoreError::NotWriter);
            }
            Ok(Err(error)) => {
                return Err(StoreError::Unavailable {
                    reason: format!("the writer did not answer: {error}"),
                });
            }
            Err(_) => {
                return Err(StoreError::Unavailable {
                    reason: "the writer did not answer in time".into(),
                });
            }
        };
        match codec::decode_message::<Reply>(&message.payload) {
            Ok(Reply::Written(result)) => Ok(result),
            Ok(Reply::Failed(error)) => Err(error.into()),
            Err(error) => Err(StoreError::Unavailable {
                reason: format!("the writer's answer does not decode: {error}"),
            }),
        }
    }

    /// Waits until the replica holds `position`, so this node reads what it wrote.
    async fn wait_for_head(&self, position: Position) {
        let mut head = self.inner.replica.subscribe_head();
        let reached = tokio::time::timeout(
            self.inner.options.request_timeout,
            head.wait_for(|h| *h >= position),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        if !reached {
            tracing::warn!(
                position = position.0,
                head = self.inner.replica.head().0,
                "the replica did not reach a written position in time"
            );
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Connects to the first of `servers` that answers.
async fn connect(servers: &[String], options: ConnectOptions) -> Result<Client, ClusterError> {
    let error = |reason: String| ClusterError::Connect {
        servers: servers.join(","),
        reason,
    };
    let addresses = servers
        .iter()
        .map(|s| s.parse::<ServerAddr>().map_err(|e| error(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    options
        .connect(addresses)
        .await
        .map_err(|e| error(e.to_string()))
}

/// Runs a set-up request until it succeeds, is refused for a reason other than JetStream
/// not answering, or `deadline` passes.
pub(crate) async fn until<T, F, Fut>(deadline: Instant, mut request: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    loop {
        match request().await {
            Err(ClusterError::JetStream { what, reason }) if Instant::now() < deadline => {
                tracing::debug!(what, %reason, "JetStream is not ready yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

async fn wait_diverged(health: &Health) {
    while health.diverged().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log's stream: created when missing, refused when it could lose or reorder groups.
async fn open_log_stream(
    jetstream: &jetstream::Context,
    options: &ClusterOptions,
    max_group_bytes: usize,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let name = names::log_stream(&options.name);
    let config = StreamConfig {
        name: name.clone(),
        description: Some("Annals event log: one message per commit group".into()),
        subjects: vec![names::log_subject(&options.name)],
        num_replicas: options.replicas,
        storage: StorageType::File,
        // Sequences must stay gapless: nothing may ever leave the stream.
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        discard: DiscardPolicy::New,
        max_message_size: i32::try_from(max_group_bytes + MESSAGE_HEADROOM).unwrap_or(i32::MAX),
        duplicate_window: Duration::from_secs(120),
        ..StreamConfig::default()
    };
    let stream =
        jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| ClusterError::JetStream {
                what: "create the log's stream",
                reason: e.to_string(),
            })?;
    let info = stream.cached_info();
    let c = &info.config;
    let unsafe_because = if !c.deny_delete || !c.deny_purge {
        Some("deletes or purges are allowed")
    } else if c.max_messages > 0
        || c.max_bytes > 0
        || !c.max_age.is_zero()
        || c.max_messages_per_subject > 0
    {
        Some("it has limits, which would drop old groups")
    } else if c.allow_rollup {
        Some("rollups are allowed")
    } else {
        None
    };
    if let Some(reason) = unsafe_because {
        return Err(ClusterError::UnsafeStream {
            stream: name,
            reason: reason.into(),
        });
    }
    Ok(stream)
}

/// The lease bucket: created when missing.
async fn open_lease_bucket(
    jetstream: &jetstream::Context,
    options: &ClusterOptions,
) -> Result<kv::Store, ClusterError> {
    let config = kv::Config {
        bucket: names::lease_bucket(&options.name),
        description: "Annals write lease".into(),
        history: 1,
        max_age: options.lease_ttl,
        num_replicas: options.replicas,
        storage: StorageType::File,
        ..kv::Config::default()
    };
    open_bucket(jetstream, config, "create the lease bucket").await
}

/// A key-value bucket of the cluster: opened, or created as `config` says when missing
/// (when several nodes create it at once, the others open the one made first).
pub(crate) async fn open_bucket(
    jetstream: &jetstream::Context,
    config: kv::Config,
    what: &'static str,
) -> Result<kv::Store, ClusterError> {
    let bucket = config.bucket.clone();
    if let Ok(store) = jetstream.get_key_value(bucket.clone()).await {
        return Ok(store);
    }
    match jetstream.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(error) => jetstream
            .get_key_value(bucket)
            .await
            .map_err(|_| ClusterError::JetStream {
                what,
                reason: error.to_string(),
            }),
    }
}

/// Estimated encoded bytes of an append's records.
fn estimated_bytes(appends: &[StreamAppend]) -> usize {
    appends
        .iter()
        .map(|a| {
            a.events
                .iter()
                .map(|e| {
                    e.payload.len()
                        + e.event_type.len()
                        + a.stream_id.as_str().len()
                        + e.metadata.actor.as_ref().map_or(0, String::len)
                        + e.metadata
                            .extra
                            .iter()
                            .map(|(k, v)| k.len() + v.len() + 8)
                            .sum::<usize>()
                        + RECORD_OVERHEAD
                })
                .sum::<usize>()
        })
        .sum()
}

impl EventStore for ClusterEventStore {
    async fn append_multi(
        &self,
        mut appends: Vec<StreamAppend>,
    ) -> Result<MultiAppendResult, StoreError> {
        let inner = &self.inner;
        validate_appends(&appends, &inner.options.store)?;
        let size = estimated_bytes(&appends);
        if size > inner.max_append_bytes {
            return Err(StoreError::PayloadTooLarge {
                size,
                limit: inner.max_append_bytes,
            });
        }
        // Every event gets its id before the first attempt: whatever happens to an
        // attempt (a lost answer, a failover), a retry commits at most once.
        let mut generated_all = true;
        for event in appends.iter_mut().flat_map(|a| a.events.iter_mut()) {
            if event.event_id.is_none() {
                event.event_id = Some(Uuid::now_v7());
            } else {
                generated_all = false;
            }
        }
        let started = Instant::now();
        let mut backoff = FIRST_RETRY;
        let mut request: Option<Vec<u8>> = None;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (attempt, local) = if inner.replica.is_leading() {
                (inner.replica.append_multi(appends.clone()).await, true)
            } else {
                let request = request.get_or_insert_with(|| codec::encode_message(&appends));
                (self.forward(request).await, false)
            };
            let reason = match attempt {
                Ok(mut result) => {
                    if attempts > 1 && generated_all && result.duplicate {
                        // Ids no one else knew: the earlier attempt of this call wrote them.
                        result.duplicate = false;
                        for stream in &mut result.streams {
                            stream.duplicate = false;
                        }
                    }
                    if !local {
                        self.wait_for_head(result.last_position).await;
                    }
                    return Ok(result);
                }
                Err(StoreError::NotWriter) => "no node writes at the moment".to_string(),
                Err(StoreError::Unavailable { reason }) => reason,
                Err(error) => return Err(error),
            };
            if *inner.stop.borrow() {
                return Err(StoreError::Closed);
            }
            if started.elapsed() + backoff >= inner.options.append_timeout {
                return Err(StoreError::Unavailable { reason });
            }
            tracing::debug!(%reason, attempts, "append not taken; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_RETRY);
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .replica
            .read_stream(stream, from_version, direction, limit)
            .await
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<EventPage, StoreError> {
        self.inner.replica.read_all(from, limit, filter).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.inner.replica.stream_version(stream).await
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.replica.find_event(event_id).await
    }

    fn head(&self) -> Position {
        self.inner.replica.head()
    }

    fn subscribe_head(&self) -> watch::Receiver<Position> {
        self.inner.replica.subscribe_head()
    }

    async fn verify_chain(&self, from: Position, to: Position) -> Result<ChainReport, StoreError> {
        self.inner.replica.verify_chain(from, to).await
    }

    fn stats(&self) -> StoreStats {
        EventStore::stats(&self.inner.replica)
    }

    fn is_failed(&self) -> bool {
        EventStore::is_failed(&self.inner.replica) || self.inner.health.diverged().is_some()
    }

    /// The writer's replica holds every acknowledged group already. Another node asks the
    /// stream for its last sequence and waits (at most the request timeout) until its
    /// replica has applied it. Without NATS the barrier cannot be had, and the view stays
    /// as it is.
    async fn catch_up(&self) -> Result<bool, StoreError> {
        let inner = &self.inner;
        if inner.replica.is_leading() {
            return Ok(false);
        }
        let before = inner.replica.log_sequence();
        let last = match inner.stream.get_info().await {
            Ok(info) => info.state.last_sequence,
            Err(error) => {
                tracing::debug!(%error, "no read barrier: the log's stream did not answer");
                return Ok(false);
            }
        };
        if last <= before {
            return Ok(false);
        }
        let mut sequence = inner.replica.subscribe_log_sequence();
        let _ = tokio::time::timeout(
            inner.options.request_timeout,
            sequence.wait_for(|s| *s >= last),
        )
        .await;
        Ok(inner.replica.log_sequence() > before)
    }

    fn close(&self) {
        let _ = self.inner.stop.send(true);
        EventStore::close(&self.inner.replica);
    }
}

impl SnapshotStore for ClusterEventStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.replica.load_snapshot(stream).await
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.replica.save_snapshot(stream, snapshot).await
    }
}

/// Removes a cluster's log stream, lease bucket and keys bucket from NATS: every event of that
/// cluster is gone. For benchmarks and tests that make throwaway clusters; no node of
/// the cluster may be running.
pub async fn remove_cluster(servers: &[String], name: &str) -> Result<(), ClusterError> {
    let jetstream = jetstream::new(connect(servers, ConnectOptions::new()).await?);
    jetstream
        .delete_stream(names::log_stream(name))
        .await
        .map_err(|e| ClusterError::JetStream {
            what: "delete the log's stream",
            reason: e.to_string(),
        })?;
    jetstream
        .delete_key_value(names::lease_bucket(name))
        .await
        .map_err(|e| ClusterError::JetStream {
            what: "delete the lease bucket",
            reason: e.to_string(),
        })?;
    // A cluster whose nodes never sealed has no keys bucket.
    let _ = jetstream.delete_key_value(names::keys_bucket(name)).await;
    Ok(())
}
