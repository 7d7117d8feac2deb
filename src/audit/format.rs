//! The three export layouts, field by field, and how each is read back for verification.
//!
//! Every exported event carries all the fields the hash chain covers, so [`verify`] can
//! rebuild the exact record and recompute its hash with the store's own codec:
//!
//! | field | NDJSON / CSV column | CloudEvents attribute | encoding |
//! |---|---|---|---|
//! | position | `position` | `annalsposition` | integer |
//! | stream id | `stream_id` | `subject` | string |
//! | stream version | `stream_version` | `annalsstreamversion` | integer |
//! | event id | `event_id` | `id` | UUID, hyphenated |
//! | event type | `event_type` | `type` | string |
//! | schema version | `schema_version` | `annalsschemaversion` | integer |
//! | recorded time | `recorded_at` | `time` | RFC 3339, UTC, microseconds (`2026-11-23T12:00:00.123456Z`) |
//! | metadata | `metadata` (CSV: JSON text) | `annalsmetadata` (JSON text) | `{"correlation_id","causation_id","actor","extra"}` |
//! | payload | `payload` | `data` | the stored JSON, byte for byte |
//! | payload bytes | `payload_base64` | `data_base64` | standard base64, see below |
//! | previous hash | `prev_hash` | `annalsprevhash` | 64 lowercase hex digits |
//! | hash | `hash` | `annalshash` | 64 lowercase hex digits |
//!
//! | removed | `removed` (only `true`, on a tombstone) | `annalsremoved` | boolean |
//!
//! A **tombstone** (an event removed by a hard deletion or retention) keeps its envelope
//! and hashes with empty metadata and an empty payload; verification checks that the chain
//! links through it, not its own hash (its content is gone).
//!
//! CloudEvents lines also have `specversion` (`1.0`), `source` (`/annals/{category}`),
//! `datacontenttype` and, for convenience, `annalsactor` and `annalscorrelationid` (copies
//! of the metadata, omitted when unset).
//!
//! **Payloads.** The hash covers the stored payload bytes, so an export must give them
//! back exactly. When the payload is JSON whose text can stand in a line as it is (no
//! line break, no surrounding whitespace), `payload` is that text, verbatim, and there is
//! no `payload_base64`. Otherwise `payload_base64` holds the exact bytes and is what
//! verification uses; `payload` then holds the same JSON re-serialized compactly, or
//! `null` when the bytes are not JSON at all. CSV cells may hold line breaks, so there any
//! JSON payload is verbatim. CloudEvents has `data` or `data_base64`, never both.
//!
//! [`verify`]: crate::audit::verify()

use std::borrow::Cow;

use annals_store::{Hash, Metadata, Position, RecordedEvent, StreamId, Timestamp};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::time;

/// The header row of CSV exports.
pub const CSV_HEADER: [&str; 13] = [
    "position",
    "stream_id",
    "stream_version",
    "event_id",
    "event_type",
    "schema_version",
    "recorded_at",
    "metadata",
    "payload",
    "payload_base64",
    "prev_hash",
    "hash",
    "removed",
];

/// A hash as 64 lowercase hex digits, formatted on the stack.
pub(crate) struct HexOut([u8; 64]);

