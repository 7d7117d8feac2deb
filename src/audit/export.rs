//! The export engine: pages through `read_all` up to the head read at the start, encodes
//! each page into one chunk of bytes, and closes with the [`Manifest`].
//!
//! One engine serves the CLI ([`export()`] into any `Write`), and HTTP
//! ([`export_stream`]: a `Stream` of `Bytes` chunks for a streaming response body). Memory
//! stays bounded by one page of events and its encoded chunk, whatever the log's size.

use std::io::Write;
use std::sync::Arc;

use annals_store::{EventStore, Hash, Position, ReadFilter, RecordedEvent, Timestamp, category_of};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures::Stream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AuditError;
use super::format::{CSV_HEADER, CloudEventOut, CsvOut, write_ndjson};
use super::manifest::{MANIFEST_VERSION, Manifest};

/// The export layouts (see [`super::format`] for their fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line, then the manifest line.
    #[default]
    Ndjson,
    /// RFC 4180 CSV with a header row; sidecar manifest.
    Csv,
    /// CloudEvents 1.0 JSON, one event per line; sidecar manifest.
    Cloudevents,
}

impl Format {
    /// The name used on the command line and in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Cloudevents => "cloudevents",
        }
    }

    /// Whether the manifest goes to a sidecar file rather than the export's last line.
    pub fn has_sidecar_manifest(self) -> bool {
        self != Format::Ndjson
    }

    /// The HTTP content type of the export.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Cloudevents => "application/cloudevents-batch+json; charset=utf-8",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            "cloudevents" => Ok(Format::Cloudevents),
            other => Err(AuditError::InvalidOptions(format!(
                "unknown format {other:?}: ndjson, csv or cloudevents"
            ))),
        }
    }
}

/// Which events to export. Within one filter the listed values are alternatives (OR);
/// the filters combine with AND. Empty lists and `None` select everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFilters {
    /// Exact stream ids.
    pub streams: Vec<String>,
    /// Stream categories (the part of the stream id before the first `-`).
    pub categories: Vec<String>,
    /// Event types.
    pub event_types: Vec<String>,
    /// First position to export (inclusive).
    pub from_position: Option<u64>,
    /// Last position to export (inclusive).
    pub to_position: Option<u64>,
    /// Recorded at or after this instant (RFC 3339).
    pub since: Option<String>,
    /// Recorded strictly before this instant (RFC 3339).
    pub until: Option<String>,
    /// The metadata's actor.
    pub actors: Vec<String>,
    /// The metadata's correlation id.
    pub correlation_ids: Vec<Uuid>,
}

impl ExportFilters {
    /// True when only the position range is restricted: such an export holds every event
    /// of its range and can be checked link by link.
    pub fn is_contiguous(&self) -> bool {
        self.streams.is_empty()
            && self.categories.is_empty()
            && self.event_types.is_empty()
            && self.since.is_none()
            && self.until.is_none()
            && self.actors.is_empty()
            && self.correlation_ids.is_empty()
    }

    /// Checks the filters and prepares them for matching.
    pub(crate) fn compile(&self) -> Result<CompiledFilters, AuditError> {
        let time = |name: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|t| {
                    crate::time::parse(t).map(Timestamp).ok_or_else(|| {
                        AuditError::InvalidOptions(format!(
                            "--{name} {t:?} is not an RFC 3339 time (like 2026-11-23T12:00:00Z)"
                        ))
                    })
                })
                .transpose()
        };
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?;
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            return Err(AuditError::InvalidOptions(
                "--since must be before --until (the range is since <= recorded time < until)"
                    .into(),
            ));
        }
        if let (Some(f), Some(t)) = (self.from_position, self.to_position)
            && f > t
        {
            return Err(AuditError::InvalidOptions(format!(
                "--from-position {f} is after --to-position {t}"
            )));
        }
        for t in &self.event_types {
            annals_store::validate_event_type(t)
                .map_err(|e| AuditError::InvalidOptions(e.to_string()))?;
        }
        let categories = if self.categories.is_empty() {
            self.streams
                .iter()
                .map(|s| category_of(s).to_string())
                .collect()
        } else {
            self.categories.clone()
        };
        Ok(CompiledFilters {
            filters: self.clone(),
            read_filter: ReadFilter {
                categories,
                event_types: self.event_types.clone(),
            },
            since,
            until,
        })
    }
}

