//! The handlers and the middleware of the routes.

use annals_store::EventStore;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::parser::types::OperationType;
use async_graphql::{Data, Executor};
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::auth::Principal;
use super::metrics::OperationLabel;
use super::{AppState, REQUEST_ID};
use crate::graphql::error::{self, ApiError};
use crate::graphql::{Graphql, RequestId};

/// The request id (set by the edge), taken without copying the headers.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let id = parts.headers.get(REQUEST_ID).and_then(|v| v.to_str().ok());
        Ok(RequestId(id.unwrap_or_default().to_string()))
    }
}

/// The caller of a route that takes an API key, with one request taken from its rate
/// budget. A wrong key is refused; a missing one is left to the route (GraphiQL needs
/// none, the WebSocket route may get the key in `connection_init`). An extractor rather
/// than a layer: a layer would clone the route's service for every request.
pub(super) struct Caller(pub Option<Principal>);

impl axum::extract::FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The edge resolved a good key already.
        let resolved = match parts.extensions.get::<Principal>() {
            Some(principal) => Ok(Some(principal.clone())),
            None => {
                let header = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .map(|v| v.to_str().unwrap_or("<not UTF-8>"));
                state.api_keys().authenticate(header)
            }
        };
        match resolved {
            Err(error) => Err(error.into_response()),
            Ok(Some(principal)) => {
                state
                    .limiter()
                    .check(&principal)
                    .map_err(IntoResponse::into_response)?;
                Ok(Caller(Some(principal)))
            }
            Ok(None) => Ok(Caller(None)),
        }
    }
}

fn operation_label(request: &async_graphql::Request) -> String {
    match request.operation_name.as_deref() {
        Some(name)
            if !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            name.to_string()
        }
        _ => "anonymous".to_string(),
    }
}

/// Whether a request may run a mutation: a GET may not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

/// The caller of an operation: one without a key is refused.
fn required(principal: Option<Principal>) -> Result<Principal, ApiError> {
    principal.ok_or_else(|| {
        ApiError::unauthenticated("an API key is required: send `Authorization: Bearer <key>`")
    })
}

async fn execute(
    state: &AppState,
    principal: Option<Principal>,
    request_id: RequestId,
    request: async_graphql::Request,
    method: Method,
) -> Response {
    let principal = match required(principal) {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    let label = operation_label(&request);
    let mut response = match state.schema().prepare(request).await {
        Ok(mut request) => {
            // Known only now: an automatic persisted query's text was not in the request.
            if method == Method::Get
                && Graphql::operation_type(&mut request) == Some(OperationType::Mutation)
            {
                return ApiError::bad_input("mutations must be sent with POST").into_response();
            }
            let request = request.data(principal).data(request_id);
            state.schema().execute_prepared(request).await
        }
        Err(errors) => async_graphql::Response::from_errors(errors),
    };
    error::finish_response(&mut response);
    let mut http = GraphQLResponse::from(response).into_response();
    http.extensions_mut().insert(OperationLabel(label));
    http
}

/// `POST /graphql`: one GraphQL request as JSON.
pub(super) async fn graphql_post(
    State(state): State<AppState>,
    Caller(principal): Caller,
    request_id: RequestId,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::payload_too_large(state.config().max_body_bytes).into_response();
        }
        Err(rejection) => return error::malformed_body(&rejection.body_text()).into_response(),
    };
    // A JSON array is a batch; anything else one request (whose parse error then names
    // what is wrong with it, not with an enum of both).
    let is_batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if is_batch {
        let requests: Vec<async_graphql::Request> = match serde_json::from_slice(&body) {
            Ok(requests) => requests,
            Err(e) => return error::malformed_body(&e).into_response(),
        };
        return execute_batch(&state, principal, request_id, requests).await;
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error::malformed_body(&e).into_response(),
    };
    execute(&state, principal, request_id, request, Method::Post).await
}

