//! Every variant of every error type gets its code from the one table, and none shows a
//! client what is internal (paths, positions of damaged records, RocksDB's messages).
//!
//! The expected codes are written out here, apart from the table, so a change of a code
//! is a deliberate change of this file too.

use std::path::PathBuf;

use annals::audit::{AuditError, Fault, FaultKind};
use annals::domain::CommerceError;
use annals::error::{ErrorCode, HasCode};
use annals::graphql::error::ApiError;
use annals::lifecycle::LifecycleError;
use annals::node::NodeError;
use annals::privacy::PrivacyError;
use annals::read_models::QueryError;
use annals::replay::ReplayError;
use annals::webhooks::WebhookError;
use annals_projections::ProjectionError;
use annals_projections::testkit::one_of_each_projection_error;
use annals_store::testkit::one_of_each_store_error;
use annals_store::{CommandError, StoreError, StreamId};

/// What a client must never read in an error message.
const INTERNALS: &[&str] = &[
    "/srv",
    "/dev/null",
    "secret",
    "rocksdb",
    "IO error",
    "No space",
    "987654",
];

fn store_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::WrongExpectedVersion { .. } => ErrorCode::WrongExpectedVersion,
        StoreError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
        StoreError::InvalidStreamId { .. }
        | StoreError::InvalidEventType { .. }
        | StoreError::TooManyEvents { .. }
        | StoreError::EmptyAppend
        | StoreError::DuplicateStream { .. } => ErrorCode::BadUserInput,
        StoreError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
        StoreError::Corruption { .. } | StoreError::ReplicaDiverged { .. } => ErrorCode::Corruption,
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
        other => panic!("a store error this test does not know: {other:?}"),
    }
}

fn projection_code(error: &ProjectionError) -> ErrorCode {
    match error {
        ProjectionError::UnknownProjection { .. } => ErrorCode::NotFound,
        ProjectionError::InvalidName { .. } | ProjectionError::DuplicateProjection { .. } => {
            ErrorCode::BadUserInput
        }
        ProjectionError::StaleRead { .. } => ErrorCode::StaleReadTimeout,
        ProjectionError::InvalidState { .. } => ErrorCode::InvalidState,
        ProjectionError::Corruption { .. } | ProjectionError::Json(_) => ErrorCode::Corruption,
        ProjectionError::UnsupportedFormat { .. } => ErrorCode::UnsupportedFormat,
        ProjectionError::Locked { .. } => ErrorCode::Locked,
        ProjectionError::Store(e) => store_code(e),
        ProjectionError::Storage(_) | ProjectionError::Closed => ErrorCode::Unavailable,
        other => panic!("a projection error this test does not know: {other:?}"),
    }
}

/// Every webhook refusal (the match fails to compile when a variant is added).
fn webhook_errors() -> Vec<(WebhookError, ErrorCode)> {
    let errors = vec![
        (
            WebhookError::Validation {
                reason: "\"ftp://x\" is not an http(s) URL".into(),
            },
            ErrorCode::ValidationError,
        ),
        (
            WebhookError::NotFound { id: "w".into() },
            ErrorCode::NotFound,
        ),
        (
            WebhookError::Exists { id: "w".into() },
            ErrorCode::InvalidState,
        ),
    ];
    for (error, _) in &errors {
        match error {
            WebhookError::Validation { .. }
            | WebhookError::NotFound { .. }
            | WebhookError::Exists { .. } => {}
        }
    }
    errors
}

fn commerce_errors() -> Vec<(CommerceError, ErrorCode)> {
    vec![
        (
            CommerceError::InsufficientStock {
                product_id: "p-1".into(),
                requested: 3,
                available: 1,
            },
            ErrorCode::InsufficientStock,
        ),
        (
            CommerceError::InvalidState {
                reason: "cannot ship order o-1: it is PLACED".into(),
            },
            ErrorCode::InvalidState,
        ),
        (
            CommerceError::UnknownProduct {
                product_id: "p-9".into(),
            },
            ErrorCode::UnknownProduct,
        ),
        (
            CommerceError::NotFound {
                order_id: "o-404".into(),
            },
            ErrorCode::NotFound,
        ),
        (
            CommerceError::Validation {
                reason: "quantity must be positive".into(),
            },
            ErrorCode::ValidationError,
        ),
        (
            CommerceError::PaymentNotFound {
                payment_id: "o-404".into(),
            },
            ErrorCode::NotFound,
        ),
        (
            CommerceError::GatewayUnavailable {
                reason: "circuit open".into(),
            },
            ErrorCode::Unavailable,
        ),
    ]
}