/// Filters ready for matching: the part the store can apply and the parsed times.
#[derive(Clone, Debug)]
pub(crate) struct CompiledFilters {
    filters: ExportFilters,
    /// Categories and types, applied by `read_all` itself.
    pub read_filter: ReadFilter,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
}

impl CompiledFilters {
    /// Whether the event passes every filter except the position range.
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        let f = &self.filters;
        self.read_filter
            .matches(e.stream_id.as_str(), &e.event_type)
            && (f.streams.is_empty() || f.streams.iter().any(|s| s == e.stream_id.as_str()))
            && self.since.is_none_or(|s| e.recorded_at >= s)
            && self.until.is_none_or(|u| e.recorded_at < u)
            && (f.actors.is_empty()
                || e.metadata
                    .actor
                    .as_ref()
                    .is_some_and(|a| f.actors.contains(a)))
            && (f.correlation_ids.is_empty()
                || e.metadata
                    .correlation_id
                    .is_some_and(|c| f.correlation_ids.contains(&c)))
    }
}

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The layout.
    pub format: Format,
    /// Which events.
    pub filters: ExportFilters,
    /// Signs the manifest when set.
    pub signing_key: Option<SigningKey>,
    /// Events read from the store per page (and so per output chunk).
    pub page_size: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            format: Format::Ndjson,
            filters: ExportFilters::default(),
            signing_key: None,
            page_size: 2048,
        }
    }
}

/// The query string of `GET /export` (`?format=csv&category=order,product&since=…`),
/// for `axum::extract::Query`. Lists are comma-separated; names match the CLI flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `ndjson` (default), `csv` or `cloudevents`.
    pub format: Option<String>,
    /// Stream ids, comma-separated.
    pub stream: Option<String>,
    /// Categories, comma-separated.
    pub category: Option<String>,
    /// Event types, comma-separated.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// First position (inclusive).
    pub from_position: Option<u64>,
    /// Last position (inclusive).
    pub to_position: Option<u64>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// Actors, comma-separated.
    pub actor: Option<String>,
    /// Correlation ids, comma-separated.
    pub correlation_id: Option<String>,
}

impl ExportQuery {
    /// Checks the query and turns it into export options (unsigned: a server signs with
    /// its own configured key, if any). Errors are `BAD_USER_INPUT`, for a `400`.
    pub fn into_options(self) -> Result<ExportOptions, AuditError> {
        let list = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
        };
        let correlation_ids = list(self.correlation_id)
            .iter()
            .map(|c| {
                c.parse::<Uuid>().map_err(|_| {
                    AuditError::InvalidOptions(format!("correlation_id {c:?} is not a UUID"))
                })
            })
            .collect::<Result<_, _>>()?;
        let options = ExportOptions {
            format: self.format.as_deref().unwrap_or("ndjson").parse()?,
            filters: ExportFilters {
                streams: list(self.stream),
                categories: list(self.category),
                event_types: list(self.event_type),
                from_position: self.from_position,
                to_position: self.to_position,
                since: self.since,
                until: self.until,
                actors: list(self.actor),
                correlation_ids,
            },
            ..ExportOptions::default()
        };
        options.filters.compile()?;
        Ok(options)
    }
}

/// Where the export is in the log: reads the next page and keeps what the filters select.
#[derive(Clone, Debug)]
struct PageCursor {
    compiled: CompiledFilters,
    page_size: usize,
    next: Position,
    cap: Position,
}

