//! `annals bench`: throughput and latency of the append path, the command path, the
//! projection catch-up and the GraphQL API over HTTP, with the conditions they were
//! measured under and, for appends, a raw-RocksDB baseline measured in the same invocation.
//! It is part of the `annals` binary, not of the library: nothing else runs these reports.
//!
//! Every figure names its conditions (durability, sizes, writers, CPU count, RocksDB
//! version), because a number without them cannot be compared, and the baseline runs
//! alternate with Annals' runs, because these machines are shared and absolute numbers
//! drift within minutes.

mod append;
mod catchup;
mod command;
mod graphql;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use annals::cli::{BenchGraphqlArgs, LimitArgs};
use annals_store::ROCKSDB_VERSION;
use serde::Serialize;

pub use append::{AppendBench, run_append};
pub use catchup::{CatchupBench, run_catchup};
pub use command::{CommandBench, run_command};
pub use graphql::{GraphqlBench, run_graphql};
use stats::{Latency, RunFigures};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options make no sense (zero writers, no limit, ...).
    #[error("invalid benchmark options: {0}")]
    Invalid(String),
    /// The data directory is held by another process (a server, say).
    #[error("{0} is in use by another process; benchmarks never touch a data directory in use")]
    InUse(String),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] annals_store::StoreError),
    /// A command of the workload was refused or kept conflicting.
    #[error(transparent)]
    Command(#[from] annals_store::CommandError<annals::domain::CommerceError>),
    /// Raw RocksDB failed under the baseline.
    #[error("raw RocksDB baseline failed: {0}")]
    Baseline(annals_store::StoreError),
    /// The read models failed.
    #[error(transparent)]
    Projection(#[from] annals_projections::ProjectionError),
    /// The file system failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The run could not do what it measures: its setup was refused, or most of its
    /// requests failed (so its figures would describe errors, not the system).
    #[error("benchmark failed: {0}")]
    Failed(String),
}

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// After this long.
    Duration(Duration),
    /// After this many events.
    Events(u64),
    /// After this many requests (`annals bench graphql`).
    Requests(u64),
}

impl Limit {
    /// A count if one is given, else a duration in seconds, else 10 seconds.
    fn asked(count: Option<u64>, seconds: Option<f64>, counted: fn(u64) -> Self) -> Self {
        match (count, seconds) {
            (Some(count), _) => counted(count),
            (None, Some(secs)) => Self::Duration(Duration::from_secs_f64(secs.max(0.0))),
            (None, None) => Self::Duration(Duration::from_secs(10)),
        }
    }
}

impl From<&LimitArgs> for Limit {
    fn from(args: &LimitArgs) -> Self {
        Self::asked(args.events, args.duration, Self::Events)
    }
}

impl From<&BenchGraphqlArgs> for Limit {
    fn from(args: &BenchGraphqlArgs) -> Self {
        Self::asked(args.requests, args.duration, Self::Requests)
    }
}

/// What the machine and build were.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// The RocksDB version compiled in.
    pub rocksdb_version: &'static str,
    /// The Annals version.
    pub annals_version: &'static str,
    /// Whether this binary was built with optimisations.
    pub optimized: bool,
}

impl Machine {
    /// This machine and build.
    pub fn current() -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rocksdb_version: ROCKSDB_VERSION,
            annals_version: env!("CARGO_PKG_VERSION"),
            optimized: !cfg!(debug_assertions),
        }
    }
}