/// The error as a client sees it over GraphQL: its code and message.
fn as_client_sees(error: ApiError) -> (String, String) {
    let error = error.into_graphql();
    let ext =
        serde_json::to_value(error.extensions.expect("every API error has extensions")).unwrap();
    let code = ext["code"].as_str().expect("a code").to_string();
    (code, error.message)
}

/// Checks the code a client sees and that the message shows nothing internal.
#[track_caller]
fn check_client(error: ApiError, expected: ErrorCode) {
    let (code, message) = as_client_sees(error);
    assert_eq!(code, expected.for_client().as_str(), "{message}");
    for internal in INTERNALS {
        assert!(
            !message.contains(internal),
            "{code}: message {message:?} shows {internal:?}"
        );
    }
}

#[test]
fn every_store_error_has_its_code_and_shows_nothing_internal() {
    let errors = one_of_each_store_error();
    assert_eq!(errors.len(), 21);
    for error in errors {
        let expected = store_code(&error);
        assert_eq!(error.code(), expected, "{error:?}");
        check_client(ApiError::from(error), expected);
    }
}

#[test]
fn every_projection_error_has_its_code_and_shows_nothing_internal() {
    let errors = one_of_each_projection_error();
    assert_eq!(errors.len(), 12);
    for error in errors {
        let expected = projection_code(&error);
        assert_eq!(error.code(), expected, "{error:?}");
        check_client(ApiError::from(error), expected);
    }
}

#[test]
fn every_command_error_has_the_code_of_what_it_wraps() {
    let stream = StreamId::new("product-p-1").unwrap();
    let conflict: CommandError<CommerceError> = CommandError::Conflict {
        stream,
        attempts: 4,
    };
    assert_eq!(conflict.code(), ErrorCode::Conflict);
    check_client(ApiError::from(conflict), ErrorCode::Conflict);
    for (error, expected) in commerce_errors() {
        assert_eq!(error.code(), expected);
        let error: CommandError<CommerceError> = CommandError::Rejected(error);
        assert_eq!(error.code(), expected);
        check_client(ApiError::from(error), expected);
    }
    for (error, expected) in webhook_errors() {
        let error: CommandError<WebhookError> = CommandError::Rejected(error);
        assert_eq!(error.code(), expected);
        check_client(ApiError::from(error), expected);
    }
    for error in one_of_each_store_error() {
        let expected = store_code(&error);
        let error: CommandError<CommerceError> = CommandError::Store(error);
        assert_eq!(error.code(), expected);
        check_client(ApiError::from(error), expected);
    }
}

#[test]
fn a_reused_event_id_has_one_code_from_an_append_and_from_a_command() {
    let reused = || StoreError::IdempotencyConflict {
        event_id: uuid::Uuid::nil(),
        existing: annals_store::Position(3),
    };
    let raw = ApiError::from(reused());
    let command = ApiError::from(CommandError::<CommerceError>::Store(reused()));
    assert_eq!(as_client_sees(raw).0, "IDEMPOTENCY_CONFLICT");
    assert_eq!(as_client_sees(command).0, "IDEMPOTENCY_CONFLICT");
}

#[test]
fn every_query_error_has_its_code() {
    let errors = vec![
        (QueryError::InvalidCursor, ErrorCode::BadUserInput),
        (
            QueryError::InvalidPageSize { max: 100 },
            ErrorCode::BadUserInput,
        ),
        (
            QueryError::ReadModel(ProjectionError::Closed),
            ErrorCode::Unavailable,
        ),
    ];
    for (error, expected) in errors {
        match &error {
            QueryError::InvalidCursor
            | QueryError::InvalidPageSize { .. }
            | QueryError::ReadModel(_) => {}
        }
        assert_eq!(error.code(), expected);
        check_client(ApiError::from(error), expected);
    }
}

