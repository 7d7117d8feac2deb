//! Verification of an export file: every event's own hash, the links between adjacent
//! events, the order, the manifest and its signature, and optionally every event against
//! the live store.
//!
//! The file is read once, front to back, with one event of lookahead (to tell two swapped
//! lines from a deleted one); memory stays constant. The first fault ends the check and is
//! reported with its position ([`Fault`]). The checks, in the order they apply to each
//! event:
//!
//! 1. the line parses (a cut-off last line is a truncated file);
//! 2. the event is not past the manifest's last position (else: inserted);
//! 3. its hash matches its contents, recomputed with the store's canonical encoding
//!    (else: modified payload or metadata);
//! 4. positions strictly increase (a repeated position: inserted; a smaller one:
//!    reordered); in a contiguous export none is skipped (a gap: deleted, or reordered when
//!    the missing position comes next);
//! 5. an event whose position follows the previous event's links to it (`prev_hash`), and
//!    position 1 links to the all-zero genesis (else: inserted or replaced by a forgery);
//! 6. with a store: every event the manifest's filters select up to its `head_at_start`
//!    is in the file (else: deleted), and each file event is the store's event at its
//!    position (else: inserted/forged).
//!
//! Then the manifest: its signature (when signed, or when a public key is required), and
//! its count, first and last position and last hash against what was read (a missing
//! manifest or missing events at the end: truncated file).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use annals_store::codec::{GENESIS_HASH, hash_checks};
use annals_store::{EventStore, Hash, Position, ReadFilter, RecordedEvent};
use ed25519_dalek::VerifyingKey;

use super::AuditError;
use super::export::{CompiledFilters, Format};
use super::format::{parse_cloudevent, parse_csv, parse_hash, parse_ndjson};
use super::manifest::Manifest;

/// What is wrong with an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// An event's contents do not match its hash: its payload or metadata was edited.
    ModifiedEvent,
    /// An event that belongs in the export is missing from it.
    DeletedEvent,
    /// The file holds an event that is not the log's: a forged line (even with a
    /// recomputed hash), a duplicated position, or an event past the manifest.
    InsertedEvent,
    /// Events are out of position order.
    ReorderedEvents,
    /// The file ends early: a cut-off line, or events or the manifest missing at the end.
    TruncatedFile,
    /// The manifest does not describe the file (count, first or last position, last
    /// hash), or is missing or unreadable.
    ManifestMismatch,
    /// The manifest's signature is missing, does not verify, or is by another key.
    BadSignature,
    /// A line or row in the middle of the file is not an exported event.
    MalformedLine,
}

impl FaultKind {
    fn describe(self) -> &'static str {
        match self {
            FaultKind::ModifiedEvent => "modified payload or metadata",
            FaultKind::DeletedEvent => "deleted event",
            FaultKind::InsertedEvent => "inserted event",
            FaultKind::ReorderedEvents => "reordered events",
            FaultKind::TruncatedFile => "truncated file",
            FaultKind::ManifestMismatch => "manifest mismatch",
            FaultKind::BadSignature => "bad signature",
            FaultKind::MalformedLine => "malformed line",
        }
    }
}

/// The first fault found, where it is and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What is wrong.
    pub kind: FaultKind,
    /// The log position concerned, when there is one.
    pub position: Option<u64>,
    /// The 1-based line (NDJSON, CloudEvents) or record line (CSV) in the file.
    pub line: Option<u64>,
    /// Details for a human.
    pub detail: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FAILED: {}", self.kind.describe())?;
        if let Some(p) = self.position {
            write!(f, " at position {p}")?;
        }
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The key the manifest must be signed with. When `None`, a signed manifest is
    /// checked against its embedded key (integrity, not authorship) and an unsigned one is
    /// accepted.
    pub public_key: Option<VerifyingKey>,
}

/// What a successful verification checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The layout of the file.
    pub format: Format,
    /// Events checked.
    pub events: u64,
    /// First and last position in the file.
    pub first_position: Option<u64>,
    /// Last position in the file.
    pub last_position: Option<u64>,
    /// Whether the export is contiguous (checked link by link).
    pub contiguous: bool,
    /// Whether each event was compared with the store.
    pub against_store: bool,
    /// `Some(true)` when the signature verified against the given key, `Some(false)`
    /// against its embedded key only, `None` when unsigned.
    pub signature_pinned: Option<bool>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OK: {} events", self.events)?;
        if let (Some(a), Some(b)) = (self.first_position, self.last_position) {
            write!(f, " (positions {a}..={b})")?;
        }
        write!(
            f,
            ", {} export ({}), {}, manifest matches, {}",
            self.format.as_str(),
            if self.contiguous {
                "contiguous: every hash and link checked"
            } else {
                "filtered: every hash checked"
            },
            if self.against_store {
                "every event matches the store"
            } else {
                "not compared with a store"
            },
            match self.signature_pinned {
                Some(true) => "signature valid for the given public key",
                Some(false) => "signature valid for its embedded key (pass --public-key to pin it)",
                None => "unsigned",
            }
        )
    }
}