impl HexOut {
    pub(crate) fn of(hash: &Hash) -> Self {
        let mut buf = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        hex::encode_to_slice(hash, &mut buf).expect("64 digits for 32 bytes");
        HexOut(buf)
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Serialize for HexOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Parses 64 hex digits into a hash.
pub fn parse_hash(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A recorded time: RFC 3339 text, or the raw microseconds for the (never written in
/// practice) instants that RFC 3339 cannot express.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum TimeText {
    Text(String),
    Micros(i64),
}

impl TimeText {
    fn of(at: Timestamp) -> Self {
        time::format(at.as_micros()).map_or(TimeText::Micros(at.as_micros()), TimeText::Text)
    }

    fn parse(&self) -> Option<Timestamp> {
        match self {
            TimeText::Text(t) => time::parse(t).map(Timestamp),
            TimeText::Micros(m) => Some(Timestamp(*m)),
        }
    }
}

/// How one payload is shown in a line-oriented export.
pub(crate) struct PayloadOut<'a> {
    /// The JSON to show, verbatim or re-serialized; `None` when the bytes are not JSON.
    pub json: Option<Cow<'a, RawValue>>,
    /// The exact bytes, when `json` is not them.
    pub base64: Option<String>,
}

impl<'a> PayloadOut<'a> {
    /// `verbatim_ok` says whether line breaks may stay in the verbatim text (CSV cells).
    pub(crate) fn of(bytes: &'a [u8], line_breaks_ok: bool) -> Self {
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw)
                if raw.get().len() == bytes.len()
                    && (line_breaks_ok || !bytes.iter().any(|b| matches!(b, b'\n' | b'\r'))) =>
            {
                PayloadOut {
                    json: Some(Cow::Borrowed(raw)),
                    base64: None,
                }
            }
            Ok(_) => {
                let compact = serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .and_then(|v| serde_json::value::to_raw_value(&v).ok());
                PayloadOut {
                    json: compact.map(Cow::Owned),
                    base64: Some(BASE64.encode(bytes)),
                }
            }
            Err(_) => PayloadOut {
                json: None,
                base64: Some(BASE64.encode(bytes)),
            },
        }
    }
}

/// Appends `s` as a JSON string (quoted, escaped).
fn json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Appends a string known to need no escaping (hex, UUIDs, RFC 3339, validated event
/// types), quoted.
fn plain_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.push(b'"');
    buf.extend_from_slice(s);
    buf.push(b'"');
}

fn uuid_str(buf: &mut Vec<u8>, id: &Uuid) {
    let mut tmp = [0u8; uuid::fmt::Hyphenated::LENGTH];
    plain_str(buf, id.hyphenated().encode_lower(&mut tmp).as_bytes());
}

fn number(buf: &mut Vec<u8>, n: u64) {
    let mut tmp = itoa::Buffer::new();
    buf.extend_from_slice(tmp.format(n).as_bytes());
}

/// Appends the recorded time as a JSON string, or as the [`TimeText`] fallback outside
/// the years [`time::append`] writes.
fn time_json(buf: &mut Vec<u8>, at: Timestamp) {
    buf.push(b'"');
    if time::append(buf, at.as_micros()) {
        buf.push(b'"');
    } else {
        buf.pop();
        let _ = serde_json::to_writer(&mut *buf, &TimeText::of(at));
    }
}

/// Appends the metadata object, with the members and order of its serde form.
fn metadata_json(buf: &mut Vec<u8>, m: &Metadata) {
    let uuid_or_null = |buf: &mut Vec<u8>, id: &Option<Uuid>| match id {
        Some(id) => uuid_str(buf, id),
        None => buf.extend_from_slice(b"null"),
    };
    buf.extend_from_slice(b"{\"correlation_id\":");
    uuid_or_null(buf, &m.correlation_id);
    buf.extend_from_slice(b",\"causation_id\":");
    uuid_or_null(buf, &m.causation_id);
    buf.extend_from_slice(b",\"actor\":");
    match &m.actor {
        Some(a) => json_str(buf, a),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"extra\":{");
    for (i, (k, v)) in m.extra.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        json_str(buf, k);
        buf.push(b':');
        json_str(buf, v);
    }
    buf.extend_from_slice(b"}}");
}

