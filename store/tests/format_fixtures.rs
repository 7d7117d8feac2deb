//! Committed fixtures of the on-disk record format.
//!
//! `fixtures/record-v1.hex` holds a record encoded by format 1 and its chain hash. A build
//! that encodes it differently, or cannot decode it, would break every existing data
//! directory and every exported hash chain, so this test must fail first.
//! Regenerate only for a deliberate format change: `ANNALS_REGENERATE_FIXTURES=1`.

use annals_store::codec::{self, RecordFields};
use annals_store::{Metadata, Position, RecordedEvent, StreamId, Timestamp};
use uuid::Uuid;

fn sample() -> RecordedEvent {
    let mut event = RecordedEvent {
        position: Position(42),
        stream_id: StreamId::new("order-7f3a").unwrap(),
        stream_version: 3,
        event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        event_type: "OrderPlaced".into(),
        schema_version: 2,
        recorded_at: Timestamp(1_763_900_000_123_456),
        metadata: Metadata {
            correlation_id: Some(Uuid::from_u128(0xc0)),
            causation_id: None,
            actor: Some("api-key:reader-1".into()),
            extra: [("ip".to_string(), "127.0.0.1".to_string())].into(),
        },
        payload: br#"{"customer_id":"c-1","lines":[],"total_cents":0}"#.to_vec(),
        prev_hash: [7; 32],
        hash: [0; 32],
        removed: false,
    };
    event.hash = codec::recompute_hash(&event);
    event
}

fn encode(event: &RecordedEvent) -> Vec<u8> {
    let mut bytes = Vec::new();
    codec::encode_record(
        &RecordFields::of(event),
        &event.prev_hash,
        &event.hash,
        &mut bytes,
    );
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn record_format_v1_is_stable() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/record-v1.hex");
    let event = sample();
    if std::env::var("ANNALS_REGENERATE_FIXTURES").is_ok() {
        std::fs::write(
            path,
            format!("{}\n{}\n", hex(&encode(&event)), hex(&event.hash)),
        )
        .unwrap();
    }
    let fixture = std::fs::read_to_string(path).unwrap();
    let mut lines = fixture.lines();
    let bytes = unhex(lines.next().unwrap());
    let hash = unhex(lines.next().unwrap());

    let decoded = codec::decode_record(&bytes).expect("the committed record decodes");
    assert_eq!(decoded, event, "decoding format 1 changed");
    assert_eq!(decoded.hash.as_slice(), hash.as_slice());
    assert_eq!(
        codec::recompute_hash(&decoded).as_slice(),
        hash.as_slice(),
        "hash rule changed"
    );
    assert_eq!(encode(&event), bytes, "encoding format 1 changed");
}

/// `fixtures/tombstone-v1.hex`: the tombstone of the sample record (format byte 2): the
/// envelope and both hashes, no metadata, no payload. A tombstone's hash is the original
/// record's, so the next record still links to it.
#[test]
fn tombstone_format_v1_is_stable() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tombstone-v1.hex"
    );
    let event = sample();
    let tombstone = codec::encode_tombstone(&event);
    if std::env::var("ANNALS_REGENERATE_FIXTURES").is_ok() {
        std::fs::write(path, format!("{}\n", hex(&tombstone))).unwrap();
    }
    let fixture = std::fs::read_to_string(path).unwrap();
    let bytes = unhex(fixture.lines().next().unwrap());
    assert_eq!(bytes[0], codec::RECORD_TOMBSTONE_V1);
    let decoded = codec::decode_record(&bytes).expect("the committed tombstone decodes");
    assert!(decoded.removed);
    assert_eq!(
        (decoded.position, &decoded.stream_id, decoded.stream_version),
        (event.position, &event.stream_id, event.stream_version)
    );
    assert_eq!(
        (decoded.event_id, &decoded.event_type),
        (event.event_id, &event.event_type)
    );
    assert_eq!(
        (decoded.prev_hash, decoded.hash),
        (event.prev_hash, event.hash)
    );
    assert!(decoded.payload.is_empty() && decoded.metadata == Metadata::default());
    // Its hash cannot be recomputed (the content is gone); verifiers accept it as a link.
    assert_ne!(codec::recompute_hash(&decoded), decoded.hash);
    assert!(codec::hash_checks(&decoded));
    let head = codec::peek_head(&bytes).unwrap();
    assert_eq!((head.position, head.event_type), (42, "OrderPlaced"));
    assert_eq!(tombstone, bytes, "encoding tombstones changed");
}