fn fault(
    kind: FaultKind,
    position: Option<u64>,
    line: Option<u64>,
    detail: impl Into<String>,
) -> AuditError {
    AuditError::Tampered(Fault {
        kind,
        position,
        line,
        detail: detail.into(),
    })
}

/// The sidecar manifest's path for an export file: `FILE.manifest.json`.
pub fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// One item read from the export.
enum Item {
    Event {
        line: u64,
        event: Box<RecordedEvent>,
    },
    Manifest {
        line: u64,
    },
    Bad {
        line: u64,
        error: String,
        cut: bool,
    },
}

enum Source {
    Lines {
        reader: BufReader<File>,
        format: Format,
        buf: String,
    },
    Csv {
        reader: csv::Reader<BufReader<File>>,
        headers: csv::StringRecord,
        record: csv::StringRecord,
    },
}

struct Items {
    source: Source,
    line: u64,
    peeked: Option<Option<Item>>,
}

impl Items {
    /// Reads `file` as an export of `format`; a CSV file must start with its header.
    fn open(file: File, format: Format) -> Result<Self, AuditError> {
        let source = match format {
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .from_reader(BufReader::new(file));
                let headers = reader
                    .headers()
                    .map_err(|e| AuditError::NotAnExport(format!("CSV header: {e}")))?
                    .clone();
                Source::Csv {
                    reader,
                    headers,
                    record: csv::StringRecord::new(),
                }
            }
            format => Source::Lines {
                reader: BufReader::with_capacity(256 * 1024, file),
                format,
                buf: String::new(),
            },
        };
        Ok(Items {
            source,
            line: 0,
            peeked: None,
        })
    }

    fn next(&mut self) -> Result<Option<Item>, AuditError> {
        if let Some(item) = self.peeked.take() {
            return Ok(item);
        }
        self.read()
    }

    fn peek(&mut self) -> Result<Option<&Item>, AuditError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.read()?);
        }
        Ok(self.peeked.as_ref().and_then(Option::as_ref))
    }

    fn read(&mut self) -> Result<Option<Item>, AuditError> {
        match &mut self.source {
            Source::Lines {
                reader,
                format,
                buf,
            } => loop {
                buf.clear();
                let n = reader
                    .read_line(buf)
                    .map_err(|e| AuditError::io("reading the export", e))?;
                if n == 0 {
                    return Ok(None);
                }
                self.line += 1;
                let cut = !buf.ends_with('\n');
                let text = buf.trim_end_matches(['\n', '\r']);
                if text.trim().is_empty() {
                    continue;
                }
                let line = self.line;
                if *format == Format::Ndjson && text.starts_with("{\"manifest\"") {
                    return Ok(Some(Item::Manifest { line }));
                }
                let parsed = match format {
                    Format::Cloudevents => parse_cloudevent(text),
                    _ => parse_ndjson(text),
                };
                return Ok(Some(match parsed {
                    Ok(event) => Item::Event {
                        line,
                        event: Box::new(event),
                    },
                    Err(error) => Item::Bad { line, error, cut },
                }));
            },
            Source::Csv {
                reader,
                headers,
                record,
            } => {
                let read = reader.read_record(record);
                let line = record.position().map_or(self.line + 1, |p| p.line());
                self.line = line;
                Ok(match read {
                    Ok(false) => None,
                    Ok(true) => Some(match parse_csv(record, headers) {
                        Ok(event) => Item::Event {
                            line,
                            event: Box::new(event),
                        },
                        Err(error) => Item::Bad {
                            line,
                            error,
                            cut: false,
                        },
                    }),
                    Err(e) => Some(Item::Bad {
                        line,
                        error: e.to_string(),
                        cut: false,
                    }),
                })
            }
        }
    }
}