impl PageCursor {
    /// The selected events of the next page (possibly none), or `None` past the cap.
    async fn fetch<S: EventStore>(
        &mut self,
        store: &S,
    ) -> Result<Option<Vec<RecordedEvent>>, AuditError> {
        if self.next > self.cap {
            return Ok(None);
        }
        let page = store
            .read_all(self.next, self.page_size, &self.compiled.read_filter)
            .await?;
        if page.next <= self.next {
            // The store's head is below our cap: it cannot be (heads only grow), so the
            // log lost events under us.
            return Err(AuditError::Store(annals_store::StoreError::Corruption {
                position: self.next,
            }));
        }
        let cap = self.cap;
        let events = page
            .events
            .into_iter()
            .take_while(|e| e.position <= cap)
            .filter(|e| self.compiled.matches(e))
            .collect();
        self.next = page.next.min(cap.next());
        Ok(Some(events))
    }
}

/// An export in progress: call [`Exporter::next_chunk`] until it returns `None`, then
/// take the [`Exporter::manifest`].
pub struct Exporter {
    options: ExportOptions,
    cursor: PageCursor,
    start: Position,
    head_at_start: Position,
    count: u64,
    first: Option<Position>,
    last: Option<(Position, Hash)>,
    started: bool,
    manifest: Option<Manifest>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("format", &self.options.format)
            .field("next", &self.cursor.next)
            .field("cap", &self.cursor.cap)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Checks the options and fixes the snapshot: nothing after the store's current head
    /// will be exported.
    pub fn new<S: EventStore>(store: &S, options: ExportOptions) -> Result<Self, AuditError> {
        let compiled = options.filters.compile()?;
        if options.page_size == 0 {
            return Err(AuditError::InvalidOptions(
                "page size must be at least 1".into(),
            ));
        }
        let head_at_start = store.head();
        let start = Position(options.filters.from_position.unwrap_or(1).max(1));
        let cap = Position(
            options
                .filters
                .to_position
                .map_or(head_at_start.get(), |t| t.min(head_at_start.get())),
        );
        Ok(Self {
            cursor: PageCursor {
                compiled,
                page_size: options.page_size,
                next: start,
                cap,
            },
            options,
            start,
            head_at_start,
            count: 0,
            first: None,
            last: None,
            started: false,
            manifest: None,
        })
    }

    /// The head of the log when the export started.
    pub fn head_at_start(&self) -> Position {
        self.head_at_start
    }

    /// How many positions have been examined, and how many will be in all.
    pub fn progress(&self) -> (u64, u64) {
        progress(self.start, self.cursor.next, self.cursor.cap)
    }

    /// How many events were exported so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The manifest, once [`Exporter::next_chunk`] returned `None`.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The next encoded chunk (a page of events, the CSV header, or the NDJSON manifest
    /// line), or `None` when the export is complete. Never returns an empty chunk.
    pub async fn next_chunk<S: EventStore>(
        &mut self,
        store: &S,
    ) -> Result<Option<Vec<u8>>, AuditError> {
        if self.manifest.is_some() {
            return Ok(None);
        }
        let mut buf = Vec::new();
        self.begin(&mut buf)?;
        while let Some(events) = self.cursor.fetch(store).await? {
            self.encode(&events, &mut buf)?;
            if !buf.is_empty() {
                return Ok(Some(buf));
            }
        }
        self.finish(&mut buf);
        Ok((!buf.is_empty()).then_some(buf))
    }

    /// Writes what comes before the first event (the CSV header), once.
    fn begin(&mut self, buf: &mut Vec<u8>) -> Result<(), AuditError> {
        if !self.started {
            self.started = true;
            if self.options.format == Format::Csv {
                let mut w = csv_writer(buf);
                w.write_record(CSV_HEADER).map_err(csv_error)?;
                w.flush().map_err(|e| AuditError::io("encoding CSV", e))?;
            }
        }
        Ok(())
    }

