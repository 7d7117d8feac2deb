//! Online backups of a node and their restore.
//!
//! A backup directory holds any number of backups of one node, sharing files:
//!
//! ```text
//! B/manifest.json     the complete backups: id, time, head, chain tip, what each holds
//! B/log/              RocksDB BackupEngine of the event log (incremental: a file already
//! B/read/             held is not copied again), and of the read models
//! B/keys/<id>.json    the key store as it was (hex; subject ids only as keyed hashes)
//! B/files/<id>/       the data directory's own files (webhook.key)
//! ```
//!
//! A backup copies the read models first, then the log, then the keys, so the read models
//! are never ahead of the log and every key a backed-up event needs is in the backup. It is
//! listed in the manifest (written atomically) only once every part is on disk: a backup
//! cut short by a crash is not in the manifest, and restore refuses it.
//!
//! **Erasure reaches backups.** The node lists every backup directory it wrote to in
//! `<data-dir>/backups.json`; forgetting a subject removes its key from the key copies of
//! each (see [`scrub`]), so restoring a backup made before an erasure does not bring the
//! personal data back. A backup copied elsewhere is out of the node's reach: keep copies
//! where the node can scrub them, or re-run the erasures after restoring one (the erasure
//! records are in the log).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use annals_projections::ReadModelStore;
use annals_store::{BackupPoint, EventStore, Position, RocksEventStore};
use serde::{Deserialize, Serialize};

use super::{LifecycleError, io};
use crate::privacy::{KeyDump, Privacy, RocksKeyStore, SubjectRef};

const MANIFEST: &str = "manifest.json";
const REGISTRY: &str = "backups.json";
/// Files of a data directory that are not databases, copied with each backup.
const OWN_FILES: [&str; 1] = ["webhook.key"];

/// The manifest of a backup directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's format.
    pub format: u32,
    /// The complete backups, oldest first.
    pub backups: Vec<BackupEntry>,
}

/// One complete backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// The backup's number in its directory (from 1).
    pub id: u32,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// The log as backed up: its backup engine id, head, chain tip and size.
    pub log: BackupPoint,
    /// The read models' backup engine id.
    pub read_backup: u32,
    /// How many subject keys the key copy holds (`None`: sealing was off).
    pub keys: Option<usize>,
    /// The data directory's own files that were copied.
    pub files: Vec<String>,
    /// How long the backup took, in seconds.
    pub seconds: f64,
    /// The Annals version that took it.
    pub annals_version: String,
}

