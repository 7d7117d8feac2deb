//! The `annals` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Annals: an event-sourced CQRS backend with its own RocksDB event store.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the GraphQL API over HTTP.
    Serve(ServeArgs),
    /// Rebuild read models offline from the event log (refuses while a server runs).
    Replay(ReplayArgs),
    /// Measure throughput and latency (on a fresh temporary data directory by default).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Export the event log (the audit trail) as NDJSON, CSV or CloudEvents, with a manifest.
    Export(crate::audit::cli::ExportArgs),
    /// Verify an export: hashes, chain, order, manifest, signature; optionally the store.
    Verify(crate::audit::cli::VerifyArgs),
    /// Keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Appends from concurrent writers, optionally against raw RocksDB in the same run.
    Append(BenchAppendArgs),
    /// The full command path (placeOrder) on the reference domain.
    Command(BenchCommandArgs),
    /// Projection catch-up of the reference read models over a generated log.
    Catchup(BenchCatchupArgs),
}

/// Durability of a benchmark's appends.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledged means fsynced.
    Fsync,
    /// Acknowledged means in the OS page cache.
    Buffered,
}

impl From<DurabilityArg> for annals_store::Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Fsync => annals_store::Durability::Fsync,
            DurabilityArg::Buffered => annals_store::Durability::Buffered,
        }
    }
}

/// How long a benchmark runs.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Run this many seconds (default 10 when --events is not given).
    #[arg(long, conflicts_with = "events")]
    pub duration: Option<f64>,
    /// Run until this many events are written.
    #[arg(long)]
    pub events: Option<u64>,
}

impl LimitArgs {
    /// The limit these options ask for.
    pub fn limit(&self) -> crate::bench::Limit {
        match (self.events, self.duration) {
            (Some(events), _) => crate::bench::Limit::Events(events),
            (None, Some(secs)) => {
                crate::bench::Limit::Duration(std::time::Duration::from_secs_f64(secs.max(0.0)))
            }
            (None, None) => crate::bench::Limit::Duration(std::time::Duration::from_secs(10)),
        }
    }
}

/// Options of `annals bench append`.
#[derive(Debug, clap::Args)]
pub struct BenchAppendArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    pub events_per_append: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// Writers share this many streams (contention) instead of one stream each.
    #[arg(long)]
    pub streams: Option<usize>,
    /// When an append is acknowledged.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// How long to run.
    #[command(flatten)]
    pub limit: LimitArgs,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also run the same workload on raw RocksDB, alternating, and print the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals bench command`.
#[derive(Debug, clap::Args)]
pub struct BenchCommandArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// When an append is acknowledged.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// How long to run.
    #[command(flatten)]
    pub limit: LimitArgs,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals bench catchup`.
#[derive(Debug, clap::Args)]
pub struct BenchCatchupArgs {
    /// Events in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most events per projection batch (default: the runtime's default).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals replay`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["projection", "all"]))]
pub struct ReplayArgs {
    /// Where the event log and the read models live.
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The projection to rebuild.
    pub projection: Option<String>,
    /// Rebuild every projection.
    #[arg(long)]
    pub all: bool,
}

/// The `annals keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh ed25519 key pair for signing export manifests.
    NewSigning(crate::audit::cli::NewSigningArgs),
}

/// Options of `annals serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the event log and the read models live.
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The address to listen on.
    #[arg(long, env = "ANNALS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
}