    /// Encodes selected events and counts them.
    fn encode(&mut self, events: &[RecordedEvent], buf: &mut Vec<u8>) -> Result<(), AuditError> {
        if self.options.format == Format::Csv {
            let mut w = csv_writer(buf);
            for event in events {
                w.serialize(CsvOut::of(event)).map_err(csv_error)?;
            }
            w.flush().map_err(|e| AuditError::io("encoding CSV", e))?;
        } else {
            for event in events {
                write_json_line(self.options.format, event, buf)?;
            }
        }
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            self.count += events.len() as u64;
            self.first.get_or_insert(first.position);
            self.last = Some((last.position, last.hash));
        }
        Ok(())
    }

    /// Builds the manifest and, for NDJSON, writes its line.
    fn finish(&mut self, buf: &mut Vec<u8>) {
        let manifest = self.build_manifest();
        if self.options.format == Format::Ndjson {
            buf.extend_from_slice(manifest.to_line().as_bytes());
            buf.push(b'\n');
        }
        self.manifest = Some(manifest);
    }

    fn build_manifest(&self) -> Manifest {
        let mut manifest = Manifest {
            version: MANIFEST_VERSION,
            tool: "annals".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            format: self.options.format,
            filters: self.options.filters.clone(),
            contiguous: self.options.filters.is_contiguous(),
            head_at_start: self.head_at_start.get(),
            count: self.count,
            first_position: self.first.map(Position::get),
            last_position: self.last.map(|(p, _)| p.get()),
            last_hash: self.last.map(|(_, h)| hex::encode(h)),
            exported_at: crate::time::format(Timestamp::now().as_micros()).unwrap_or_default(),
            signature: None,
        };
        if let Some(key) = &self.options.signing_key {
            manifest.sign(key);
        }
        manifest
    }
}

fn progress(start: Position, next: Position, cap: Position) -> (u64, u64) {
    let total = (cap.get() + 1).saturating_sub(start.get());
    let done = next.get().saturating_sub(start.get()).min(total);
    (done, total)
}

fn csv_writer(buf: &mut Vec<u8>) -> csv::Writer<&mut Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(buf)
}

fn write_json_line(format: Format, e: &RecordedEvent, buf: &mut Vec<u8>) -> Result<(), AuditError> {
    match format {
        Format::Cloudevents => {
            serde_json::to_writer(&mut *buf, &CloudEventOut::of(e)).map_err(json_error)?;
            buf.push(b'\n');
        }
        _ => write_ndjson(buf, e),
    }
    Ok(())
}

fn json_error(e: serde_json::Error) -> AuditError {
    AuditError::io("encoding JSON", std::io::Error::other(e))
}

fn csv_error(e: csv::Error) -> AuditError {
    AuditError::io("encoding CSV", std::io::Error::other(e))
}

/// Exports into `out` and returns the manifest (already written into `out` for NDJSON;
/// the caller writes the sidecar for the other formats).
///
/// Memory stays bounded by one page; `out` should be buffered (`BufWriter`) when it is a
/// file or a socket.
pub async fn export<S: EventStore>(
    store: &S,
    options: ExportOptions,
    mut out: impl Write,
) -> Result<Manifest, AuditError> {
    let mut exporter = Exporter::new(store, options)?;
    while let Some(chunk) = exporter.next_chunk(store).await? {
        out.write_all(&chunk)
            .map_err(|e| AuditError::io("writing the export", e))?;
    }
    out.flush()
        .map_err(|e| AuditError::io("writing the export", e))?;
    Ok(exporter
        .manifest
        .expect("next_chunk returns None only after building the manifest"))
}