/// The events of an export file (any of the three formats, sniffed), in file order: the
/// records as the log held them, for an import. A line that is not an event is an error
/// naming its line; the manifest line is skipped.
pub fn read_export(
    path: &Path,
) -> Result<impl Iterator<Item = Result<RecordedEvent, AuditError>>, AuditError> {
    let format = sniff(path)?;
    let mut items = Items::open(open_export(path)?, format)?;
    Ok(std::iter::from_fn(move || {
        loop {
            return match items.next() {
                Ok(None) => None,
                Ok(Some(Item::Manifest { .. })) => continue,
                Ok(Some(Item::Event { event, .. })) => Some(Ok(*event)),
                Ok(Some(Item::Bad { line, error, .. })) => Some(Err(fault(
                    FaultKind::MalformedLine,
                    None,
                    Some(line),
                    format!("line {line} is not an exported event: {error}"),
                ))),
                Err(e) => Some(Err(e)),
            };
        }
    }))
}

/// The format of an export, from its first bytes.
fn sniff(path: &Path) -> Result<Format, AuditError> {
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(reading(path))?;
    let text = String::from_utf8_lossy(&head);
    let first = text.lines().next().unwrap_or_default();
    Ok(if first.starts_with("position,") {
        Format::Csv
    } else if first.contains("\"specversion\"") {
        Format::Cloudevents
    } else {
        Format::Ndjson
    })
}

/// The last non-empty line of a file, read from its end (for the NDJSON manifest).
fn last_line(path: &Path) -> Result<Option<String>, AuditError> {
    let io = reading(path);
    let mut file = File::open(path).map_err(&io)?;
    let len = file.seek(SeekFrom::End(0)).map_err(&io)?;
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    const CHUNK: u64 = 64 * 1024;
    // A manifest is small; give up past 16 MiB rather than read a whole huge file.
    while pos > 0 && tail.len() < 16 * 1024 * 1024 {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start)).map_err(&io)?;
        file.read_exact(&mut chunk).map_err(&io)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        pos = start;
        let trimmed = tail.trim_ascii_end();
        if let Some(nl) = trimmed.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(
                String::from_utf8_lossy(&trimmed[nl + 1..]).into_owned(),
            ));
        }
    }
    let trimmed = tail.trim_ascii_end();
    Ok((!trimmed.is_empty()).then(|| String::from_utf8_lossy(trimmed).into_owned()))
}

/// The store's events that the export should hold, in order (the manifest's filters up
/// to its `head_at_start`).
struct StoreCursor<'a, S> {
    store: &'a S,
    filters: CompiledFilters,
    next: Position,
    cap: Position,
    buf: VecDeque<RecordedEvent>,
}

impl<S: EventStore> StoreCursor<'_, S> {
    async fn peek(&mut self) -> Result<Option<&RecordedEvent>, AuditError> {
        while self.buf.is_empty() && self.next <= self.cap {
            let page = self
                .store
                .read_all(self.next, 1024, &self.filters.read_filter)
                .await?;
            if page.next <= self.next {
                break;
            }
            self.next = page.next;
            self.buf.extend(
                page.events
                    .into_iter()
                    .filter(|e| e.position <= self.cap && self.filters.matches(e)),
            );
        }
        Ok(self.buf.front())
    }
}

/// The state carried from one event to the next.
struct Last {
    position: u64,
    hash: Hash,
}

/// Verifies an export file; with `store`, also against the log. `Ok` is the report of a
/// clean file; [`AuditError::Tampered`] carries the first fault.
pub async fn verify<S: EventStore>(
    path: &Path,
    store: Option<&S>,
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let format = sniff(path)?;
    let file = open_export(path)?;
    // The manifest first: its filters, range and head tell what the events must be.
    let manifest = check_manifest(path, format)?;
    let mut items = Items::open(file, format)?;
    let mut verifier = Verifier::new(format, manifest, store)?;
    while let Some(item) = items.next()? {
        verifier.check_item(item, &mut items).await?;
    }
    verifier.finish(path, options).await
}

/// The error of a failed read of the export at `path`.
fn reading(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::io(format!("reading {}", path.display()), e)
}

/// Opens the export; an empty file is a truncated one.
fn open_export(path: &Path) -> Result<File, AuditError> {
    let file = File::open(path).map_err(reading(path))?;
    if file.metadata().map_err(reading(path))?.len() == 0 {
        return Err(fault(
            FaultKind::TruncatedFile,
            None,
            None,
            "the file is empty: no events and no manifest",
        ));
    }
    Ok(file)
}

