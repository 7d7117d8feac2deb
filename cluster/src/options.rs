//! What a node needs to join a cluster.

use std::time::Duration;

use annals_store::StoreOptions;

use crate::error::ClusterError;
use crate::names;

/// Whether a node may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// Takes the write lease when it is free, and serves everything. The default.
    #[default]
    All,
    /// Never takes the lease: serves queries and subscriptions from its replica, and
    /// forwards appends to the writer.
    Query,
}

/// A node's cluster settings. The defaults are the product's.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://host:port`); the client fails over between them.
    pub servers: Vec<String>,
    /// The cluster's name, part of every stream and subject name. Default `annals`.
    pub name: String,
    /// This node's id, stored in the lease while it writes. Default: a random UUID.
    pub node_id: String,
    /// Whether this node may write. Default [`Role::All`].
    pub role: Role,
    /// Replicas of the log's stream and of the lease bucket. Default 3: the log survives
    /// the loss of any one server.
    pub replicas: usize,
    /// How long the lease lasts after its holder's last renewal. Default 3 s: a writer
    /// that died is replaced after this plus a catch-up; the holder renews three times
    /// per period, so one slow renewal does not cost the lease.
    pub lease_ttl: Duration,
    /// How long one forwarded append or one JetStream request waits for its answer
    /// before it is retried. Default 5 s, JetStream's own acknowledgement timeout.
    pub request_timeout: Duration,
    /// How long one publish of a commit group waits for its acknowledgement before the
    /// same publish is sent again (same message id, same expectation: stored once).
    /// Default 2 s: an acknowledgement takes milliseconds, and one lost with a server is
    /// not worth waiting for longer.
    pub publish_timeout: Duration,
    /// How long an append keeps retrying (through failovers) before it fails with
    /// `Unavailable`. Default 20 s: a lease expiry, an election of the stream's leader
    /// and a catch-up, with room to spare.
    pub append_timeout: Duration,
    /// Most bytes of one commit group, under the servers' `max_payload`. Default 4 MiB;
    /// the servers of `scripts/cluster` and the tests allow 8 MiB.
    pub max_group_bytes: usize,
    /// The replica's options (its durability is ignored: the stream is the durable copy).
    pub store: StoreOptions,
}

impl ClusterOptions {
    /// The defaults, with these servers.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        let max_group_bytes = 4 * 1024 * 1024;
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            name: "annals".into(),
            node_id: uuid::Uuid::new_v4().to_string(),
            role: Role::All,
            replicas: 3,
            lease_ttl: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(2),
            append_timeout: Duration::from_secs(20),
            max_group_bytes,
            store: StoreOptions {
                max_commit_bytes: max_group_bytes / 2,
                ..StoreOptions::default()
            },
        }
    }

    /// Checks what can be checked before connecting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.servers.is_empty() {
            return Err(ClusterError::InvalidOptions("no NATS server given".into()));
        }
        if !names::is_valid_cluster_name(&self.name) {
            return Err(ClusterError::InvalidOptions(format!(
                "cluster name {:?}: use 1 to 32 of [a-z0-9_-]",
                self.name
            )));
        }
        if self.node_id.is_empty() || self.node_id.len() > 128 {
            return Err(ClusterError::InvalidOptions(
                "the node id must have 1 to 128 bytes".into(),
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(ClusterError::InvalidOptions(
                "replicas must be 1 to 5".into(),
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ClusterError::InvalidOptions(
                "the lease must last at least one second".into(),
            ));
        }
        Ok(())
    }
}