/// Exports into `out` on two threads: this one encodes and writes while a helper thread
/// reads and decodes the next pages (at most four pages ahead, so memory stays bounded).
/// `progress(done, total)` is called after each page with positions examined and to
/// examine. The CLI's path; blocks the calling thread until the export is complete, so
/// call it from a blocking context, not on an async runtime's worker.
///
/// The store is read with a minimal executor (`futures::executor::block_on`): this suits
/// stores whose reads do not need a runtime, as both Annals stores' reads do not.
pub fn export_blocking<S: EventStore>(
    store: &S,
    options: ExportOptions,
    mut out: impl Write,
    mut progress_fn: impl FnMut(u64, u64),
) -> Result<Manifest, AuditError> {
    let mut exporter = Exporter::new(store, options)?;
    let mut cursor = exporter.cursor.clone();
    let (start, cap) = (exporter.start, cursor.cap);
    let write_error = |e| AuditError::io("writing the export", e);
    std::thread::scope(|scope| {
        type Page = Result<(Vec<RecordedEvent>, Position), AuditError>;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Page>(4);
        scope.spawn(move || {
            loop {
                let page = futures::executor::block_on(cursor.fetch(store))
                    .map(|events| events.map(|e| (e, cursor.next)));
                let sent = match page {
                    Ok(Some(page)) => tx.send(Ok(page)),
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                };
                if sent.is_err() {
                    // The writer stopped (an error): nothing more to read.
                    break;
                }
            }
        });
        let mut buf = Vec::with_capacity(1024 * 1024);
        exporter.begin(&mut buf)?;
        for page in rx {
            let (events, next) = page?;
            exporter.encode(&events, &mut buf)?;
            exporter.cursor.next = next;
            if buf.len() >= 512 * 1024 {
                out.write_all(&buf).map_err(write_error)?;
                buf.clear();
            }
            let (done, total) = progress(start, next, cap);
            progress_fn(done, total);
        }
        exporter.finish(&mut buf);
        out.write_all(&buf).map_err(write_error)?;
        out.flush().map_err(write_error)
    })?;
    Ok(exporter.manifest.expect("finish builds the manifest"))
}