/// Appends one NDJSON event line (with its newline). Written by hand rather than derived:
/// it is the export's hot loop, and member names need no escaping.
pub(crate) fn write_ndjson(buf: &mut Vec<u8>, e: &RecordedEvent) {
    buf.extend_from_slice(b"{\"position\":");
    number(buf, e.position.get());
    buf.extend_from_slice(b",\"stream_id\":");
    json_str(buf, e.stream_id.as_str());
    buf.extend_from_slice(b",\"stream_version\":");
    number(buf, e.stream_version);
    buf.extend_from_slice(b",\"event_id\":");
    uuid_str(buf, &e.event_id);
    buf.extend_from_slice(b",\"event_type\":");
    json_str(buf, &e.event_type);
    buf.extend_from_slice(b",\"schema_version\":");
    number(buf, u64::from(e.schema_version));
    buf.extend_from_slice(b",\"recorded_at\":");
    time_json(buf, e.recorded_at);
    buf.extend_from_slice(b",\"metadata\":");
    metadata_json(buf, &e.metadata);
    buf.extend_from_slice(b",\"payload\":");
    let payload = PayloadOut::of(&e.payload, false);
    match &payload.json {
        Some(raw) => buf.extend_from_slice(raw.get().as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
    if let Some(b64) = &payload.base64 {
        buf.extend_from_slice(b",\"payload_base64\":");
        plain_str(buf, b64.as_bytes());
    }
    buf.extend_from_slice(b",\"prev_hash\":");
    plain_str(buf, HexOut::of(&e.prev_hash).as_str().as_bytes());
    buf.extend_from_slice(b",\"hash\":");
    plain_str(buf, HexOut::of(&e.hash).as_str().as_bytes());
    if e.removed {
        buf.extend_from_slice(b",\"removed\":true");
    }
    buf.extend_from_slice(b"}\n");
}

/// One NDJSON line as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NdjsonIn {
    position: u64,
    stream_id: String,
    stream_version: u64,
    event_id: Uuid,
    event_type: String,
    schema_version: u16,
    recorded_at: TimeText,
    metadata: Metadata,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    payload_base64: Option<String>,
    prev_hash: String,
    hash: String,
    #[serde(default)]
    removed: bool,
}

/// Why a line or row could not be read back as an event.
pub(crate) type ParseResult<T> = Result<T, String>;

fn payload_bytes(json: Option<&RawValue>, base64: Option<&str>) -> ParseResult<Vec<u8>> {
    match (base64, json) {
        (Some(b), _) => BASE64
            .decode(b)
            .map_err(|e| format!("payload_base64 is not base64: {e}")),
        (None, Some(raw)) => Ok(raw.get().as_bytes().to_vec()),
        // `null` is the one JSON payload that reads back as "no value".
        (None, None) => Ok(b"null".to_vec()),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_event(
    position: u64,
    stream_id: String,
    stream_version: u64,
    event_id: Uuid,
    event_type: String,
    schema_version: u16,
    recorded_at: Option<Timestamp>,
    metadata: Metadata,
    payload: Vec<u8>,
    prev_hash: &str,
    hash: &str,
    removed: bool,
) -> ParseResult<RecordedEvent> {
    Ok(RecordedEvent {
        position: Position(position),
        stream_id: StreamId::new(stream_id).map_err(|e| e.to_string())?,
        stream_version,
        event_id,
        event_type,
        schema_version,
        recorded_at: recorded_at.ok_or("recorded time is not RFC 3339")?,
        metadata,
        payload,
        prev_hash: parse_hash(prev_hash).ok_or("prev_hash is not 64 hex digits")?,
        hash: parse_hash(hash).ok_or("hash is not 64 hex digits")?,
        removed,
    })
}

/// Reads one NDJSON event line back into the record it was exported from.
pub(crate) fn parse_ndjson(line: &str) -> ParseResult<RecordedEvent> {
    let l: NdjsonIn = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let payload = payload_bytes(l.payload.as_deref(), l.payload_base64.as_deref())?;
    build_event(
        l.position,
        l.stream_id,
        l.stream_version,
        l.event_id,
        l.event_type,
        l.schema_version,
        l.recorded_at.parse(),
        l.metadata,
        payload,
        &l.prev_hash,
        &l.hash,
        l.removed,
    )
}

/// One CloudEvents 1.0 JSON line, borrowed from the recorded event.
#[derive(Serialize)]
pub(crate) struct CloudEventOut<'a> {
    specversion: &'static str,
    id: &'a Uuid,
    source: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: TimeText,
    subject: &'a str,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Cow<'a, RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    annalsposition: u64,
    annalsstreamversion: u64,
    annalsschemaversion: u16,
    annalsmetadata: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    annalsactor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annalscorrelationid: Option<Uuid>,
    annalsprevhash: HexOut,
    annalshash: HexOut,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    annalsremoved: bool,
}

impl<'a> CloudEventOut<'a> {
    pub(crate) fn of(e: &'a RecordedEvent) -> Self {
        let payload = PayloadOut::of(&e.payload, false);
        let (data, data_base64, datacontenttype) = match payload {
            PayloadOut {
                json: Some(json),
                base64: None,
            } => (Some(json), None, "application/json"),
            PayloadOut {
                json: Some(_),
                base64,
            } => (None, base64, "application/json"),
            PayloadOut { base64, .. } => (None, base64, "application/octet-stream"),
        };
        CloudEventOut {
            specversion: "1.0",
            id: &e.event_id,
            source: format!("/annals/{}", e.category()),
            event_type: &e.event_type,
            time: TimeText::of(e.recorded_at),
            subject: e.stream_id.as_str(),
            datacontenttype,
            data,
            data_base64,
            annalsposition: e.position.get(),
            annalsstreamversion: e.stream_version,
            annalsschemaversion: e.schema_version,
            annalsmetadata: serde_json::to_string(&e.metadata).unwrap_or_default(),
            annalsactor: e.metadata.actor.as_deref(),
            annalscorrelationid: e.metadata.correlation_id,
            annalsprevhash: HexOut::of(&e.prev_hash),
            annalshash: HexOut::of(&e.hash),
            annalsremoved: e.removed,
        }
    }
}

/// One CloudEvents line as read back (unknown attributes are ignored: CloudEvents allows
/// consumers' intermediaries to add extensions).
#[derive(Deserialize)]
struct CloudEventIn {
    specversion: String,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    time: TimeText,
    subject: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    data_base64: Option<String>,
    annalsposition: u64,
    annalsstreamversion: u64,
    annalsschemaversion: u16,
    annalsmetadata: String,
    annalsprevhash: String,
    annalshash: String,
    #[serde(default)]
    annalsremoved: bool,
}

/// Reads one CloudEvents line back into the record it was exported from.
pub(crate) fn parse_cloudevent(line: &str) -> ParseResult<RecordedEvent> {
    let c: CloudEventIn = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if c.specversion != "1.0" {
        return Err(format!("specversion {:?} is not 1.0", c.specversion));
    }
    let metadata: Metadata = serde_json::from_str(&c.annalsmetadata)
        .map_err(|e| format!("annalsmetadata is not metadata JSON: {e}"))?;
    let payload = payload_bytes(c.data.as_deref(), c.data_base64.as_deref())?;
    build_event(
        c.annalsposition,
        c.subject,
        c.annalsstreamversion,
        c.id,
        c.event_type,
        c.annalsschemaversion,
        c.time.parse(),
        metadata,
        payload,
        &c.annalsprevhash,
        &c.annalshash,
        c.annalsremoved,
    )
}

/// One CSV row, borrowed from the recorded event (columns as in [`CSV_HEADER`]).
#[derive(Serialize)]
pub(crate) struct CsvOut<'a> {
    position: u64,
    stream_id: &'a str,
    stream_version: u64,
    event_id: &'a Uuid,
    event_type: &'a str,
    schema_version: u16,
    recorded_at: String,
    metadata: String,
    payload: &'a str,
    payload_base64: String,
    prev_hash: HexOut,
    hash: HexOut,
    removed: &'static str,
}

impl<'a> CsvOut<'a> {
    pub(crate) fn of(e: &'a RecordedEvent) -> Self {
        let payload = PayloadOut::of(&e.payload, true);
        let (payload, payload_base64) = match payload.json {
            Some(Cow::Borrowed(raw)) => (raw.get(), String::new()),
            _ => ("", payload.base64.unwrap_or_default()),
        };
        CsvOut {
            position: e.position.get(),
            stream_id: e.stream_id.as_str(),
            stream_version: e.stream_version,
            event_id: &e.event_id,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            recorded_at: time::format(e.recorded_at.as_micros())
                .unwrap_or_else(|| e.recorded_at.as_micros().to_string()),
            metadata: serde_json::to_string(&e.metadata).unwrap_or_default(),
            payload,
            payload_base64,
            prev_hash: HexOut::of(&e.prev_hash),
            hash: HexOut::of(&e.hash),
            removed: if e.removed { "true" } else { "" },
        }
    }
}

/// One CSV row as read back.
#[derive(Deserialize)]
struct CsvIn {
    position: u64,
    stream_id: String,
    stream_version: u64,
    event_id: Uuid,
    event_type: String,
    schema_version: u16,
    recorded_at: String,
    metadata: String,
    payload: String,
    payload_base64: String,
    prev_hash: String,
    hash: String,
    /// Absent from exports written before tombstones existed.
    #[serde(default)]
    removed: String,
}

/// Reads one CSV row back into the record it was exported from.
pub(crate) fn parse_csv(
    record: &csv::StringRecord,
    headers: &csv::StringRecord,
) -> ParseResult<RecordedEvent> {
    let r: CsvIn = record
        .deserialize(Some(headers))
        .map_err(|e| e.to_string())?;
    let metadata: Metadata = serde_json::from_str(&r.metadata)
        .map_err(|e| format!("metadata is not metadata JSON: {e}"))?;
    // An empty payload cell means the bytes are in payload_base64: JSON text is never
    // empty.
    let payload = if r.payload.is_empty() {
        BASE64
            .decode(&r.payload_base64)
            .map_err(|e| format!("payload_base64 is not base64: {e}"))?
    } else {
        r.payload.into_bytes()
    };
    let recorded_at = time::parse(&r.recorded_at)
        .or_else(|| r.recorded_at.parse().ok())
        .map(Timestamp);
    build_event(
        r.position,
        r.stream_id,
        r.stream_version,
        r.event_id,
        r.event_type,
        r.schema_version,
        recorded_at,
        metadata,
        payload,
        &r.prev_hash,
        &r.hash,
        r.removed == "true",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &[u8]) -> RecordedEvent {
        let mut e = RecordedEvent {
            position: Position(3),
            stream_id: StreamId::new("order-1").unwrap(),
            stream_version: 2,
            event_id: Uuid::from_u128(7),
            event_type: "OrderPlaced".into(),
            schema_version: 1,
            recorded_at: Timestamp(1_700_000_000_123_456),
            metadata: Metadata {
                actor: Some("alice".into()),
                ..Metadata::default()
            },
            payload: payload.to_vec(),
            prev_hash: [1; 32],
            hash: [0; 32],
            removed: false,
        };
        e.hash = annals_store::codec::recompute_hash(&e);
        e
    }

    #[test]
    fn every_payload_shape_round_trips_through_every_format() {
        let payloads: [&[u8]; 6] = [
            br#"{"a":1}"#,
            b"{\n  \"a\": 1\n}",
            b" [1,2] ",
            b"null",
            b"",
            &[0xff, 0x00, b'x'],
        ];
        for p in payloads {
            let e = event(p);
            let mut line = Vec::new();
            write_ndjson(&mut line, &e);
            let line = String::from_utf8(line).unwrap();
            assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
            let line = line.trim_end();
            // The hand-written line is the JSON that serde would write for these fields.
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                value["metadata"],
                serde_json::to_value(&e.metadata).unwrap()
            );
            assert_eq!(
                value["recorded_at"],
                time::format(e.recorded_at.as_micros()).unwrap()
            );
            assert_eq!(parse_ndjson(line).unwrap(), e, "ndjson {line}");
            let line = serde_json::to_string(&CloudEventOut::of(&e)).unwrap();
            assert_eq!(parse_cloudevent(&line).unwrap(), e, "cloudevents {line}");
            let mut w = csv::Writer::from_writer(Vec::new());
            w.serialize(CsvOut::of(&e)).unwrap();
            let bytes = w.into_inner().unwrap();
            let mut r = csv::Reader::from_reader(bytes.as_slice());
            let headers = r.headers().unwrap().clone();
            let row = r.records().next().unwrap().unwrap();
            assert_eq!(parse_csv(&row, &headers).unwrap(), e);
        }
    }

    #[test]
    fn the_recorded_time_falls_back_to_micros_outside_years_0_to_9999() {
        for micros in [
            0,
            -1,
            1_700_000_000_000_001,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            i64::MAX,
        ] {
            let mut buf = Vec::new();
            time_json(&mut buf, Timestamp(micros));
            let expected = serde_json::to_string(&TimeText::of(Timestamp(micros))).unwrap();
            assert_eq!(String::from_utf8(buf).unwrap(), expected, "{micros}");
        }
    }
}