fn fault(kind: FaultKind) -> AuditError {
    AuditError::Tampered(Fault {
        kind,
        position: Some(7),
        line: Some(8),
        detail: "hash differs".into(),
    })
}

#[test]
fn every_audit_error_and_fault_has_its_code() {
    let io = || std::io::Error::other("No space left on device");
    let errors = vec![
        (
            AuditError::InvalidOptions("from is after to".into()),
            ErrorCode::BadUserInput,
        ),
        (
            AuditError::InvalidKey("not hex".into()),
            ErrorCode::InvalidKey,
        ),
        (
            AuditError::Store(StoreError::Closed),
            ErrorCode::Unavailable,
        ),
        (
            AuditError::Io {
                what: "writing /srv/annals/secret.ndjson".into(),
                source: io(),
            },
            ErrorCode::Io,
        ),
        (
            AuditError::NotAnExport("no manifest".into()),
            ErrorCode::NotAnExport,
        ),
        (fault(FaultKind::ModifiedEvent), ErrorCode::ModifiedEvent),
        (fault(FaultKind::DeletedEvent), ErrorCode::DeletedEvent),
        (fault(FaultKind::InsertedEvent), ErrorCode::InsertedEvent),
        (
            fault(FaultKind::ReorderedEvents),
            ErrorCode::ReorderedEvents,
        ),
        (fault(FaultKind::TruncatedFile), ErrorCode::TruncatedFile),
        (
            fault(FaultKind::ManifestMismatch),
            ErrorCode::ManifestMismatch,
        ),
        (fault(FaultKind::BadSignature), ErrorCode::BadSignature),
        (fault(FaultKind::MalformedLine), ErrorCode::MalformedLine),
    ];
    for (error, expected) in errors {
        match &error {
            AuditError::InvalidOptions(_)
            | AuditError::InvalidKey(_)
            | AuditError::Store(_)
            | AuditError::Io { .. }
            | AuditError::NotAnExport(_) => {}
            AuditError::Tampered(fault) => match fault.kind {
                FaultKind::ModifiedEvent
                | FaultKind::DeletedEvent
                | FaultKind::InsertedEvent
                | FaultKind::ReorderedEvents
                | FaultKind::TruncatedFile
                | FaultKind::ManifestMismatch
                | FaultKind::BadSignature
                | FaultKind::MalformedLine => {}
            },
        }
        assert_eq!(error.code(), expected, "{error}");
        check_client(ApiError::from(error), expected);
    }
}

#[test]
fn node_and_replay_errors_have_the_codes_of_their_causes() {
    let locked = || StoreError::Locked {
        path: "/srv/annals/secret-dir/log".into(),
    };
    let errors = vec![
        (
            NodeError::Log {
                path: PathBuf::from("/srv/annals/secret-dir/log"),
                source: locked(),
            },
            ErrorCode::Locked,
        ),
        (
            NodeError::ReadModels {
                path: PathBuf::from("/srv/annals/secret-dir/read"),
                source: ProjectionError::Closed,
            },
            ErrorCode::Unavailable,
        ),
        (
            NodeError::TempDir(std::io::Error::other("No space left on device")),
            ErrorCode::Io,
        ),
        (
            NodeError::WebhookKey(std::io::Error::other("Permission denied")),
            ErrorCode::Io,
        ),
        (
            NodeError::Keys(PrivacyError::Store(locked())),
            ErrorCode::Locked,
        ),
    ];
    for (error, expected) in errors {
        match &error {
            NodeError::Log { .. }
            | NodeError::ReadModels { .. }
            | NodeError::TempDir(_)
            | NodeError::WebhookKey(_)
            | NodeError::Keys(_) => {}
        }
        assert_eq!(error.code(), expected, "{error}");
    }
    let replays = vec![
        (ReplayError::InUse("/data".into()), ErrorCode::Locked),
        (
            ReplayError::UnknownProjection {
                name: "nope".into(),
                known: "orders, products".into(),
            },
            ErrorCode::NotFound,
        ),
        (
            ReplayError::Store(StoreError::EmptyAppend),
            ErrorCode::BadUserInput,
        ),
        (
            ReplayError::Projection(ProjectionError::Closed),
            ErrorCode::Unavailable,
        ),
        (
            ReplayError::Node(NodeError::TempDir(std::io::Error::other("x"))),
            ErrorCode::Io,
        ),
    ];
    for (error, expected) in replays {
        match &error {
            ReplayError::InUse(_)
            | ReplayError::UnknownProjection { .. }
            | ReplayError::Store(_)
            | ReplayError::Projection(_)
            | ReplayError::Node(_) => {}
        }
        assert_eq!(error.code(), expected, "{error}");
    }
}

