//! The one place where errors become GraphQL `extensions.code`.
//!
//! Every failure a client can see — a store or domain error from a resolver, a refused
//! API key, a body that is not JSON, a query over the depth limit — is an [`ApiError`]
//! whose [`ErrorCode`] comes from the one table in `crate::error`, and leaves the server
//! through
//! [`ApiError::into_graphql`] (inside a GraphQL response) or [`ApiError::into_response`]
//! (before GraphQL runs). [`finish_response`] tags the errors async-graphql produced
//! itself (syntax, validation, limits), so no error ever reaches a client without a code.
//!
//! Internal failures are logged here, inside the request's span (so with its request id),
//! and reach the client only as `INTERNAL` with a generic message.
//!
//! `ApiError` deliberately does not implement `Display`: async-graphql converts anything
//! `Display` into an error without a code, and that path must stay closed for it.

use std::time::Duration;

use annals_projections::ProjectionError;
use annals_store::{CommandError, ExpectedVersion, StoreError};
use async_graphql::{ErrorExtensionValues, ServerError, Value};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use crate::error::ErrorCode;
use crate::error::HasCode;

/// The HTTP status used when an error ends a request before GraphQL runs.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        code if code.is_internal() => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// An error on its way to a client: a code, a message meant for the client, and extra
/// extensions (`expected`/`actual`, `retryAfter`, `limit`, ...).
#[derive(Debug, Clone)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    extensions: Vec<(&'static str, Value)>,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.for_client(),
            message: message.into(),
            extensions: Vec::new(),
            retry_after: None,
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.extensions.push((name, value.into()));
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message the client sees.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Malformed input.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadUserInput, message)
    }

    /// The thing asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// No key, or an unknown key.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// The caller's role is below `required`.
    pub fn forbidden(required: &str, actual: &str) -> Self {
        Self::new(
            ErrorCode::Forbidden,
            format!("this operation needs the {required} role; the API key has {actual}"),
        )
        .with("requiredRole", required)
    }

    /// Too many requests from one key; the client may retry after `retry_after`.
    pub fn rate_limited(retry_after: Duration) -> Self {
        // Clients get whole seconds, rounded up so that retrying on time succeeds.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut error = Self::new(
            ErrorCode::RateLimited,
            format!("rate limit exceeded; retry after {secs} s"),
        )
        .with("retryAfter", secs);
        error.retry_after = Some(Duration::from_secs(secs));
        error
    }

    /// The principal already holds `limit` live subscriptions. `RATE_LIMITED` like the
    /// request budget, with the limit; `retryAfter` is a hint, since a slot frees only
    /// when one of the principal's subscriptions ends.
    pub fn too_many_subscriptions(limit: usize) -> Self {
        let mut error = Self::new(
            ErrorCode::RateLimited,
            format!(
                "this API key already holds {limit} live subscriptions, the most allowed; \
                 complete one before starting another"
            ),
        )
        .with("limit", limit as u64)
        .with("retryAfter", 1u64);
        error.retry_after = Some(Duration::from_secs(1));
        error
    }

    /// The request body is larger than `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .with("limit", limit as u64)
    }

    /// A read model did not reach `wanted` within `waited`.
    pub fn stale_read_timeout(wanted: u64, reached: u64, waited: Duration) -> Self {
        Self::new(
            ErrorCode::StaleReadTimeout,
            format!(
                "the read model did not reach position {wanted} within {} ms (it is at {reached})",
                waited.as_millis()
            ),
        )
        .with("atLeast", wanted.to_string())
        .with("reached", reached.to_string())
    }

    /// The store failed to do the operation (a full or failing disk, a closed store):
    /// `detail` is logged (with the request id of the current span) and never sent.
    pub fn unavailable(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "store unavailable");
        let mut error = Self::new(
            ErrorCode::Unavailable,
            "the event store cannot do this right now; nothing was written, retry later",
        )
        .with("retryAfter", 1u64);
        error.retry_after = Some(Duration::from_secs(1));
        error
    }

    /// An internal failure: `detail` is logged (with the request id of the current span)
    /// and never sent to the client.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal server error")
    }

    fn extension_values(&self) -> ErrorExtensionValues {
        let mut ext = ErrorExtensionValues::default();
        ext.set("code", self.code.as_str());
        count(self.code);
        for (name, value) in &self.extensions {
            ext.set(*name, value.clone());
        }
        ext
    }

    /// The error as a GraphQL field error.
    pub fn into_graphql(self) -> async_graphql::Error {
        let mut error = async_graphql::Error::new(self.message.clone());
        error.extensions = Some(self.extension_values());
        error
    }

    /// The error as a complete HTTP response with a GraphQL-shaped body
    /// (`{"errors":[{"message", "extensions":{"code"}}]}`), for failures before GraphQL runs.
    pub fn into_response(self) -> Response {
        let status = http_status(self.code);
        let retry_after = self.retry_after;
        let mut error = ServerError::new(self.message.clone(), None);
        error.extensions = Some(self.extension_values());
        let body = serde_json::json!({ "errors": [error] });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(after) = retry_after
            && let Ok(value) = HeaderValue::from_str(&after.as_secs().to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Counts an error sent to a client by its code (`annals_errors_total{code}`).
fn count(code: ErrorCode) {
    metrics::counter!("annals_errors_total", "code" => code.as_str()).increment(1);
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ApiError::into_response(self)
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(error: ApiError) -> Self {
        error.into_graphql()
    }
}

fn expected_text(expected: ExpectedVersion) -> String {
    match expected {
        ExpectedVersion::Any => "ANY".into(),
        ExpectedVersion::NoStream => "NO_STREAM".into(),
        ExpectedVersion::StreamExists => "STREAM_EXISTS".into(),
        ExpectedVersion::Exact(v) => v.to_string(),
    }
}

impl ApiError {
    /// The error of any coded type, with its display text as the message. Codes for
    /// operators only become `INTERNAL`, and `UNAVAILABLE` hides its detail: both are
    /// logged with the request id of the current span and never sent.
    pub fn coded<E: HasCode + std::fmt::Display>(error: &E) -> Self {
        match error.code() {
            ErrorCode::Unavailable => ApiError::unavailable(error),
            code if code.is_internal() => ApiError::internal(error),
            code => ApiError::new(code, error.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => ApiError::coded(&error)
                .with("streamId", stream.as_str())
                .with("expected", expected_text(*expected))
                .with("actual", actual.to_string()),
            StoreError::IdempotencyConflict { event_id, .. } => ApiError::new(
                error.code(),
                format!("event id {event_id} is already used by another event"),
            )
            .with("eventId", event_id.to_string()),
            StoreError::PayloadTooLarge { limit, .. } => {
                ApiError::coded(&error).with("limit", *limit as u64)
            }
            _ => ApiError::coded(&error),
        }
    }
}

impl<E: HasCode + std::fmt::Display> From<CommandError<E>> for ApiError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Conflict { stream, attempts } => ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "stream {stream} kept changing under the command ({attempts} attempts); retry"
                ),
            )
            .with("streamId", stream.as_str()),
            CommandError::Store(e) => e.into(),
            other => ApiError::coded(&other),
        }
    }
}

