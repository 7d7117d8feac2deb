//! # Audit trail: export the event log and prove that nothing in it was changed
//!
//! - [`export()`] / [`Exporter`] stream the log (or a filtered part of it) as NDJSON, CSV
//!   or CloudEvents 1.0 JSON lines, page by page with constant memory, capped at the head
//!   read when the export starts (positions are gapless and records immutable, so
//!   everything up to that head is a consistent prefix of the log even while appends go
//!   on). [`export_stream`] is the same engine as a `Stream` of byte chunks, ready to be
//!   an HTTP response body ([`ExportQuery`] parses its query string);
//!   [`export_blocking`] runs it on two threads (reading beside encoding) for the CLI.
//! - Every export ends with a [`Manifest`] (a final `{"manifest": …}` line in NDJSON, a
//!   sidecar `FILE.manifest.json` otherwise): the filters, the count, the first and last
//!   position, the hash of the last event, the export time and the tool version,
//!   optionally signed with ed25519 ([`manifest`] documents the signed bytes).
//! - [`verify()`] re-reads an export and reports `OK` or the **first** offending position
//!   and what is wrong with it ([`Fault`]): each event's hash is recomputed with the
//!   store's own canonical encoding (`annals_store::codec::recompute_hash`), contiguous
//!   exports are checked link by link, and with a store every event is compared with the
//!   log and every event the filters select must be present.
//!
//! The exported fields and their encodings are documented in [`mod@format`].

pub mod cli;
pub mod export;
pub mod format;
pub mod manifest;
pub mod verify;

pub use export::{
    ExportFilters, ExportOptions, ExportQuery, Exporter, Format, export, export_blocking,
    export_stream,
};
pub use manifest::{
    Manifest, ManifestSignature, generate_signing_key, parse_public_key, parse_signing_key,
};
pub use verify::{
    Fault, FaultKind, VerifyOptions, VerifyReport, read_export, sidecar_path, verify,
};

use annals_store::StoreError;

/// Everything that can go wrong while exporting or verifying.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The filters or options make no sense (an empty range, an unknown format).
    #[error("invalid export options: {0}")]
    InvalidOptions(String),

    /// A key given for signing or verification is not a valid ed25519 key.
    #[error("invalid key: {0}")]
    InvalidKey(String),

    /// The event store failed while reading.
    #[error("event store: {0}")]
    Store(#[from] StoreError),

    /// Reading the export or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The export file is not an Annals export this build can read (unknown layout, no
    /// events and no manifest).
    #[error("not an Annals export: {0}")]
    NotAnExport(String),

    /// Verification found tampering or damage: the first fault, with its position.
    #[error("{0}")]
    Tampered(Fault),
}

impl AuditError {
    /// The process exit code the CLI uses: 1 when verification found a fault, 2 for bad
    /// input (like clap's usage errors), 3 for I/O and store failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            AuditError::Tampered(_) => 1,
            AuditError::InvalidOptions(_)
            | AuditError::InvalidKey(_)
            | AuditError::NotAnExport(_) => 2,
            AuditError::Store(_) | AuditError::Io { .. } => 3,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AuditError::Io {
            what: what.into(),
            source,
        }
    }
}