#[test]
fn lifecycle_and_privacy_errors_have_their_codes_and_show_nothing_internal() {
    let errors = vec![
        (
            LifecycleError::Unsupported("cannot delete a stream on this node".into()),
            ErrorCode::Unsupported,
        ),
        (
            LifecycleError::UnknownSubject("customer-7".into()),
            ErrorCode::NotFound,
        ),
        (
            LifecycleError::StreamNotFound("order-7".into()),
            ErrorCode::NotFound,
        ),
        (
            LifecycleError::Invalid("max-count must be at least 1".into()),
            ErrorCode::BadUserInput,
        ),
        (
            LifecycleError::IncompleteBackup {
                path: PathBuf::from("/srv/annals/secret-backup"),
                reason: "no manifest".into(),
            },
            ErrorCode::IncompleteBackup,
        ),
        (
            LifecycleError::Store(StoreError::Closed),
            ErrorCode::Unavailable,
        ),
        (
            LifecycleError::Privacy(PrivacyError::Store(StoreError::KeyStore {
                reason: "a key in /srv/annals/secret-dir is short".into(),
            })),
            ErrorCode::Corruption,
        ),
        (
            LifecycleError::Audit(AuditError::NotAnExport("line 1".into())),
            ErrorCode::NotAnExport,
        ),
        (
            LifecycleError::ReadModels(ProjectionError::Closed),
            ErrorCode::Unavailable,
        ),
        (
            LifecycleError::Io {
                what: "writing /srv/annals/secret-backup/manifest.json".into(),
                source: std::io::Error::other("No space left on device"),
            },
            ErrorCode::Io,
        ),
    ];
    for (error, expected) in errors {
        match &error {
            LifecycleError::Unsupported(_)
            | LifecycleError::UnknownSubject(_)
            | LifecycleError::StreamNotFound(_)
            | LifecycleError::Invalid(_)
            | LifecycleError::IncompleteBackup { .. }
            | LifecycleError::Store(_)
            | LifecycleError::Privacy(_)
            | LifecycleError::Audit(_)
            | LifecycleError::ReadModels(_)
            | LifecycleError::Io { .. } => {}
        }
        assert_eq!(error.code(), expected, "{error}");
        if expected != ErrorCode::IncompleteBackup {
            check_client(ApiError::from(error), expected);
        }
    }
    let privacy = vec![
        (PrivacyError::UnknownSubject, ErrorCode::NotFound),
        (PrivacyError::EmptySubject, ErrorCode::BadUserInput),
        (
            PrivacyError::Unsupported {
                reason: "a cluster node".into(),
            },
            ErrorCode::Unsupported,
        ),
        (
            PrivacyError::Store(StoreError::Closed),
            ErrorCode::Unavailable,
        ),
    ];
    for (error, expected) in privacy {
        match &error {
            PrivacyError::UnknownSubject
            | PrivacyError::EmptySubject
            | PrivacyError::Unsupported { .. }
            | PrivacyError::Store(_) => {}
        }
        assert_eq!(error.code(), expected, "{error}");
        check_client(ApiError::from(error), expected);
    }
}