/// The export as a stream of byte chunks, for a streaming HTTP body
/// (`axum::body::Body::from_stream`). Invalid options fail here, before any byte, so the
/// handler can answer `400`; a store failure mid-way ends the stream with the error.
///
/// NDJSON ends with its manifest line; CSV and CloudEvents have no sidecar over HTTP
/// (export NDJSON for a verifiable file).
///
/// A handler (admin role) is a few lines:
///
/// ```text
/// async fn export_handler(State(state): State<AppState>, Query(q): Query<ExportQuery>) -> Response {
///     let options = match q.into_options() { Ok(o) => o, Err(e) => return bad_request(e) };
///     let format = options.format;
///     match export_stream(state.store.clone(), options) {
///         Ok(stream) => ([(CONTENT_TYPE, format.content_type())], Body::from_stream(stream)).into_response(),
///         Err(e) => bad_request(e),
///     }
/// }
/// ```
pub fn export_stream<S: EventStore>(
    store: Arc<S>,
    options: ExportOptions,
) -> Result<impl Stream<Item = Result<Bytes, AuditError>> + Send + 'static, AuditError> {
    let exporter = Exporter::new(&*store, options)?;
    Ok(futures::stream::try_unfold(
        (store, exporter),
        |(store, mut exporter)| async move {
            Ok(exporter
                .next_chunk(&*store)
                .await?
                .map(|chunk| (Bytes::from(chunk), (store, exporter))))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HasCode;
    use annals_store::{ExpectedVersion, InMemoryEventStore, Metadata, NewEvent, StreamId};
    use futures::StreamExt;

    async fn seeded() -> InMemoryEventStore {
        let store = InMemoryEventStore::default();
        for i in 0..25u32 {
            let stream = StreamId::new(if i % 2 == 0 { "order-1" } else { "product-1" }).unwrap();
            let event =
                NewEvent::json("Thing", &serde_json::json!({ "i": i })).with_metadata(Metadata {
                    actor: Some(if i < 10 { "alice" } else { "bob" }.into()),
                    ..Metadata::default()
                });
            store
                .append(stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
        store
    }

    #[tokio::test]
    async fn the_stream_yields_the_same_bytes_as_export() {
        let store = Arc::new(seeded().await);
        let options = ExportOptions {
            page_size: 4,
            ..ExportOptions::default()
        };
        let mut file = Vec::new();
        let manifest = export(&*store, options.clone(), &mut file).await.unwrap();
        let chunks: Vec<_> = export_stream(store.clone(), options)
            .unwrap()
            .collect()
            .await;
        assert!(chunks.len() > 5, "streamed page by page: {}", chunks.len());
        let streamed: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        // Identical except the manifest's export time.
        let lines = |b: &[u8]| -> Vec<String> {
            String::from_utf8(b.to_vec())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        };
        let (a, b) = (lines(&file), lines(&streamed));
        assert_eq!(a.len(), 26);
        assert_eq!(a[..25], b[..25]);
        let last = Manifest::from_line(&b[25]).unwrap();
        assert_eq!(last.count, manifest.count);
        assert_eq!(last.last_hash, manifest.last_hash);
    }

    #[test]
    fn http_queries_become_options_or_bad_user_input() {
        let query = ExportQuery {
            format: Some("csv".into()),
            category: Some("order, product".into()),
            event_type: Some("OrderPlaced".into()),
            correlation_id: Some(Uuid::from_u128(1).to_string()),
            from_position: Some(3),
            ..ExportQuery::default()
        };
        let options = query.into_options().unwrap();
        assert_eq!(options.format, Format::Csv);
        assert_eq!(options.filters.categories, ["order", "product"]);
        assert_eq!(options.filters.correlation_ids, [Uuid::from_u128(1)]);
        for bad in [
            ExportQuery {
                format: Some("xml".into()),
                ..ExportQuery::default()
            },
            ExportQuery {
                correlation_id: Some("nope".into()),
                ..ExportQuery::default()
            },
            ExportQuery {
                from_position: Some(9),
                to_position: Some(2),
                ..ExportQuery::default()
            },
        ] {
            assert_eq!(bad.into_options().unwrap_err().code(), "BAD_USER_INPUT");
        }
    }

    #[tokio::test]
    async fn the_two_thread_export_writes_the_same_events() {
        let store = seeded().await;
        let options = ExportOptions {
            page_size: 3,
            ..ExportOptions::default()
        };
        let mut single = Vec::new();
        export(&store, options.clone(), &mut single).await.unwrap();
        let mut calls = Vec::new();
        let mut piped = Vec::new();
        let manifest = export_blocking(&store, options, &mut piped, |done, total| {
            calls.push((done, total))
        })
        .unwrap();
        let events = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .unwrap()
                .lines()
                .take(25)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(events(&single), events(&piped));
        assert_eq!(manifest.count, 25);
        assert_eq!(calls.last(), Some(&(25, 25)));
        assert_eq!(calls.len(), 9);
    }

    #[tokio::test]
    async fn filters_combine_and_bad_ranges_fail_before_any_byte() {
        let store = Arc::new(seeded().await);
        let mut options = ExportOptions::default();
        options.filters.categories = vec!["order".into()];
        options.filters.actors = vec!["bob".into()];
        options.filters.to_position = Some(20);
        let manifest = export(&*store, options, std::io::sink()).await.unwrap();
        // order events are odd positions 1, 3, ...; bob's are positions 11..=25.
        assert_eq!(manifest.count, 5);
        assert_eq!(manifest.first_position, Some(11));
        assert_eq!(manifest.last_position, Some(19));
        assert!(!manifest.contiguous);

        let mut bad = ExportOptions::default();
        bad.filters.since = Some("2026-11-24T00:00:00Z".into());
        bad.filters.until = Some("2026-11-23T00:00:00Z".into());
        let err = export_stream(store.clone(), bad).err().unwrap();
        assert_eq!(err.code(), "BAD_USER_INPUT");
        assert!(err.to_string().contains("--since must be before --until"));
        let mut bad = ExportOptions::default();
        bad.filters.since = Some("yesterday".into());
        let err = export_stream(store, bad).err().unwrap();
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
    }
}
