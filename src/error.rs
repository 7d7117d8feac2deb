//! The one table of error codes.
//!
//! [`ErrorCode`] is the only list of the codes Annals shows anyone: the GraphQL API's
//! `extensions.code`, the `code` label of `annals_errors_total` and the `[CODE]` the
//! command line prints all come from it. Every error type of the workspace gets its code
//! here, through [`HasCode`], and nowhere else: the engine crates' errors carry no codes
//! of their own, so the same failure has the same code wherever it comes from (a reused
//! event id is `IDEMPOTENCY_CONFLICT` from a raw append and from a command, a full disk is
//! `UNAVAILABLE` from the log and from the read models).
//!
//! Some codes are for operators only ([`ErrorCode::is_internal`]: corruption, a data
//! directory in use, ...). The CLI prints them; the API shows them as `INTERNAL` and logs
//! the detail.

use annals_projections::ProjectionError;
use annals_store::{CommandError, StoreError};

use crate::audit::{AuditError, FaultKind};
use crate::domain::CommerceError;
use crate::node::NodeError;
use crate::read_models::QueryError;
use crate::replay::ReplayError;

/// Every code a client, a metric or an operator can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed: not JSON, a GraphQL syntax or validation error, an
    /// argument out of range, an invalid stream id, event type or projection name.
    BadUserInput,
    /// The thing asked for does not exist.
    NotFound,
    /// A stream was not at the version the caller expected (`expected`, `actual`).
    WrongExpectedVersion,
    /// A command kept losing races for its streams; retrying later may succeed.
    Conflict,
    /// An event id is already in the log as another event: a caller bug, not a race, so
    /// a retry gets the same answer.
    IdempotencyConflict,
    /// Domain: not enough stock for a reservation.
    InsufficientStock,
    /// The state of an aggregate or a projection forbids the operation.
    InvalidState,
    /// Domain: an order line names an unregistered product.
    UnknownProduct,
    /// Domain: the command breaks an input rule.
    ValidationError,
    /// No API key, or one the server does not know.
    Unauthenticated,
    /// The key's role does not allow the operation.
    Forbidden,
    /// The key sent too many requests (or holds too many subscriptions).
    RateLimited,
    /// The body or an event payload is over its size limit.
    PayloadTooLarge,
    /// The query is nested deeper or is more complex than the server allows.
    QueryTooComplex,
    /// An automatic persisted query's hash the server does not know (yet): send the
    /// query's text with the hash once.
    PersistedQueryNotFound,
    /// A read model did not reach the requested position in time.
    StaleReadTimeout,
    /// The store cannot do the operation right now: its disk is full or failing, it is
    /// closed or shutting down, or it was opened read-only. Nothing was written.
    Unavailable,
    /// The operation is not available here: a lifecycle operation (deletion, retention,
    /// erasure, backup) on a node of a cluster, a restore or import over a data directory
    /// that already holds a log.
    Unsupported,
    /// A backup is incomplete or damaged (a backup cut short by a crash has no manifest
    /// entry; a file that fails its checksum): it is refused, never half restored.
    IncompleteBackup,
    /// A stored record or read-model value is damaged.
    Corruption,
    /// A stored event does not decode into its type (unknown type, failing upcaster).
    Decode,
    /// The data directory was written by a newer Annals.
    UnsupportedFormat,
    /// The data directory is in use by another process.
    Locked,
    /// Reading or writing a file outside the store failed (an export, a key file).
    Io,
    /// A signing or verification key is not a valid ed25519 key.
    InvalidKey,
    /// The file is not an Annals export.
    NotAnExport,
    /// Audit: an event's contents do not match its hash.
    ModifiedEvent,
    /// Audit: an event that belongs in the export is missing.
    DeletedEvent,
    /// Audit: the file holds an event that is not the log's.
    InsertedEvent,
    /// Audit: events are out of position order.
    ReorderedEvents,
    /// Audit: the file ends early.
    TruncatedFile,
    /// Audit: the manifest does not describe the file, or is missing.
    ManifestMismatch,
    /// Audit: the manifest's signature is missing, wrong or by another key.
    BadSignature,
    /// Audit: a line in the middle of the file is not an exported event.
    MalformedLine,
    /// Something failed inside the server; details are in its log, not in the response.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the table.
    pub const ALL: [ErrorCode; 35] = [
        ErrorCode::BadUserInput,
        ErrorCode::NotFound,
        ErrorCode::WrongExpectedVersion,
        ErrorCode::Conflict,
        ErrorCode::IdempotencyConflict,
        ErrorCode::InsufficientStock,
        ErrorCode::InvalidState,
        ErrorCode::UnknownProduct,
        ErrorCode::ValidationError,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::PayloadTooLarge,
        ErrorCode::QueryTooComplex,
        ErrorCode::PersistedQueryNotFound,
        ErrorCode::StaleReadTimeout,
        ErrorCode::Unavailable,
        ErrorCode::Unsupported,
        ErrorCode::IncompleteBackup,
        ErrorCode::Corruption,
        ErrorCode::Decode,
        ErrorCode::UnsupportedFormat,
        ErrorCode::Locked,
        ErrorCode::Io,
        ErrorCode::InvalidKey,
        ErrorCode::NotAnExport,
        ErrorCode::ModifiedEvent,
        ErrorCode::DeletedEvent,
        ErrorCode::InsertedEvent,
        ErrorCode::ReorderedEvents,
        ErrorCode::TruncatedFile,
        ErrorCode::ManifestMismatch,
        ErrorCode::BadSignature,
        ErrorCode::MalformedLine,
        ErrorCode::Internal,
    ];

    /// The code as it is shown (`SCREAMING_SNAKE_CASE`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::WrongExpectedVersion => "WRONG_EXPECTED_VERSION",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::InsufficientStock => "INSUFFICIENT_STOCK",
            ErrorCode::InvalidState => "INVALID_STATE",
            ErrorCode::UnknownProduct => "UNKNOWN_PRODUCT",
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::QueryTooComplex => "QUERY_TOO_COMPLEX",
            ErrorCode::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            ErrorCode::StaleReadTimeout => "STALE_READ_TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::IncompleteBackup => "INCOMPLETE_BACKUP",
            ErrorCode::Corruption => "CORRUPTION",
            ErrorCode::Decode => "DECODE",
            ErrorCode::UnsupportedFormat => "UNSUPPORTED_FORMAT",
            ErrorCode::Locked => "LOCKED",
            ErrorCode::Io => "IO",
            ErrorCode::InvalidKey => "INVALID_KEY",
            ErrorCode::NotAnExport => "NOT_AN_EXPORT",
            ErrorCode::ModifiedEvent => "MODIFIED_EVENT",
            ErrorCode::DeletedEvent => "DELETED_EVENT",
            ErrorCode::InsertedEvent => "INSERTED_EVENT",
            ErrorCode::ReorderedEvents => "REORDERED_EVENTS",
            ErrorCode::TruncatedFile => "TRUNCATED_FILE",
            ErrorCode::ManifestMismatch => "MANIFEST_MISMATCH",
            ErrorCode::BadSignature => "BAD_SIGNATURE",
            ErrorCode::MalformedLine => "MALFORMED_LINE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Whether the code is for operators only: the API answers `INTERNAL` in its place
    /// and logs the detail, because a client can do nothing about it and must not learn
    /// the server's internals.
    pub fn is_internal(self) -> bool {
        matches!(
            self,
            ErrorCode::Corruption
                | ErrorCode::Decode
                | ErrorCode::UnsupportedFormat
                | ErrorCode::Locked
                | ErrorCode::Io
                | ErrorCode::Internal
        )
    }

    /// The code an API client sees for this one.
    pub fn for_client(self) -> ErrorCode {
        if self.is_internal() {
            ErrorCode::Internal
        } else {
            self
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error that has a code in the table.
pub trait HasCode {
    /// The error's code.
    fn code(&self) -> ErrorCode;
}

impl HasCode for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::WrongExpectedVersion { .. } => ErrorCode::WrongExpectedVersion,
            StoreError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
            StoreError::InvalidStreamId { .. }
            | StoreError::InvalidEventType { .. }
            | StoreError::TooManyEvents { .. }
            | StoreError::EmptyAppend
            | StoreError::DuplicateStream { .. } => ErrorCode::BadUserInput,
            StoreError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            StoreError::Corruption { .. } | StoreError::ReplicaDiverged { .. } => {
                ErrorCode::Corruption
            }
            StoreError::Decode { .. } => ErrorCode::Decode,
            StoreError::UnsupportedFormat { .. } => ErrorCode::UnsupportedFormat,
            StoreError::Locked { .. } => ErrorCode::Locked,
            StoreError::Storage(_)
            | StoreError::Io { .. }
            | StoreError::Closed
            | StoreError::NotWriter
            | StoreError::Unavailable { .. }
            | StoreError::ReadOnly { .. } => ErrorCode::Unavailable,
            StoreError::Unsupported { .. } => ErrorCode::Unsupported,
            StoreError::KeyStore { .. } => ErrorCode::Corruption,
            // A variant added to the store later is an internal failure until it is
            // given its own line here.
            _ => ErrorCode::Internal,
        }
    }
}