/// Reads the manifest (the sidecar, or the NDJSON file's last line) and checks that it
/// parses and describes a file of this format. `None` when there is none.
fn check_manifest(path: &Path, format: Format) -> Result<Option<Manifest>, AuditError> {
    let manifest: Option<Result<Manifest, String>> = if format.has_sidecar_manifest() {
        let sidecar = sidecar_path(path);
        match std::fs::read_to_string(&sidecar) {
            Ok(text) => Some(Manifest::from_line(text.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(reading(path)(e)),
        }
    } else {
        last_line(path)?
            .filter(|l| l.starts_with("{\"manifest\""))
            .map(|l| Manifest::from_line(&l))
    };
    let manifest = match manifest {
        Some(Err(e)) => {
            return Err(fault(
                FaultKind::ManifestMismatch,
                None,
                None,
                format!("the manifest does not parse: {e}"),
            ));
        }
        Some(Ok(m)) => Some(m),
        None => None,
    };
    if let Some(m) = &manifest
        && m.format != format
    {
        return Err(fault(
            FaultKind::ManifestMismatch,
            None,
            None,
            format!(
                "the manifest describes a {} export, the file is {}",
                m.format.as_str(),
                format.as_str()
            ),
        ));
    }
    Ok(manifest)
}

/// The running state of a verification: what the manifest says, what has been read so
/// far, and where the store comparison stands.
struct Verifier<'a, S> {
    format: Format,
    manifest: Option<Manifest>,
    contiguous: bool,
    store: Option<&'a S>,
    /// The store's events the manifest selects, when there are both a store and a manifest.
    cursor: Option<StoreCursor<'a, S>>,
    last: Option<Last>,
    first: Option<u64>,
    count: u64,
    manifest_line_seen: bool,
    /// In a contiguous export the next position is known in advance.
    expected: Option<u64>,
}

impl<'a, S: EventStore> Verifier<'a, S> {
    fn new(
        format: Format,
        manifest: Option<Manifest>,
        store: Option<&'a S>,
    ) -> Result<Self, AuditError> {
        let cursor = match (store, &manifest) {
            (Some(store), Some(m)) => Some(StoreCursor {
                store,
                filters: m.filters.compile().map_err(|e| {
                    fault(
                        FaultKind::ManifestMismatch,
                        None,
                        None,
                        format!("the manifest's filters are invalid: {e}"),
                    )
                })?,
                next: Position(m.filters.from_position.unwrap_or(1).max(1)),
                cap: Position(m.head_at_start.min(store.head().get())),
                buf: VecDeque::new(),
            }),
            _ => None,
        };
        let contiguous = manifest.as_ref().is_some_and(|m| m.contiguous);
        let expected = if contiguous {
            manifest.as_ref().and_then(|m| m.first_position)
        } else {
            None
        };
        Ok(Verifier {
            format,
            manifest,
            contiguous,
            store,
            cursor,
            last: None,
            first: None,
            count: 0,
            manifest_line_seen: false,
            expected,
        })
    }

    /// Checks one item of the file; `items` is the rest of it, for one item of lookahead.
    async fn check_item(&mut self, item: Item, items: &mut Items) -> Result<(), AuditError> {
        match item {
            Item::Manifest { line } => {
                self.manifest_line_seen = true;
                if items.peek()?.is_some() {
                    return Err(fault(
                        FaultKind::ManifestMismatch,
                        None,
                        Some(line),
                        "a manifest line is followed by more lines",
                    ));
                }
                Ok(())
            }
            Item::Bad { line, error, cut } => {
                let at_end = items.peek()?.is_none();
                let next_position = self.last.as_ref().map(|l| l.position + 1).or(self.expected);
                Err(if cut || at_end {
                    fault(
                        FaultKind::TruncatedFile,
                        next_position,
                        Some(line),
                        format!("the last line is cut off ({error})"),
                    )
                } else {
                    fault(
                        FaultKind::MalformedLine,
                        next_position,
                        Some(line),
                        format!("not an exported event: {error}"),
                    )
                })
            }
            Item::Event { line, event } => self.check_event(line, &event, items).await,
        }
    }

    /// Checks one event against the manifest, its own hash, the events before it and the
    /// store, then records it.
    async fn check_event(
        &mut self,
        line: u64,
        event: &RecordedEvent,
        items: &mut Items,
    ) -> Result<(), AuditError> {
        let p = event.position.get();
        if let Some(m) = &self.manifest
            && m.last_position.is_none_or(|lp| p > lp)
        {
            return Err(fault(
                FaultKind::InsertedEvent,
                Some(p),
                Some(line),
                format!(
                    "the manifest ends the export at position {}",
                    m.last_position
                        .map_or("none (no events)".into(), |l| l.to_string())
                ),
            ));
        }
        if !hash_checks(event) {
            return Err(fault(
                FaultKind::ModifiedEvent,
                Some(p),
                Some(line),
                "the event's contents do not match its hash (payload or metadata edited)",
            ));
        }
        self.check_order(line, p, items)?;
        self.check_link(line, event)?;
        self.check_store(line, event).await?;

        self.count += 1;
        self.first.get_or_insert(p);
        self.expected = self.expected.map(|_| p + 1);
        self.last = Some(Last {
            position: p,
            hash: event.hash,
        });
        Ok(())
    }

    /// Positions strictly increase and, in a contiguous export, skip none.
    fn check_order(&self, line: u64, p: u64, items: &mut Items) -> Result<(), AuditError> {
        if let Some(l) = &self.last {
            if p == l.position {
                return Err(fault(
                    FaultKind::InsertedEvent,
                    Some(p),
                    Some(line),
                    format!("a second event claims position {p}"),
                ));
            }
            if p < l.position {
                return Err(fault(
                    FaultKind::ReorderedEvents,
                    Some(p),
                    Some(line),
                    format!("position {p} comes after position {}", l.position),
                ));
            }
        }
        let Some(exp) = self.expected.filter(|&exp| p != exp) else {
            return Ok(());
        };
        let next_is_expected = matches!(
            items.peek()?,
            Some(Item::Event { event: next, .. }) if next.position.get() == exp
        );
        Err(if p > exp && next_is_expected {
            fault(
                FaultKind::ReorderedEvents,
                Some(exp),
                Some(line),
                format!("position {p} comes before position {exp}"),
            )
        } else if p > exp {
            fault(
                FaultKind::DeletedEvent,
                Some(exp),
                Some(line),
                if p == exp + 1 {
                    format!("position {exp} is missing")
                } else {
                    format!("positions {exp}..={} are missing", p - 1)
                },
            )
        } else {
            fault(
                FaultKind::ReorderedEvents,
                Some(p),
                Some(line),
                format!("expected position {exp}"),
            )
        })
    }

    /// An event that follows the previous one links to it; position 1 links to genesis.
    fn check_link(&self, line: u64, event: &RecordedEvent) -> Result<(), AuditError> {
        let p = event.position.get();
        match &self.last {
            Some(l) if l.position + 1 == p && event.prev_hash != l.hash => {
                // Both events match their own hashes, so one of them was forged with a
                // recomputed hash; a forger who recomputes one event cannot fix the next
                // one's link, so the earlier event is the likely forgery.
                Err(fault(
                    FaultKind::InsertedEvent,
                    Some(l.position),
                    Some(line),
                    format!(
                        "position {p}'s prev_hash does not match the hash of position {}: that event was forged or replaced (hash recomputed)",
                        l.position
                    ),
                ))
            }
            None if p == 1 && event.prev_hash != GENESIS_HASH => Err(fault(
                FaultKind::InsertedEvent,
                Some(p),
                Some(line),
                "position 1 does not link to the genesis hash: forged",
            )),
            _ => Ok(()),
        }
    }

    /// The event is the store's event at its position, and no event the manifest selects
    /// was skipped before it.
    async fn check_store(&mut self, line: u64, event: &RecordedEvent) -> Result<(), AuditError> {
        let p = event.position.get();
        if let Some(c) = &mut self.cursor {
            match c.peek().await? {
                Some(s) if s.position.get() < p => {
                    return Err(fault(
                        FaultKind::DeletedEvent,
                        Some(s.position.get()),
                        Some(line),
                        "the store holds this event and the export's filters select it, but the file does not have it",
                    ));
                }
                Some(s) if s.position.get() == p => {
                    if event.removed && !s.removed {
                        return Err(fault(
                            FaultKind::ModifiedEvent,
                            Some(p),
                            Some(line),
                            "the export marks as removed an event the store still holds",
                        ));
                    }
                    if s.hash != event.hash {
                        return Err(fault(
                            FaultKind::InsertedEvent,
                            Some(p),
                            Some(line),
                            "the event differs from the one the store holds at this position (forged, hash recomputed)",
                        ));
                    }
                    c.buf.pop_front();
                }
                _ => {
                    return Err(fault(
                        FaultKind::InsertedEvent,
                        Some(p),
                        Some(line),
                        "the store has no such event among those the export's filters select",
                    ));
                }
            }
        } else if let Some(store) = self.store {
            // No manifest to say what the export should hold: compare event by event.
            let page = store
                .read_all(event.position, 1, &ReadFilter::all())
                .await?;
            match page.events.first() {
                Some(s) if event.removed && !s.removed && s.position == event.position => {
                    return Err(fault(
                        FaultKind::ModifiedEvent,
                        Some(p),
                        Some(line),
                        "the export marks as removed an event the store still holds",
                    ));
                }
                Some(s) if s.position == event.position && s.hash == event.hash => {}
                _ => {
                    return Err(fault(
                        FaultKind::InsertedEvent,
                        Some(p),
                        Some(line),
                        "the store does not hold this event at this position",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The end-of-file checks: the manifest is there, its signature verifies, it describes
    /// what was read, and the store holds no selected event past the file's last.
    async fn finish(
        mut self,
        path: &Path,
        options: &VerifyOptions,
    ) -> Result<VerifyReport, AuditError> {
        let next_position = self.last.as_ref().map(|l| l.position + 1);
        let Some(manifest) = self.manifest.take() else {
            return Err(if self.format.has_sidecar_manifest() {
                fault(
                    FaultKind::ManifestMismatch,
                    None,
                    None,
                    format!("no sidecar manifest {}", sidecar_path(path).display()),
                )
            } else {
                fault(
                    FaultKind::TruncatedFile,
                    next_position,
                    None,
                    "the file ends without its manifest line",
                )
            });
        };
        if self.format == Format::Ndjson && !self.manifest_line_seen {
            return Err(fault(
                FaultKind::TruncatedFile,
                next_position,
                None,
                "the file ends without its manifest line",
            ));
        }

        let signature_pinned = match (&manifest.signature, &options.public_key) {
            (None, None) => None,
            (_, key) => {
                manifest
                    .check_signature(key.as_ref())
                    .map_err(|e| fault(FaultKind::BadSignature, None, None, e))?;
                Some(key.is_some())
            }
        };
        self.check_tally(&manifest)?;
        if let Some(c) = &mut self.cursor
            && let Some(s) = c.peek().await?
        {
            return Err(fault(
                FaultKind::DeletedEvent,
                Some(s.position.get()),
                None,
                "the store holds this event and the export's filters select it, but the file does not have it",
            ));
        }
        Ok(VerifyReport {
            format: self.format,
            events: self.count,
            first_position: self.first,
            last_position: self.last.as_ref().map(|l| l.position),
            contiguous: self.contiguous,
            against_store: self.store.is_some(),
            signature_pinned,
        })
    }

    /// The manifest's count, first and last position and last hash are what was read.
    fn check_tally(&self, manifest: &Manifest) -> Result<(), AuditError> {
        let last_position = self.last.as_ref().map(|l| l.position);
        if let (Some(mlast), Some(seen)) = (manifest.last_position, last_position)
            && mlast > seen
        {
            return Err(fault(
                FaultKind::TruncatedFile,
                if self.contiguous {
                    Some(seen + 1)
                } else {
                    None
                },
                None,
                format!("the file's last event is at position {seen}, the manifest's at {mlast}"),
            ));
        }
        if manifest.last_position.is_some() && last_position.is_none() {
            return Err(fault(
                FaultKind::TruncatedFile,
                manifest.first_position,
                None,
                format!(
                    "the file has no events, the manifest lists {}",
                    manifest.count
                ),
            ));
        }
        if manifest.count != self.count {
            return Err(fault(
                FaultKind::ManifestMismatch,
                None,
                None,
                format!(
                    "the manifest counts {} events, the file has {} (an event was deleted or inserted, or the manifest edited; --data-dir locates a deleted event)",
                    manifest.count, self.count
                ),
            ));
        }
        if manifest.first_position != self.first {
            return Err(fault(
                FaultKind::ManifestMismatch,
                self.first,
                None,
                format!(
                    "the manifest's first position is {:?}",
                    manifest.first_position
                ),
            ));
        }
        let last_hash = self.last.as_ref().map(|l| l.hash);
        if manifest.last_hash.as_deref().map(parse_hash) != last_hash.map(Some) {
            return Err(fault(
                FaultKind::ManifestMismatch,
                last_position,
                None,
                "the manifest's last hash is not the hash of the file's last event",
            ));
        }
        Ok(())
    }
}