/// A data directory for a run: the one given (which must not be in use), or a fresh
/// temporary one removed afterwards.
pub(crate) struct BenchDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl BenchDir {
    pub(crate) fn new(given: Option<&Path>) -> Result<Self, BenchError> {
        match given {
            Some(path) => Ok(Self {
                path: path.to_path_buf(),
                _temp: None,
            }),
            None => {
                let temp = tempfile::Builder::new().prefix("annals-bench-").tempdir()?;
                Ok(Self {
                    path: temp.path().to_path_buf(),
                    _temp: Some(temp),
                })
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Prints a progress line on a terminal (nothing otherwise, to keep logs clean).
pub(crate) fn progress(line: &str) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
}

/// Ends a progress line.
pub(crate) fn progress_done() {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// Formats a number with thousands separators for the tables.
pub fn thousands(value: f64) -> String {
    let n = value.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn figures_rows(out: &mut String, name: &str, f: &RunFigures) {
    out.push_str(&format!(
        "{name:<14} {:>12} {:>12}",
        thousands(f.events_per_second),
        thousands(f.operations_per_second),
    ));
    f.latency.push_cells(out);
}

fn table_header(out: &mut String) {
    out.push_str(&format!("{:<14} {:>12} {:>12}", "", "events/s", "ops/s"));
    Latency::push_headings(out);
}

fn machine_line(m: &Machine) -> String {
    format!(
        "machine: {} CPUs, RocksDB {}, annals {}{}",
        m.cpus,
        m.rocksdb_version,
        m.annals_version,
        if m.optimized {
            ""
        } else {
            " (debug build: figures are not representative)"
        }
    )
}

impl append::AppendReport {
    /// The report as a readable table.
    pub fn table(&self) -> String {
        let c = &self.conditions;
        let mut out = format!(
            "append: {} writers × {} events/append, {} B payloads, {}, {}, {} round(s) per side\n{}\n",
            c.writers,
            c.events_per_append,
            c.payload_bytes,
            c.durability,
            c.shared_streams
                .map_or("own stream per writer".to_string(), |s| format!(
                    "{s} shared streams"
                )),
            c.rounds,
            machine_line(&c.machine)
        );
        table_header(&mut out);
        if let Some(embedded) = &self.embedded {
            figures_rows(&mut out, "cluster", &self.annals);
            figures_rows(&mut out, "embedded", embedded);
        } else {
            figures_rows(&mut out, "annals", &self.annals);
        }
        if let Some(b) = &self.baseline {
            figures_rows(&mut out, "raw rocksdb", b);
        }
        out.push_str(&format!(
            "mean group commit: {:.1} events; conflicts retried: {}; first second {} events/s, last second {} events/s; store head {}\n",
            self.mean_group_commit_events,
            self.conflicts,
            thousands(self.annals.first_second_events_per_second),
            thousands(self.annals.last_second_events_per_second),
            self.store_head
        ));
        let w = &self.writer;
        out.push_str(&format!(
            "writer: {} syncs, {:.1} events/sync, {:.0} µs/sync; {:.2} µs/event staging, {:.2} µs/event writing\n",
            w.syncs,
            w.events_per_sync,
            w.mean_sync_micros,
            w.stage_micros_per_event,
            w.write_micros_per_event
        ));
        if let Some(r) = self.ratio {
            out.push_str(&format!("ratio annals / raw RocksDB: {r:.2}\n"));
        }
        if let Some(r) = self.embedded_ratio {
            out.push_str(&format!(
                "events per JetStream message: {:.1}; ratio cluster / embedded: {r:.2}\n",
                self.mean_group_commit_events
            ));
        }
        out
    }
}

impl command::CommandReport {
    /// The report as a readable table.
    pub fn table(&self) -> String {
        let what = if self.operation == "checkout" {
            "checkout saga (placed to confirmed: 4 commands, 6 events)"
        } else {
            "placeOrder: order + stock reservation in one commit"
        };
        let mut out = format!(
            "command ({what}): {} clients, {}\n{}\n",
            self.writers,
            self.durability,
            machine_line(&self.machine)
        );
        table_header(&mut out);
        figures_rows(&mut out, "annals", &self.annals);
        out.push_str(&format!("store head {}\n", self.store_head));
        out
    }
}

impl catchup::CatchupReport {
    /// The report as a readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "catchup: projections {} over {} events (log built in {:.1}s)\n{}\ncaught up in {:.2}s: {} events/s\n",
            self.projections.join(", "),
            self.store_head,
            self.log_build_seconds,
            machine_line(&self.machine),
            self.annals.seconds,
            thousands(self.annals.events_per_second)
        );
        for p in &self.per_projection {
            out.push_str(&format!(
                "  {} reached the head after {:.2}s\n",
                p.name, p.seconds
            ));
        }
        if let Some(rebuild) = &self.rebuild {
            out.push_str(&format!(
                "rebuilt blue/green (live runtime) in {:.2}s: {} events/s\n",
                rebuild.seconds,
                thousands(rebuild.events_per_second)
            ));
        }
        out
    }
}