impl<E: HasCode> HasCode for CommandError<E> {
    fn code(&self) -> ErrorCode {
        match self {
            CommandError::Rejected(e) => e.code(),
            CommandError::Conflict { .. } => ErrorCode::Conflict,
            CommandError::Store(e) => e.code(),
            _ => ErrorCode::Internal,
        }
    }
}

impl HasCode for ProjectionError {
    fn code(&self) -> ErrorCode {
        match self {
            ProjectionError::UnknownProjection { .. } => ErrorCode::NotFound,
            ProjectionError::InvalidName { .. } | ProjectionError::DuplicateProjection { .. } => {
                ErrorCode::BadUserInput
            }
            ProjectionError::StaleRead { .. } => ErrorCode::StaleReadTimeout,
            ProjectionError::InvalidState { .. } => ErrorCode::InvalidState,
            ProjectionError::Corruption { .. } | ProjectionError::Json(_) => ErrorCode::Corruption,
            ProjectionError::UnsupportedFormat { .. } => ErrorCode::UnsupportedFormat,
            ProjectionError::Locked { .. } => ErrorCode::Locked,
            ProjectionError::Store(e) => e.code(),
            ProjectionError::Storage(_) | ProjectionError::Closed => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

impl HasCode for CommerceError {
    fn code(&self) -> ErrorCode {
        match self {
            CommerceError::InsufficientStock { .. } => ErrorCode::InsufficientStock,
            CommerceError::InvalidState { .. } => ErrorCode::InvalidState,
            CommerceError::UnknownProduct { .. } => ErrorCode::UnknownProduct,
            CommerceError::NotFound { .. } => ErrorCode::NotFound,
            CommerceError::Validation { .. } => ErrorCode::ValidationError,
            CommerceError::PaymentNotFound { .. } => ErrorCode::NotFound,
            CommerceError::GatewayUnavailable { .. } => ErrorCode::Unavailable,
        }
    }
}

impl HasCode for crate::webhooks::WebhookError {
    fn code(&self) -> ErrorCode {
        use crate::webhooks::WebhookError;
        match self {
            WebhookError::Validation { .. } => ErrorCode::ValidationError,
            WebhookError::NotFound { .. } => ErrorCode::NotFound,
            WebhookError::Exists { .. } => ErrorCode::InvalidState,
        }
    }
}

impl HasCode for crate::privacy::PrivacyError {
    fn code(&self) -> ErrorCode {
        use crate::privacy::PrivacyError;
        match self {
            PrivacyError::UnknownSubject => ErrorCode::NotFound,
            PrivacyError::EmptySubject => ErrorCode::BadUserInput,
            PrivacyError::Unsupported { .. } => ErrorCode::Unsupported,
            PrivacyError::Store(e) => e.code(),
        }
    }
}

impl HasCode for crate::lifecycle::LifecycleError {
    fn code(&self) -> ErrorCode {
        use crate::lifecycle::LifecycleError;
        match self {
            LifecycleError::Unsupported(_) => ErrorCode::Unsupported,
            LifecycleError::UnknownSubject(_) | LifecycleError::StreamNotFound(_) => {
                ErrorCode::NotFound
            }
            LifecycleError::Invalid(_) => ErrorCode::BadUserInput,
            LifecycleError::IncompleteBackup { .. } => ErrorCode::IncompleteBackup,
            LifecycleError::Store(e) => e.code(),
            LifecycleError::Privacy(e) => e.code(),
            LifecycleError::Audit(e) => e.code(),
            LifecycleError::ReadModels(e) => e.code(),
            LifecycleError::Io { .. } => ErrorCode::Io,
        }
    }
}

impl HasCode for QueryError {
    fn code(&self) -> ErrorCode {
        match self {
            QueryError::InvalidCursor | QueryError::InvalidPageSize { .. } => {
                ErrorCode::BadUserInput
            }
            QueryError::ReadModel(e) => e.code(),
        }
    }
}

impl HasCode for FaultKind {
    fn code(&self) -> ErrorCode {
        match self {
            FaultKind::ModifiedEvent => ErrorCode::ModifiedEvent,
            FaultKind::DeletedEvent => ErrorCode::DeletedEvent,
            FaultKind::InsertedEvent => ErrorCode::InsertedEvent,
            FaultKind::ReorderedEvents => ErrorCode::ReorderedEvents,
            FaultKind::TruncatedFile => ErrorCode::TruncatedFile,
            FaultKind::ManifestMismatch => ErrorCode::ManifestMismatch,
            FaultKind::BadSignature => ErrorCode::BadSignature,
            FaultKind::MalformedLine => ErrorCode::MalformedLine,
        }
    }
}

impl HasCode for AuditError {
    fn code(&self) -> ErrorCode {
        match self {
            AuditError::InvalidOptions(_) => ErrorCode::BadUserInput,
            AuditError::InvalidKey(_) => ErrorCode::InvalidKey,
            AuditError::Store(e) => e.code(),
            AuditError::Io { .. } => ErrorCode::Io,
            AuditError::NotAnExport(_) => ErrorCode::NotAnExport,
            AuditError::Tampered(f) => f.kind.code(),
        }
    }
}

impl HasCode for NodeError {
    fn code(&self) -> ErrorCode {
        match self {
            NodeError::Log { source, .. } => source.code(),
            NodeError::ReadModels { source, .. } => source.code(),
            NodeError::TempDir(_) | NodeError::WebhookKey(_) => ErrorCode::Io,
            NodeError::Keys(e) => e.code(),
        }
    }
}

impl HasCode for ReplayError {
    fn code(&self) -> ErrorCode {
        match self {
            ReplayError::InUse(_) => ErrorCode::Locked,
            ReplayError::UnknownProjection { .. } => ErrorCode::NotFound,
            ReplayError::Store(e) => e.code(),
            ReplayError::Projection(e) => e.code(),
            ReplayError::Node(e) => e.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_code_is_listed_once_with_a_distinct_name() {
        let names: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            // `ALL` is complete: the match below has no wildcard, so a new variant fails
            // to compile until it is listed.
            let listed = match code {
                ErrorCode::BadUserInput
                | ErrorCode::NotFound
                | ErrorCode::WrongExpectedVersion
                | ErrorCode::Conflict
                | ErrorCode::IdempotencyConflict
                | ErrorCode::InsufficientStock
                | ErrorCode::InvalidState
                | ErrorCode::UnknownProduct
                | ErrorCode::ValidationError
                | ErrorCode::Unauthenticated
                | ErrorCode::Forbidden
                | ErrorCode::RateLimited
                | ErrorCode::PayloadTooLarge
                | ErrorCode::QueryTooComplex
                | ErrorCode::PersistedQueryNotFound
                | ErrorCode::StaleReadTimeout
                | ErrorCode::Unavailable
                | ErrorCode::Unsupported
                | ErrorCode::IncompleteBackup
                | ErrorCode::Corruption
                | ErrorCode::Decode
                | ErrorCode::UnsupportedFormat
                | ErrorCode::Locked
                | ErrorCode::Io
                | ErrorCode::InvalidKey
                | ErrorCode::NotAnExport
                | ErrorCode::ModifiedEvent
                | ErrorCode::DeletedEvent
                | ErrorCode::InsertedEvent
                | ErrorCode::ReorderedEvents
                | ErrorCode::TruncatedFile
                | ErrorCode::ManifestMismatch
                | ErrorCode::BadSignature
                | ErrorCode::MalformedLine
                | ErrorCode::Internal => true,
            };
            assert!(listed);
            let name = code.as_str();
            assert!(
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn operator_only_codes_reach_clients_as_internal() {
        for code in ErrorCode::ALL {
            let seen = code.for_client();
            assert!(!seen.is_internal() || seen == ErrorCode::Internal);
            assert_eq!(
                seen == code,
                !code.is_internal() || code == ErrorCode::Internal
            );
        }
    }
}
