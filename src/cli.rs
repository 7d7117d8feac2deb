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
    /// Export the event log (the audit trail) as NDJSON, CSV or CloudEvents, with a manifest.
    Export(crate::audit::cli::ExportArgs),
    /// Verify an export: hashes, chain, order, manifest, signature; optionally the store.
    Verify(crate::audit::cli::VerifyArgs),
    /// Keys.
    #[command(subcommand)]
    Keys(KeysCommand),
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