/// Tags the errors of an executed GraphQL response that async-graphql made itself.
///
/// Resolver errors built here already carry a code and pass unchanged. Among the rest:
/// depth/complexity limits become `QUERY_TOO_COMPLEX`; syntax, validation and argument
/// errors become `BAD_USER_INPUT`; anything else raised inside a resolver (an error that
/// bypassed [`ApiError`]) becomes `INTERNAL` with its detail logged, never shown.
pub fn finish_response(response: &mut async_graphql::Response) {
    for error in &mut response.errors {
        tag(error);
    }
}

/// An executor that runs `E` and tags every response it yields with
/// [`finish_response`]: the WebSocket transport executes through it, so a subscription's
/// syntax, validation or argument error carries a code exactly as over HTTP.
#[derive(Clone)]
pub struct Coded<E>(pub E);

impl<E: async_graphql::Executor> async_graphql::Executor for Coded<E> {
    async fn execute(&self, request: async_graphql::Request) -> async_graphql::Response {
        let mut response = self.0.execute(request).await;
        finish_response(&mut response);
        response
    }

    fn execute_stream(
        &self,
        request: async_graphql::Request,
        session_data: Option<std::sync::Arc<async_graphql::Data>>,
    ) -> futures::stream::BoxStream<'static, async_graphql::Response> {
        use futures::StreamExt;
        self.0
            .execute_stream(request, session_data)
            .map(|mut response| {
                finish_response(&mut response);
                response
            })
            .boxed()
    }
}

fn tag(error: &mut ServerError) {
    let has_code = error
        .extensions
        .as_ref()
        .is_some_and(|ext| ext.get("code").is_some());
    if has_code {
        return;
    }
    let message = error.message.as_str();
    let code = if message.contains("nested too deep") || message.contains("too complex") {
        ErrorCode::QueryTooComplex
    } else if message == "PersistedQueryNotFound" {
        // The message is what Apollo clients look for; they then send the text.
        ErrorCode::PersistedQueryNotFound
    } else if error.path.is_empty() || is_input_error(message) {
        ErrorCode::BadUserInput
    } else {
        tracing::error!(error = %error.message, path = ?error.path, "uncoded resolver error");
        error.message = "internal server error".into();
        ErrorCode::Internal
    };
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code.as_str());
    count(code);
}

