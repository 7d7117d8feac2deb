//! Prometheus metrics: the process-wide recorder, the per-request middleware and the
//! scrape-time store gauges.
//!
//! The `metrics` facade has one global recorder per process, so the recorder is
//! installed once ([`handle`]) and shared by every server the process runs (tests run
//! several).

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Instant;

use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use annals_store::EventStore;

/// Histogram buckets for every `*_seconds` metric: 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use. `None` when
/// another recorder was installed first (metrics then go there, and `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS);
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "cannot install the Prometheus recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// The label a response carries for `http_request_duration_seconds{operation}`: the
/// GraphQL operation (set by the GraphQL handler) or the route.
#[derive(Clone, Debug)]
pub struct OperationLabel(pub String);

/// The label of a request that no handler named: its route when known.
pub(super) fn route_label(path: &str) -> &'static str {
    match path {
        "/graphql" => "graphql",
        "/graphql/ws" => "subscription",
        "/health" => "health",
        "/ready" => "ready",
        "/metrics" => "metrics",
        _ => "other",
    }
}

/// A request's counter and timer, by status and then operation.
type Handles = HashMap<u16, HashMap<Box<str>, (metrics::Counter, metrics::Histogram)>>;

/// Labels kept at most in [`HANDLES`]; past it a request's handles are looked up in the
/// registry each time (operation names come from clients).
const MAX_HANDLES: usize = 4096;

/// The handles of the labels seen so far: the registry's lookup builds and hashes a key
/// of labels per call, which costs more than the rest of a small request's accounting.
static HANDLES: OnceLock<RwLock<Handles>> = OnceLock::new();

/// Counts a request and times it, by operation (the GraphQL operation a handler named,
/// else `route`) and status.
pub(super) fn record(route: &'static str, response: &Response, started: Instant) {
    let operation = response
        .extensions()
        .get::<OperationLabel>()
        .map_or(route, |label| label.0.as_str());
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    let handles = HANDLES.get_or_init(Default::default);
    {
        let held = handles.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((requests, duration)) = held.get(&status).and_then(|m| m.get(operation)) {
            requests.increment(1);
            duration.record(seconds);
            return;
        }
    }
    let labels = [
        ("operation", operation.to_string()),
        ("status", status.to_string()),
    ];
    let requests = metrics::counter!("http_requests_total", &labels);
    let duration = metrics::histogram!("http_request_duration_seconds", &labels);
    requests.increment(1);
    duration.record(seconds);
    let mut held = handles.write().unwrap_or_else(PoisonError::into_inner);
    if held.values().map(HashMap::len).sum::<usize>() < MAX_HANDLES {
        held.entry(status)
            .or_default()
            .insert(operation.into(), (requests, duration));
    }
}

/// Copies the store's write-path counters into the registry, then renders it.
pub fn render(state: &super::AppState) -> Option<String> {
    let (store, projections) = (state.store(), state.projections());
    let handle = handle()?;
    let gateway = state.gateway().stats();
    metrics::gauge!("annals_payment_gateway_circuit_state").set(gateway.state.as_gauge());
    metrics::counter!("annals_payment_gateway_calls_total").absolute(gateway.calls);
    metrics::counter!("annals_payment_gateway_failures_total").absolute(gateway.failures);
    metrics::counter!("annals_payment_gateway_rejected_total").absolute(gateway.rejected);
    if let Ok(webhooks) = state.webhooks().status() {
        for w in webhooks {
            let id = w.subscription.id.clone();
            metrics::gauge!("annals_webhook_pending_events", "webhook" => id.clone())
                .set(w.pending as f64);
            metrics::gauge!("annals_webhook_lag_events", "webhook" => id.clone()).set(w.lag as f64);
            metrics::gauge!("annals_webhook_dead_letters", "webhook" => id.clone())
                .set(w.dead_letters as f64);
            metrics::counter!("annals_webhook_deliveries_total", "webhook" => id.clone())
                .absolute(w.delivered);
            metrics::counter!("annals_webhook_failures_total", "webhook" => id)
                .absolute(w.failures);
        }
    }
    for process in state.processes() {
        let Ok(status) = process.status() else {
            continue;
        };
        let name = status.name.clone();
        metrics::gauge!("annals_process_outbox_commands", "process" => name.clone())
            .set(status.outbox as f64);
        metrics::gauge!("annals_process_pending_deadlines", "process" => name.clone())
            .set(status.deadlines as f64);
        metrics::gauge!("annals_process_parked_commands", "process" => name.clone())
            .set(status.parked as f64);
        for (outcome, count) in [
            ("sent", status.sent),
            ("rejected", status.rejected),
            ("retried", status.retried),
            ("parked", status.parked_total),
        ] {
            metrics::counter!("annals_process_commands_total", "process" => name.clone(), "outcome" => outcome)
                .absolute(count);
        }
        metrics::counter!("annals_process_deadlines_fired_total", "process" => name)
            .absolute(status.deadlines_fired);
    }
    let stats = store.stats();
    metrics::counter!("annals_store_group_commits_total").absolute(stats.commits);
    metrics::counter!("annals_store_appends_total").absolute(stats.appends);
    metrics::counter!("annals_store_events_total").absolute(stats.events);
    metrics::counter!("annals_store_failed_appends_total").absolute(stats.failed_appends);
    metrics::gauge!("annals_store_group_commit_events_mean").set(stats.mean_commit_events());
    metrics::gauge!("annals_store_head_position").set(store.head().get() as f64);
    for status in projections.status() {
        let name = status.name.clone();
        metrics::gauge!("annals_projection_lag_events", "projection" => name.clone())
            .set(status.lag as f64);
        metrics::gauge!("annals_projection_checkpoint_position", "projection" => name.clone())
            .set(status.checkpoint.get() as f64);
        metrics::gauge!("annals_projection_events_per_second", "projection" => name.clone())
            .set(status.events_per_second);
        metrics::gauge!("annals_projection_parked_events", "projection" => name.clone())
            .set(status.parked as f64);
        metrics::gauge!("annals_projection_failed", "projection" => name).set(f64::from(u8::from(
            status.state == annals_projections::ProjectionState::Failed,
        )));
    }
    Some(handle.render())
}
