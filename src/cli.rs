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
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the GraphQL API over HTTP.
    Serve(ServeArgs),
    /// Rebuild read models offline from the event log (refuses while a server runs).
    Replay(ReplayArgs),
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
