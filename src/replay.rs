//! `annals replay`: rebuilds read models offline, blue/green like the live rebuild, with a
//! progress bar on a terminal and plain progress lines otherwise.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use annals_projections::{ProjectionError, ProjectionRuntime, RuntimeOptions};
use annals_store::StoreError;

use crate::node::{Node, NodeConfig, NodeError};
use crate::read_models;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A server (or another tool) holds the data directory.
    #[error(
        "{0} is in use by another process (is `annals serve` running on it?); stop it first, or rebuild live with the rebuildProjection mutation"
    )]
    InUse(String),
    /// The projection name is not one of the domain's.
    #[error("unknown projection {name:?}; known: {known}")]
    UnknownProjection {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
    /// The event log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read models failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The node did not start.
    #[error(transparent)]
    Node(NodeError),
}

/// What one replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Projections rebuilt, with the checkpoint each took over at.
    pub rebuilt: Vec<(String, u64)>,
}

/// Rebuilds `names` (every domain projection when empty) from position 1 up to the head.
pub async fn replay(data_dir: &Path, names: &[String]) -> Result<ReplayReport, ReplayError> {
    let known: Vec<String> = read_models::projections()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    for name in names {
        if !known.contains(name) {
            return Err(ReplayError::UnknownProjection {
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }
    let selected: Vec<String> = if names.is_empty() {
        known
    } else {
        names.to_vec()
    };
    let mut config = NodeConfig::on_disk(data_dir);
    // An offline replay rebuilds read models; it must not send the checkout's commands
    // nor deliver webhooks.
    config.checkout = None;
    config.webhooks.active_when = Some(annals_projections::process::ActiveWhen(
        std::sync::Arc::new(|| false),
    ));
    // Nothing reads the old generation during an offline replay: drop it at once.
    config.projections = RuntimeOptions {
        drop_delay: Duration::ZERO,
        ..RuntimeOptions::default()
    };
    let node = Node::start(config).map_err(|e| match e.in_use() {
        Some(path) => ReplayError::InUse(path.display().to_string()),
        None => ReplayError::Node(e),
    })?;
    let runtime = node.projections().clone();
    let mut report = ReplayReport {
        rebuilt: Vec::new(),
    };
    let result = async {
        for name in &selected {
            runtime.rebuild(name)?;
            let checkpoint = follow(&runtime, name).await?;
            report.rebuilt.push((name.clone(), checkpoint));
        }
        Ok::<_, ReplayError>(())
    }
    .await;
    node.shutdown().await;
    result.map(|()| report)
}

/// Shows the rebuild's progress until it took over; returns the checkpoint it took over at.
async fn follow(runtime: &ProjectionRuntime, name: &str) -> Result<u64, ReplayError> {
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {pos}/{len} events {per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar
    });
    let mut last_line = Instant::now();
    let started = Instant::now();
    loop {
        let status = runtime.status_of(name)?;
        if status.state == annals_projections::ProjectionState::Failed {
            return Err(ProjectionError::InvalidState {
                name: name.to_string(),
                reason: status.last_error.unwrap_or_else(|| "failed".into()),
            }
            .into());
        }
        if !runtime.is_rebuilding(name)? {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            eprintln!(
                "{name}: rebuilt up to position {} in {:.1}s (generation {})",
                status.checkpoint.0,
                started.elapsed().as_secs_f64(),
                status.generation
            );
            return Ok(status.checkpoint.0);
        }
        if let Some(progress) = &status.rebuild {
            if let Some(bar) = &bar {
                bar.set_length(progress.head.0);
                bar.set_position(progress.checkpoint.0);
            } else if last_line.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "{name}: {}/{} events ({:.0} events/s)",
                    progress.checkpoint.0, progress.head.0, progress.events_per_second
                );
                last_line = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
