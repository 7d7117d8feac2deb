//! The one middleware every request passes first: its request id, its principal, its
//! tracing span, its timeout, its metrics, and error responses of the layers below it
//! turned into GraphQL errors.
//!
//! These are one function rather than a stack of layers because each layer of a stack
//! clones the service below it and boxes a future per request, which on a small query
//! costs about as much as the query itself. The layers that stay separate (CORS,
//! compression, the body limit) are tower-http's.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::auth::Principal;
use super::{AppState, REQUEST_ID, metrics};
use crate::graphql::error;

/// Gives the request an id (the client's `X-Request-ID`, or a fresh UUID) and echoes it
/// on the response; resolves the caller's API key once and leaves the principal in the
/// request's extensions (a refused key is left to the routes that need one); runs the
/// rest in the request's span under the request timeout; turns the bare error responses
/// of the body limit and the timeout into GraphQL errors with codes; counts and times
/// the request.
pub(super) async fn edge(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = match request.headers().get(REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("-"));
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Ok(Some(principal)) = state.api_keys().authenticate(header) {
        request.extensions_mut().insert(principal);
    }
    let route = metrics::route_label(request.uri().path());
    let span = request_span(&request, id.to_str().unwrap_or("-"));
    let config = state.config();
    let (timeout, limit) = (config.request_timeout, config.max_body_bytes);
    let mut response = async move {
        tracing::debug!("started processing request");
        let response = match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
        };
        let status = response.status();
        if status.is_server_error() {
            tracing::error!(
                status = status.as_u16(),
                latency_ms = started.elapsed().as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                latency_us = started.elapsed().as_micros() as u64,
                "finished processing request"
            );
        }
        response
    }
    .instrument(span)
    .await;
    if !is_json(&response)
        && let Some(error) = error::from_status(response.status(), limit)
    {
        response = error.into_response();
    }
    response.headers_mut().insert(REQUEST_ID, id);
    metrics::record(route, &response, started);
    response
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

/// The span every log line of a request is emitted in: method, path, request id and the
/// principal.
fn request_span(request: &Request, id: &str) -> tracing::Span {
    let principal = request
        .extensions()
        .get::<Principal>()
        .map(|p| tracing::field::display(p.id.as_str()));
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
        principal,
    )
}
