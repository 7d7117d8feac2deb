//! Data lifecycle over GraphQL (admin): erasure, stream deletion, retention and backup.

use std::path::PathBuf;

use annals_store::{DeleteMode as StoreDeleteMode, ExpectedVersion, StreamId};
use async_graphql::{Context, Enum, Object, SimpleObject};

use super::error::ApiError;
use super::read_models::Amount;
use super::scalars::{Position, Version};
use super::{RoleGuard, api};
use crate::server::auth::{Principal, Role};

/// How `deleteStream` deletes.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeleteMode {
    /// The stream reads as deleted and can be written again, its versions continuing;
    /// its events stay in the log (and in `events` and exports).
    #[default]
    Soft,
    /// As soft, and its events become tombstones: their metadata and payloads leave the
    /// disk. Positions and hashes stay, so the chain still verifies.
    Hard,
}

/// What `forgetSubject` did.
#[derive(SimpleObject, Clone, Debug)]
pub struct Erasure {
    /// The subject's ref (32 hex digits): what the erasure record and the sealed values
    /// name. The subject id itself is not recorded.
    pub subject_ref: String,
    /// The position of the erasure record (`SubjectForgotten` on `erasure-{subjectRef}`).
    pub position: Position,
    /// Backup directories whose key copies were scrubbed too.
    pub backups_scrubbed: i32,
}

/// What `deleteStream` did.
#[derive(SimpleObject, Clone, Debug)]
pub struct StreamDeletion {
    /// The stream.
    pub stream_id: String,
    /// Its events up to this version read as deleted; the next append gets the next
    /// version.
    pub through_version: Version,
    /// Events that became tombstones (0 for a soft deletion).
    pub removed: Amount,
}

/// What one retention pass did.
#[derive(SimpleObject, Clone, Debug)]
pub struct RetentionPass {
    /// Events of a ruled category looked at.
    pub examined: Amount,
    /// Events that became tombstones.
    pub removed: Amount,
}

/// One backup.
#[derive(SimpleObject, Clone, Debug)]
pub struct Backup {
    /// Its number in the backup directory.
    pub id: i32,
    /// The backup directory (absolute, on the server).
    pub directory: String,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// The head it restores to.
    pub head: Position,
    /// The chain's hash at the head (64 hex digits).
    pub tip: String,
    /// Bytes the log's backup files take (files shared with earlier backups included).
    pub log_bytes: Amount,
    /// How long it took, in seconds.
    pub seconds: f64,
}

/// Data lifecycle mutations (admin).
#[derive(Default)]
pub struct LifecycleMutation;

#[Object]
impl LifecycleMutation {
    /// Erases a subject's personal data (for the reference domain, a customer): deletes its
    /// key here and in the key copies of this node's backups, so every value sealed with it
    /// reads as `"[erased]"` in queries, subscriptions and read models, and stays unreadable
    /// sealed text in exports and webhook bodies. Every record stays and the chain still
    /// verifies. The erasure is recorded as an event naming the subject's ref, not its id.
    /// `NOT_FOUND` when no personal data is held for the subject.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn forget_subject(
        &self,
        ctx: &Context<'_>,
        subject_id: String,
        reason: Option<String>,
    ) -> Result<Erasure, ApiError> {
        let actor = ctx.data_opt::<Principal>().map(|p| p.id.clone());
        let erasure = api(ctx)
            .lifecycle
            .forget(&subject_id, reason, actor)
            .await?;
        Ok(Erasure {
            subject_ref: erasure.subject_ref.to_hex(),
            position: Position(erasure.position),
            backups_scrubbed: i32::try_from(erasure.backups_scrubbed).unwrap_or(i32::MAX),
        })
    }

    /// Deletes a stream as it is now (`expectedVersion`, when given, must be its
    /// version). `NOT_FOUND` for a stream with no events.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn delete_stream(
        &self,
        ctx: &Context<'_>,
        stream_id: String,
        #[graphql(default)] mode: DeleteMode,
        expected_version: Option<Version>,
    ) -> Result<StreamDeletion, ApiError> {
        let stream = StreamId::new(stream_id)?;
        let expected =
            expected_version.map_or(ExpectedVersion::Any, |v| ExpectedVersion::Exact(v.0));
        let mode = match mode {
            DeleteMode::Soft => StoreDeleteMode::Soft,
            DeleteMode::Hard => StoreDeleteMode::Hard,
        };
        let deleted = api(ctx)
            .lifecycle
            .delete_stream(&stream, expected, mode)
            .await?;
        Ok(StreamDeletion {
            stream_id: deleted.stream_id.to_string(),
            through_version: Version(deleted.through_version),
            removed: Amount(deleted.removed),
        })
    }

    /// Applies the retention rules now (the background job also runs them on its
    /// interval).
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn apply_retention(&self, ctx: &Context<'_>) -> Result<RetentionPass, ApiError> {
        let report = api(ctx).lifecycle.apply_retention().await?;
        Ok(RetentionPass {
            examined: Amount(report.examined),
            removed: Amount(report.removed),
        })
    }

    /// Takes an online backup of the log, the read models and the key store into
    /// `directory` (a path on the server, outside the data directory), incremental over
    /// the backups already there.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn backup(&self, ctx: &Context<'_>, directory: String) -> Result<Backup, ApiError> {
        if directory.is_empty() {
            return Err(ApiError::bad_input("directory must not be empty"));
        }
        let dir = PathBuf::from(&directory);
        let entry = api(ctx).lifecycle.backup(&dir).await?;
        let directory = dir
            .canonicalize()
            .map_or(directory, |d| d.display().to_string());
        Ok(Backup {
            id: i32::try_from(entry.id).unwrap_or(i32::MAX),
            directory,
            created_at: entry.created_at,
            head: Position(entry.log.head.0),
            tip: annals_store::backup::hash_hex(&entry.log.tip),
            log_bytes: Amount(entry.log.size),
            seconds: entry.seconds,
        })
    }
}