/// Whether a message async-graphql raised while resolving a field is about the client's
/// input: an argument or variable that does not coerce to its type (the fuzz target found
/// `filter: []` coming back as `INTERNAL` before "Expected input type" was listed), an
/// undefined variable, an unknown field or fragment its validation let through.
fn is_input_error(message: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "Failed to parse",
        "Internal: Failed to parse",
        "Invalid value for argument",
        "Expected input type",
        "Enumeration type does not contain value",
        "Cannot query field",
        "Unknown fragment",
    ];
    PREFIXES.iter().any(|p| message.starts_with(p))
        || message.contains("(occurred while parsing")
        || (message.starts_with("Variable ") && message.ends_with("is not defined."))
}

/// A request body that was not valid JSON (or not a GraphQL request object).
pub fn malformed_body(detail: &dyn std::fmt::Display) -> ApiError {
    ApiError::bad_input(format!(
        "request body is not a valid GraphQL request: {detail}"
    ))
}

/// A response for an HTTP-level error that some layer produced without a GraphQL body
/// (the body-limit layer's 413, the timeout layer's 408).
pub fn from_status(status: StatusCode, body_limit: usize) -> Option<ApiError> {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Some(ApiError::payload_too_large(body_limit)),
        StatusCode::REQUEST_TIMEOUT => Some(ApiError::new(
            ErrorCode::Internal,
            "the request took longer than the server allows",
        )),
        _ => None,
    }
}

impl From<ProjectionError> for ApiError {
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::UnknownProjection { name } => {
                ApiError::not_found(format!("no projection named {name:?}"))
            }
            ProjectionError::InvalidState { name, reason } => ApiError::new(
                ErrorCode::InvalidState,
                format!("projection {name}: {reason}"),
            ),
            ProjectionError::StaleRead {
                position,
                checkpoint,
                timeout,
                ..
            } => ApiError::stale_read_timeout(position.get(), checkpoint.get(), timeout),
            ProjectionError::Store(e) => e.into(),
            other => ApiError::coded(&other),
        }
    }
}

impl From<crate::read_models::QueryError> for ApiError {
    fn from(error: crate::read_models::QueryError) -> Self {
        use crate::read_models::QueryError as E;
        match error {
            E::InvalidCursor => ApiError::bad_input("after: not a cursor this API handed out"),
            E::InvalidPageSize { max } => {
                ApiError::bad_input(format!("first must be between 1 and {max}"))
            }
            E::ReadModel(e) => e.into(),
        }
    }
}

impl From<crate::privacy::PrivacyError> for ApiError {
    fn from(error: crate::privacy::PrivacyError) -> Self {
        ApiError::coded(&error)
    }
}

impl From<crate::lifecycle::LifecycleError> for ApiError {
    fn from(error: crate::lifecycle::LifecycleError) -> Self {
        use crate::lifecycle::LifecycleError as E;
        match error {
            E::Store(e) => e.into(),
            E::Audit(e) => e.into(),
            E::ReadModels(e) => e.into(),
            other => ApiError::coded(&other),
        }
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(error: crate::audit::AuditError) -> Self {
        match error {
            crate::audit::AuditError::InvalidOptions(reason) => ApiError::bad_input(reason),
            crate::audit::AuditError::Store(e) => e.into(),
            other => ApiError::coded(&other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_store::StreamId;

    #[test]
    fn wrong_expected_version_carries_both_versions() {
        let e = ApiError::from(StoreError::WrongExpectedVersion {
            stream: StreamId::new("order-1").unwrap(),
            expected: ExpectedVersion::Exact(3),
            actual: 5,
        })
        .into_graphql();
        let ext = serde_json::to_value(e.extensions.unwrap()).unwrap();
        assert_eq!(ext["code"], "WRONG_EXPECTED_VERSION");
        assert_eq!(ext["expected"], "3");
        assert_eq!(ext["actual"], "5");
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let e = ApiError::from(StoreError::Corruption {
            position: annals_store::Position(7),
        });
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(!e.message().contains('7'));
    }

    #[test]
    fn storage_failures_are_unavailable_without_detail() {
        let e = ApiError::from(StoreError::Io {
            what: "writing /srv/annals/log".into(),
            source: std::io::Error::other("No space left on device"),
        });
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(!e.message().contains("space") && !e.message().contains("/srv"));
        assert_eq!(http_status(e.code()), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn retry_after_rounds_up() {
        let e = ApiError::rate_limited(Duration::from_millis(1200)).into_graphql();
        let ext = serde_json::to_value(e.extensions.unwrap()).unwrap();
        assert_eq!(ext["retryAfter"], 2);
    }
}
