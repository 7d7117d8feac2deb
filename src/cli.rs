//! The `annals` command line.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::server::auth::{ApiKeys, Role};

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
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write the published contracts (GraphQL SDL, event JSON Schemas) from the code.
    Schema(SchemaArgs),
}

/// Options of `annals serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the event log (`<dir>/log`) and the read models (`<dir>/read`) live.
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The address to listen on. Without API keys only a loopback address is allowed.
    #[arg(long, env = "ANNALS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A file of API keys, one `role:sha256hex` line each (`annals keys new` prints them).
    #[arg(long, env = "ANNALS_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys inline, `role:sha256hex` entries separated by commas or newlines.
    #[arg(long, env = "ANNALS_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Sustained requests per second allowed per API key.
    #[arg(long, env = "ANNALS_RATE_LIMIT", default_value_t = 500)]
    pub rate_limit: u32,
    /// Requests an idle API key may send at once.
    #[arg(long, env = "ANNALS_RATE_BURST", default_value_t = 1000)]
    pub rate_burst: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "ANNALS_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest a request may take, in seconds.
    #[arg(long, env = "ANNALS_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
}

impl ServeArgs {
    /// The event log's directory.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    /// The configured API keys (file and inline together).
    pub fn load_keys(&self) -> Result<ApiKeys, String> {
        let mut keys = ApiKeys::none();
        if let Some(path) = &self.api_keys_file {
            let text = read(path)?;
            keys.add(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(inline) = &self.api_keys {
            keys.add(inline)
                .map_err(|e| format!("ANNALS_API_KEYS / --api-keys: {e}"))?;
        }
        Ok(keys)
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `annals keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random key (shown once) and the line that configures it.
    New {
        /// reader, writer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Options of `annals schema`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// The schema directory.
    #[arg(long, default_value = "schema")]
    pub out: PathBuf,
    /// Only check that the files are current; exit non-zero if not.
    #[arg(long)]
    pub check: bool,
}