/// A batch: every operation counts against the key's rate limit, they run concurrently
/// (so a batch of appends shares the log's group commits) and are answered in order.
async fn execute_batch(
    state: &AppState,
    principal: Option<Principal>,
    request_id: RequestId,
    requests: Vec<async_graphql::Request>,
) -> Response {
    let principal = match required(principal) {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    let limit = state.config().graphql.max_batch;
    if requests.is_empty() || requests.len() > limit {
        return ApiError::bad_input(format!(
            "a batch holds 1 to {limit} operations, not {}",
            requests.len()
        ))
        .into_response();
    }
    // The HTTP request paid for one operation already.
    let more = u32::try_from(requests.len() - 1).unwrap_or(u32::MAX);
    if let Err(error) = state.limiter().check_n(&principal, more) {
        return error.into_response();
    }
    let schema = state.schema();
    let runs = requests.into_iter().map(|request| {
        let request = request.data(principal.clone()).data(request_id.clone());
        async move {
            let mut response = schema.execute(request).await;
            error::finish_response(&mut response);
            response
        }
    });
    let responses = futures::future::join_all(runs).await;
    let mut http =
        GraphQLResponse::from(async_graphql::BatchResponse::Batch(responses)).into_response();
    http.extensions_mut()
        .insert(OperationLabel("batch".to_string()));
    http
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// `GET /graphql`: GraphiQL for a browser, otherwise a query (never a mutation) from
/// the query string.
pub(super) async fn graphql_get(
    State(state): State<AppState>,
    Caller(principal): Caller,
    request_id: RequestId,
    request: Request,
) -> Response {
    if wants_html(request.headers()) {
        return crate::console::graphiql(request.headers().clone()).await;
    }
    let query = request.uri().query().unwrap_or_default();
    let graphql = match async_graphql::http::parse_query_string(query) {
        Ok(graphql) => graphql,
        Err(e) => return error::malformed_body(&e).into_response(),
    };
    execute(&state, principal, request_id, graphql, Method::Get).await
}

/// `GET /graphql/ws`: subscriptions over graphql-transport-ws (and the legacy
/// graphql-ws). The key comes from the upgrade's `Authorization` header or from the
/// `Authorization` field of `connection_init`'s payload (browsers cannot set headers on
/// a WebSocket).
pub(super) async fn graphql_ws(
    State(state): State<AppState>,
    Caller(principal): Caller,
    request_id: RequestId,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let schema = state.schema().clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let mut data = Data::default();
            data.insert(request_id);
            GraphQLWebSocket::new(socket, error::Coded(schema), protocol)
                .with_data(data)
                .on_connection_init(move |payload| async move {
                    let principal = match principal {
                        Some(p) => p,
                        None => connection_principal(&state, &payload)?,
                    };
                    let mut data = Data::default();
                    data.insert(principal);
                    Ok(data)
                })
                .serve()
                .await
        })
}

fn connection_principal(state: &AppState, payload: &Value) -> async_graphql::Result<Principal> {
    let header = payload
        .get("Authorization")
        .or_else(|| payload.get("authorization"))
        .and_then(Value::as_str);
    let principal = state
        .api_keys()
        .authenticate(header)?
        .ok_or_else(|| ApiError::unauthenticated("connection_init needs an Authorization field"))?;
    state.limiter().check(&principal)?;
    Ok(principal)
}

