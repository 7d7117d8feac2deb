//! Data lifecycle: erasure of a subject's personal data, stream deletion, retention,
//! backup, restore and import.
//!
//! [`Lifecycle`] is the running node's side (the admin mutations and the retention job
//! call it); [`backup::restore`] and [`import`] build a new data directory offline. Every
//! operation keeps the hash chain verifiable: an erasure deletes a key (the sealed text the
//! chain covers stays), a deletion or retention leaves tombstones that carry their hashes,
//! and a restore or import checks the chain of what it wrote.
//!
//! Deletion, retention and backup need the node's own RocksDB log: on a node of a cluster
//! they are refused with [`LifecycleError::Unsupported`] (the replicas would differ).
//! Erasure works there too: the keys are the cluster's ([`crate::privacy::Privacy`]).

pub mod backup;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use annals_projections::ReadModelStore;
use annals_store::{
    DeleteMode, EventStore, ExpectedVersion, Metadata, NewEvent, ReadFilter, RetentionReport,
    RetentionRule, RocksEventStore, SharedStore, StoreError, StreamDeletion, StreamId, Timestamp,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;

use crate::audit::AuditError;
use crate::domain::Commerce;
use crate::privacy::{Privacy, PrivacyError, RocksKeyStore, SubjectRef};

/// The category of the erasure records: one stream per forgotten subject,
/// `erasure-{subject ref}`.
pub const ERASURE_CATEGORY: &str = "erasure";
/// The event type of an erasure record.
pub const SUBJECT_FORGOTTEN: &str = "SubjectForgotten";

/// A subject's personal data was erased: its key is deleted, so every value sealed with it
/// reads as `[erased]`. The record names the subject by its ref only, never by its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubjectForgotten {
    /// The subject's ref (32 hex digits), as it appears inside the sealed values.
    pub subject_ref: String,
    /// Why, as the operator gave it (a ticket number, "GDPR art. 17 request").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The node cannot do this (a node of a cluster; a target that already holds data).
    #[error("{0}")]
    Unsupported(String),
    /// No personal data is held for the subject (never had any, or already forgotten).
    #[error("no personal data is held for subject {0:?}")]
    UnknownSubject(String),
    /// The stream has no events (or does not exist).
    #[error("stream {0} has no events")]
    StreamNotFound(String),
    /// The input is invalid (an empty subject, a bad path, a bad retention rule).
    #[error("{0}")]
    Invalid(String),
    /// The backup is incomplete or damaged: refused, nothing restored.
    #[error("backup {path}: {reason}")]
    IncompleteBackup {
        /// The backup directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The event log refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key store failed.
    #[error(transparent)]
    Privacy(PrivacyError),
    /// Reading an export failed, or it is not a whole log.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The read models failed.
    #[error(transparent)]
    ReadModels(#[from] annals_projections::ProjectionError),
    /// A file of the backup or the data directory could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<PrivacyError> for LifecycleError {
    fn from(e: PrivacyError) -> Self {
        match e {
            PrivacyError::EmptySubject => LifecycleError::Invalid(e.to_string()),
            PrivacyError::Unsupported { reason } => LifecycleError::Unsupported(reason),
            e => LifecycleError::Privacy(e),
        }
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LifecycleError {
    let what = what.into();
    move |source| LifecycleError::Io { what, source }
}

/// What forgetting a subject did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Erasure {
    /// The subject's ref: what the erasure record and the sealed values name.
    pub subject_ref: SubjectRef,
    /// The position of the erasure record.
    pub position: u64,
    /// Backups this node made whose key copies were scrubbed too.
    pub backups_scrubbed: usize,
}

/// The retention rules and how often they run.
#[derive(Clone, Debug, Default)]
pub struct RetentionConfig {
    /// The rules, one per category.
    pub rules: Vec<RetentionRule>,
    /// How often the background job applies them (`None`: only on request).
    pub interval: Option<Duration>,
}

/// Parses a retention rule: `CATEGORY:max-age=30d,max-count=100` (either or both; ages in
/// `s`, `m`, `h` or `d`).
pub fn parse_retention_rule(text: &str) -> Result<RetentionRule, String> {
    let (category, settings) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected CATEGORY:max-age=AGE,max-count=N"))?;
    if category.is_empty() || category.contains('-') {
        return Err(format!(
            "{category:?} is not a category (no '-', not empty)"
        ));
    }
    let mut rule = RetentionRule {
        category: category.to_string(),
        max_age: None,
        max_count: None,
    };
    for setting in settings.split(',') {
        match setting.split_once('=') {
            Some(("max-age", age)) => rule.max_age = Some(parse_age(age)?),
            Some(("max-count", n)) => {
                let n: u64 = n
                    .parse()
                    .map_err(|_| format!("max-count {n:?} is not a number"))?;
                if n == 0 {
                    return Err("max-count must be at least 1".into());
                }
                rule.max_count = Some(n);
            }
            _ => return Err(format!("{setting:?}: expected max-age=AGE or max-count=N")),
        }
    }
    if rule.max_age.is_none() && rule.max_count.is_none() {
        return Err(format!("{text:?} sets neither max-age nor max-count"));
    }
    Ok(rule)
}

fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not an age like 90s, 15m, 12h or 30d");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(seconds))
}

/// The running node's lifecycle operations, built by the node from its parts.
pub struct Lifecycle {
    /// The node's own log, when it has one (not on a cluster node).
    pub(crate) log: Option<RocksEventStore>,
    /// The log, as the API writes to it (erasure records go through it).
    pub(crate) store: SharedStore,
    /// The domain, whose cached states a deletion drops.
    pub(crate) commerce: Arc<Commerce<SharedStore>>,
    /// The read models, backed up with the log.
    pub(crate) read: Arc<ReadModelStore>,
    /// The key store and the sealing.
    pub(crate) privacy: Privacy,
    /// The data directory (`None` in memory).
    pub(crate) data_dir: Option<PathBuf>,
    /// The retention rules in force.
    pub(crate) retention: Vec<RetentionRule>,
    /// One operation at a time: a backup never copies keys while a forget scrubs them.
    pub(crate) ops: AsyncMutex<()>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("data_dir", &self.data_dir)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    fn log(&self, what: &str) -> Result<&RocksEventStore, LifecycleError> {
        self.log.as_ref().ok_or_else(|| {
            LifecycleError::Unsupported(format!(
                "cannot {what} on this node: it needs the node's own log (not a cluster node)"
            ))
        })
    }

    /// How far a stream is deleted (0: not deleted, or no log of its own to say).
    pub fn deleted_through(&self, stream: &StreamId) -> Result<u64, LifecycleError> {
        match &self.log {
            Some(log) => Ok(log.deleted_through(stream)?),
            None => Ok(0),
        }
    }

    /// The personal-data sealing of this node.
    pub fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    /// The retention rules in force.
    pub fn retention_rules(&self) -> &[RetentionRule] {
        &self.retention
    }

    /// Forgets a subject: records the erasure (an event naming only the subject's ref),
    /// then deletes its key here and in every backup this node made, so every value sealed
    /// with it reads as `[erased]`, in the log, the read models and any restore.
    pub async fn forget(
        &self,
        subject: &str,
        reason: Option<String>,
        actor: Option<String>,
    ) -> Result<Erasure, LifecycleError> {
        let _op = self.ops.lock().await;
        let keys = self.privacy.keys().ok_or_else(|| {
            LifecycleError::Unsupported("personal data is not sealed on this node".into())
        })?;
        if subject.is_empty() {
            return Err(PrivacyError::EmptySubject.into());
        }
        let subject_ref = self
            .privacy
            .subject_ref(subject)?
            .ok_or_else(|| LifecycleError::UnknownSubject(subject.to_string()))?;
        let record = SubjectForgotten {
            subject_ref: subject_ref.to_hex(),
            reason,
        };
        let stream = StreamId::new(format!("{ERASURE_CATEGORY}-{}", subject_ref.to_hex()))?;
        let payload = serde_json::to_value(&record).map_err(|e| {
            LifecycleError::Invalid(format!("the erasure record does not encode: {e}"))
        })?;
        let event = NewEvent::json(SUBJECT_FORGOTTEN, &payload).with_metadata(Metadata {
            actor,
            ..Metadata::default()
        });
        // The record first: a crash before the key is gone leaves a record whose key the
        // next start deletes ([`Lifecycle::reconcile`]), never an erasure without a record.
        let appended = self
            .store
            .append(stream, ExpectedVersion::Any, vec![event])
            .await?;
        self.delete_key(keys, &subject_ref).await?;
        let backups_scrubbed = match &self.data_dir {
            Some(dir) => backup::scrub(dir, &HashSet::from([subject_ref]))?,
            None => 0,
        };
        tracing::info!(subject_ref = %subject_ref.to_hex(), backups_scrubbed, "subject forgotten");
        Ok(Erasure {
            subject_ref,
            position: appended.first_position.0,
            backups_scrubbed,
        })
    }

    /// Deletes a subject's key: from the cluster's shared keys first (every node follows),
    /// then here. Returns whether this node held it.
    async fn delete_key(
        &self,
        keys: &RocksKeyStore,
        subject: &SubjectRef,
    ) -> Result<bool, LifecycleError> {
        if let Some(shared) = self.privacy.shared()
            && let Some(hash) = keys.hash_of(subject)?
        {
            shared.remove(hash).await?;
        }
        Ok(keys.forget(subject)?)
    }

    /// Deletes the keys of every subject the log records as forgotten, here and in this
    /// node's backups: finishes an erasure cut short by a crash. Returns how many keys it
    /// deleted here.
    pub async fn reconcile(&self) -> Result<usize, LifecycleError> {
        let Some(keys) = self.privacy.keys() else {
            return Ok(0);
        };
        let mut forgotten = HashSet::new();
        let filter = ReadFilter::categories([ERASURE_CATEGORY]);
        // Only the records after those applied at an earlier start: a key store restored
        // from a backup starts over (its copy holds no checkpoint).
        let mut from = annals_store::Position(keys.checkpoint()?.max(1));
        let mut deleted = 0;
        loop {
            let page = self.store.read_all(from, 1024, &filter).await?;
            for event in &page.events {
                let record: Option<SubjectForgotten> = serde_json::from_slice(&event.payload).ok();
                if let Some(subject) = record.and_then(|r| SubjectRef::from_hex(&r.subject_ref)) {
                    deleted += usize::from(self.delete_key(keys, &subject).await?);
                    forgotten.insert(subject);
                }
            }
            from = page.next;
            if page.next > page.head {
                break;
            }
        }
        if let Some(dir) = &self.data_dir {
            let _op = self.ops.lock().await;
            backup::scrub(dir, &forgotten)?;
        }
        keys.set_checkpoint(from.0)?;
        Ok(deleted)
    }

    /// Deletes a stream (see [`DeleteMode`]); its cached state is dropped so the next
    /// command starts it anew.
    pub async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<StreamDeletion, LifecycleError> {
        let _op = self.ops.lock().await;
        let log = self.log("delete a stream")?;
        let deleted = log
            .delete_stream(stream, expected, mode)
            .await
            .map_err(|e| match e {
                StoreError::WrongExpectedVersion { actual: 0, .. } => {
                    LifecycleError::StreamNotFound(stream.to_string())
                }
                e => e.into(),
            })?;
        self.commerce.bus().evict(stream);
        Ok(deleted)
    }

    /// Applies the retention rules once.
    pub async fn apply_retention(&self) -> Result<RetentionReport, LifecycleError> {
        let _op = self.ops.lock().await;
        if self.retention.is_empty() {
            return Ok(RetentionReport::default());
        }
        let log = self.log("apply retention")?;
        Ok(log
            .apply_retention(self.retention.clone(), Timestamp::now())
            .await?)
    }

    /// Takes a backup into `to` (see [`backup`]).
    pub async fn backup(&self, to: &Path) -> Result<backup::BackupEntry, LifecycleError> {
        let _op = self.ops.lock().await;
        let log = self.log("take a backup")?;
        let data_dir = self.data_dir.as_deref().ok_or_else(|| {
            LifecycleError::Unsupported("an in-memory node has no data directory".into())
        })?;
        backup::take(data_dir, log, &self.read, &self.privacy, to).await
    }

    /// Runs the retention rules every `interval` until `stop` turns true.
    pub fn spawn_retention(
        self: &Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                match this.apply_retention().await {
                    Ok(report) if report.removed > 0 => {
                        tracing::info!(
                            removed = report.removed,
                            examined = report.examined,
                            "retention pass"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "retention pass failed"),
                }
            }
        })
    }
}