fn read_manifest(dir: &Path) -> Result<Manifest, LifecycleError> {
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LifecycleError::IncompleteBackup {
            path: dir.to_path_buf(),
            reason: format!("{MANIFEST} is damaged: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, synced, renamed over it, and the
/// directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LifecycleError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // The manifest and key dumps are plain structs of strings and numbers.
    serde_json::to_vec_pretty(value).expect("plain data serialises")
}

/// Takes one backup of the node on `data_dir` into `to`, while it runs.
pub(super) async fn take(
    data_dir: &Path,
    log: &RocksEventStore,
    read: &ReadModelStore,
    privacy: &Privacy,
    to: &Path,
) -> Result<BackupEntry, LifecycleError> {
    let started = Instant::now();
    std::fs::create_dir_all(to).map_err(io(format!("creating {}", to.display())))?;
    let to = to
        .canonicalize()
        .map_err(io(format!("resolving {}", to.display())))?;
    let own = data_dir
        .canonicalize()
        .map_err(io(format!("resolving {}", data_dir.display())))?;
    if to.starts_with(&own) {
        return Err(LifecycleError::Invalid(format!(
            "{} is inside the data directory: a backup must live elsewhere",
            to.display()
        )));
    }
    let mut manifest = read_manifest(&to)?;
    let id = manifest.backups.iter().map(|b| b.id).max().unwrap_or(0) + 1;
    // Read models first, then the log: a read model is never ahead of the log it restores
    // beside.
    let read_backup = read.backup(&to.join("read"))?;
    let point = log.backup(&to.join("log")).await?;
    // Keys last: every key an event of the backed-up log needs exists by now.
    let keys = match privacy.keys() {
        Some(keys) => {
            let dump = keys.dump()?;
            let dir = to.join("keys");
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            write_atomic(&dir.join(format!("{id}.json")), &to_json(&dump))?;
            Some(dump.keys.len())
        }
        None => None,
    };
    let files_dir = to.join("files").join(id.to_string());
    std::fs::create_dir_all(&files_dir).map_err(io(format!("creating {}", files_dir.display())))?;
    let mut files = Vec::new();
    for name in OWN_FILES {
        let source = data_dir.join(name);
        if source.is_file() {
            let bytes =
                std::fs::read(&source).map_err(io(format!("reading {}", source.display())))?;
            write_atomic(&files_dir.join(name), &bytes)?;
            files.push(name.to_string());
        }
    }
    let entry = BackupEntry {
        id,
        created_at: crate::time::format(annals_store::Timestamp::now().as_micros())
            .unwrap_or_default(),
        log: point,
        read_backup,
        keys,
        files,
        seconds: started.elapsed().as_secs_f64(),
        annals_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    manifest.format = 1;
    manifest.backups.push(entry.clone());
    // The manifest last: only now is the backup complete.
    write_atomic(&to.join(MANIFEST), &to_json(&manifest))?;
    register(data_dir, &to)?;
    tracing::info!(backup = %to.display(), id, head = entry.log.head.0, seconds = entry.seconds, "backup taken");
    Ok(entry)
}

/// The backup directories a node has written to.
fn registered(data_dir: &Path) -> Result<Vec<PathBuf>, LifecycleError> {
    let path = data_dir.join(REGISTRY);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| LifecycleError::Invalid(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

fn register(data_dir: &Path, backup: &Path) -> Result<(), LifecycleError> {
    let mut dirs = registered(data_dir)?;
    if !dirs.iter().any(|d| d == backup) {
        dirs.push(backup.to_path_buf());
        write_atomic(&data_dir.join(REGISTRY), &to_json(&dirs))?;
    }
    Ok(())
}

/// Removes the keys of `subjects` from the key copies of every backup the node on
/// `data_dir` wrote; returns how many backup directories held one. A directory that is
/// gone is skipped (moved away, or deleted by the operator). Idempotent.
pub fn scrub(data_dir: &Path, subjects: &HashSet<SubjectRef>) -> Result<usize, LifecycleError> {
    if subjects.is_empty() {
        return Ok(0);
    }
    let wanted: HashSet<String> = subjects.iter().map(SubjectRef::to_hex).collect();
    let mut scrubbed = 0;
    for dir in registered(data_dir)? {
        let Ok(entries) = std::fs::read_dir(dir.join("keys")) else {
            continue;
        };
        let mut held = false;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
            let Ok(mut dump) = serde_json::from_slice::<KeyDump>(&bytes) else {
                continue;
            };
            let before = dump.keys.len();
            dump.keys.retain(|k| !wanted.contains(&k.subject_ref));
            if dump.keys.len() != before {
                write_atomic(&path, &to_json(&dump))?;
                held = true;
            }
        }
        scrubbed += usize::from(held);
    }
    Ok(scrubbed)
}

/// The backups in a backup directory, oldest first.
pub fn list(dir: &Path) -> Result<Vec<BackupEntry>, LifecycleError> {
    Ok(read_manifest(dir)?.backups)
}

/// What a restore built.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup: BackupEntry,
    /// Events whose chain was verified (the whole log).
    pub verified: u64,
}

/// Restores backup `id` (the latest when `None`) of `dir` into the new data directory
/// `data_dir`: the log (cut to the backup's head, its tip checked, its whole chain
/// verified), the read models (they catch up when the node starts), the keys and the data
/// directory's own files. Nothing is restored from a backup that is incomplete or fails
/// a check.
pub async fn restore(
    dir: &Path,
    id: Option<u32>,
    data_dir: &Path,
) -> Result<RestoreReport, LifecycleError> {
    let incomplete = |reason: String| LifecycleError::IncompleteBackup {
        path: dir.to_path_buf(),
        reason,
    };
    if !dir.join(MANIFEST).is_file() {
        return Err(incomplete(
            "no complete backup here (no manifest: never written, or the backup was cut short)"
                .into(),
        ));
    }
    let manifest = read_manifest(dir)?;
    let entry = match id {
        Some(id) => manifest.backups.iter().find(|b| b.id == id),
        None => manifest.backups.last(),
    }
    .cloned()
    .ok_or_else(|| {
        incomplete(format!(
            "no complete backup {}",
            id.map_or("at all".into(), |i| i.to_string())
        ))
    })?;
    for part in ["log", "read", "keys"] {
        if data_dir.join(part).exists() {
            return Err(LifecycleError::Unsupported(format!(
                "{} already holds {part}/: restore into a new data directory",
                data_dir.display()
            )));
        }
    }
    let keys = match entry.keys {
        Some(_) => {
            let path = dir.join("keys").join(format!("{}.json", entry.id));
            let bytes = std::fs::read(&path)
                .map_err(|e| incomplete(format!("its key copy {}: {e}", path.display())))?;
            Some(
                serde_json::from_slice::<KeyDump>(&bytes)
                    .map_err(|e| incomplete(format!("its key copy is damaged: {e}")))?,
            )
        }
        None => None,
    };
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let result = restore_parts(dir, &entry, keys.as_ref(), data_dir).await;
    if result.is_err() {
        for part in ["log", "read", "keys"] {
            let _ = std::fs::remove_dir_all(data_dir.join(part));
        }
    }
    let verified = result?;
    // The restored node's erasures reach the backups it came from.
    if let Ok(source) = dir.canonicalize() {
        register(data_dir, &source)?;
    }
    Ok(RestoreReport {
        backup: entry,
        verified,
    })
}

async fn restore_parts(
    dir: &Path,
    entry: &BackupEntry,
    keys: Option<&KeyDump>,
    data_dir: &Path,
) -> Result<u64, LifecycleError> {
    let incomplete = |reason: String| LifecycleError::IncompleteBackup {
        path: dir.to_path_buf(),
        reason,
    };
    let log_dir = data_dir.join("log");
    RocksEventStore::restore_backup(&dir.join("log"), &entry.log, &log_dir)
        .map_err(|e| incomplete(format!("the log does not restore: {e}")))?;
    let log = RocksEventStore::open_read_only(&log_dir)?;
    let report = log.verify_chain(Position::FIRST, entry.log.head).await?;
    log.close();
    if let Some((position, fault)) = report.first_fault {
        return Err(incomplete(format!(
            "the restored chain breaks at position {}: {fault}",
            position.0
        )));
    }
    annals_store::backup::restore_db(&dir.join("read"), entry.read_backup, &data_dir.join("read"))
        .map_err(|e| incomplete(format!("the read models do not restore: {e}")))?;
    if let Some(dump) = keys {
        RocksKeyStore::restore(&data_dir.join("keys"), dump)?;
    }
    let files_dir = dir.join("files").join(entry.id.to_string());
    for name in &entry.files {
        let source = files_dir.join(name);
        let bytes =
            std::fs::read(&source).map_err(|e| incomplete(format!("its copy of {name}: {e}")))?;
        write_atomic(&data_dir.join(name), &bytes)?;
    }
    Ok(report.checked)
}