/// `GET /health`: the process is up.
pub(super) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The per-dependency checks of `/ready`: whether all are up, and each one's report.
pub fn readiness(state: &AppState) -> (bool, Map<String, Value>) {
    let mut checks = Map::new();
    let store = state.store();
    let writable = if state.is_draining() {
        Err("shutting down".to_string())
    } else if store.is_failed() {
        // A write failed (full or failing disk): appends are refused until the store
        // has reopened itself, even if the probe below would pass again already.
        Err("the store refuses writes after a storage failure; recovering".to_string())
    } else if let Some(dir) = &state.config().data_dir {
        probe_writable(dir)
    } else {
        // A log in memory has no directory to fill up.
        Ok(())
    };
    let up = writable.is_ok();
    let mut report = json!({
        "status": if up { "up" } else { "down" },
        "head": store.head().get().to_string(),
        "writable": up,
    });
    if let Err(reason) = writable {
        report["reason"] = Value::String(reason);
    }
    checks.insert("store".into(), report);
    let mut all_up = up;
    if let Some(cluster) = state.cluster() {
        // The node's place in its cluster: a replica that stopped applying the log is down.
        let status = cluster.status();
        let healthy = status.diverged.is_none();
        all_up &= healthy;
        let mut report = json!({
            "status": if healthy { "up" } else { "down" },
            "node": status.node_id,
            "role": match status.role {
                annals_cluster::Role::All => "all",
                annals_cluster::Role::Query => "query",
            },
            "leading": status.leading,
            "writer": status.writer,
            "logSequence": status.log_sequence.to_string(),
            "head": status.head.get().to_string(),
        });
        if let Some(reason) = status.diverged {
            report["reason"] = Value::String(reason);
        }
        checks.insert("cluster".into(), report);
    }
    // An open circuit degrades the checkout (payments wait and are retried) but not the
    // node: the API keeps serving, so the node stays ready.
    let gateway = state.gateway().stats();
    checks.insert(
        "paymentGateway".into(),
        json!({
            "status": if gateway.state == crate::payments::CircuitState::Closed { "up" } else { "degraded" },
            "circuit": gateway.state.as_str(),
            "calls": gateway.calls,
            "failures": gateway.failures,
            "rejected": gateway.rejected,
        }),
    );
    for process in state.processes() {
        if let Ok(status) = process.status() {
            checks.insert(
                format!("process:{}", status.name),
                json!({
                    // Parked commands wait for an operator; the node still serves.
                    "status": if status.parked == 0 { "up" } else { "degraded" },
                    "outbox": status.outbox,
                    "deadlines": status.deadlines,
                    "parked": status.parked,
                }),
            );
        }
    }
    // A projection is up unless it has failed; its lag says how fresh its read model is.
    for status in state.projections().status() {
        let failed = status.state == annals_projections::ProjectionState::Failed;
        all_up &= !failed;
        let mut report = json!({
            "status": if failed { "down" } else { "up" },
            "state": status.state.as_str(),
            "checkpoint": status.checkpoint.get().to_string(),
            "lag": status.lag,
            "parked": status.parked,
        });
        if let Some(error) = status.last_error.filter(|_| failed) {
            report["reason"] = Value::String(error);
        }
        checks.insert(format!("projection:{}", status.name), report);
    }
    (all_up, checks)
}

/// Creates, syncs and removes a file in the data directory: a full disk or a read-only
/// mount fails here before an append does.
fn probe_writable(dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let path = dir.join(".annals-ready-probe");
    let result = std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(b"ok").and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| {
        tracing::warn!(dir = %dir.display(), error = %e, "data directory not writable");
        "data directory not writable".to_string()
    })
}

/// `GET /ready`: 200 when every dependency is up, 503 otherwise, with a report each.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let (up, checks) = match tokio::task::spawn_blocking(move || readiness(&state)).await {
        Ok(result) => result,
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if up { "ready" } else { "unavailable" }, "checks": checks });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    match super::metrics::render(&state) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response(),
    }
}

/// `GET /export?format=…&stream=…&category=…&type=…&from_position=…`: the audit trail,
/// streamed in constant memory up to the head at the start of the request. Admin role.
pub(super) async fn export(
    State(state): State<AppState>,
    Caller(principal): Caller,
    query: Result<
        axum::extract::Query<crate::audit::ExportQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    match principal {
        Some(p) if p.role >= crate::server::auth::Role::Admin => {}
        Some(p) => {
            return ApiError::forbidden("admin", p.role.as_str()).into_response();
        }
        None => return ApiError::unauthenticated("an API key is required").into_response(),
    }
    let options = match query {
        Ok(axum::extract::Query(query)) => query.into_options().map(|mut options| {
            options.signing_key = state.config().export_signing_key.clone();
            options
        }),
        Err(rejection) => return ApiError::bad_input(rejection.body_text()).into_response(),
    };
    let result = options.and_then(|options| {
        let content_type = options.format.content_type();
        crate::audit::export_stream(std::sync::Arc::new(state.store().clone()), options)
            .map(|s| (content_type, s))
    });
    match result {
        Ok((content_type, stream)) => (
            [(header::CONTENT_TYPE, content_type)],
            axum::body::Body::from_stream(stream),
        )
            .into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}