/// What an import built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// The head of the imported log.
    pub head: u64,
    /// The hash at the head.
    pub tip: String,
    /// Events that were tombstones in the export.
    pub removed: u64,
}

/// Builds a new data directory from an export (NDJSON, CSV or CloudEvents; a whole log from
/// position 1, as `annals export` writes with no filter): every record as it was, checked
/// against the chain as it is written. The read models are built by the node that opens
/// the directory. A refused import leaves no log behind.
pub async fn import(file: &Path, data_dir: &Path) -> Result<ImportReport, LifecycleError> {
    let log = data_dir.join("log");
    // The export as a whole first: its manifest (when it has one) says where it ends and
    // what its signature covers, so a file cut at a line boundary is refused, not
    // imported as a shorter log.
    crate::audit::verify::<RocksEventStore>(file, None, &crate::audit::VerifyOptions::default())
        .await?;
    if log.join("CURRENT").exists() {
        return Err(LifecycleError::Unsupported(format!(
            "{} already holds a log",
            data_dir.display()
        )));
    }
    let mut removed = 0u64;
    let mut refusal: Option<LifecycleError> = None;
    let records = crate::audit::read_export(file)?.map_while(|r| match r {
        Ok(event) => {
            removed += u64::from(event.removed);
            Some(Ok(event))
        }
        Err(e) => {
            refusal = Some(e.into());
            None
        }
    });
    let imported = RocksEventStore::import(&log, records);
    if let Some(refusal) = refusal {
        let _ = std::fs::remove_dir_all(&log);
        return Err(refusal);
    }
    let (head, tip) = imported.map_err(|e| match e {
        StoreError::Corruption { position } => LifecycleError::Invalid(format!(
            "the export is not a whole log: the record at position {position} does not continue the chain (a filtered or edited export?)"
        )),
        e => e.into(),
    })?;
    Ok(ImportReport {
        head: head.0,
        tip: annals_store::backup::hash_hex(&tip),
        removed,
    })
}
