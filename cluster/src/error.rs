//! The crate's error type.

/// Why a node could not join its cluster. Once a [`crate::ClusterEventStore`] is
/// started, its operations fail with [`annals_store::StoreError`] like every store's.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// None of the NATS servers could be reached.
    ///
    /// Handling: check the `--cluster` URLs and that the servers run.
    #[error("cannot connect to the NATS servers {servers}: {reason}")]
    Connect {
        /// The servers tried, comma-separated.
        servers: String,
        /// What the client reported.
        reason: String,
    },
    /// The options are not usable (no server, an empty name or node id).
    #[error("invalid cluster options: {0}")]
    InvalidOptions(String),
    /// JetStream refused or did not answer a request that sets the cluster up (creating
    /// or checking the log's stream, the lease bucket).
    ///
    /// Handling: check that JetStream is enabled on every server and that the cluster has
    /// a quorum; the error names the request.
    #[error("JetStream could not {what}: {reason}")]
    JetStream {
        /// What was being done.
        what: &'static str,
        /// What the server or client reported.
        reason: String,
    },
    /// The log's stream exists with a configuration that lets sequences have gaps or
    /// messages disappear (limits, deletes, purges).
    ///
    /// Handling: the stream was not created by Annals; use another cluster name.
    #[error("the stream {stream} is not configured as an Annals log: {reason}")]
    UnsafeStream {
        /// The stream's name.
        stream: String,
        /// What is wrong with its configuration.
        reason: String,
    },
    /// The local replica could not be opened or caught up.
    #[error(transparent)]
    Store(#[from] annals_store::StoreError),
}
