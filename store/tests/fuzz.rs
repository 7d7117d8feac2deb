//! Fuzz targets of the store's input surfaces, driven by proptest's generators (the one
//! toolchain here is stable, where cargo-fuzz's libFuzzer does not run):
//!
//! - the record decoder: arbitrary bytes and mutated valid records give an error or a
//!   record, never a panic or a huge allocation;
//! - the snapshot decoder, the same way;
//! - stream id and event type validation: any string is accepted or refused with a typed
//!   error, and what is accepted satisfies the documented rules.
//!
//! `make test` runs a smoke of each (`ANNALS_FUZZ_CASES`, default 2,000 cases);
//! `make fuzz` runs them long. Failing inputs are kept by proptest in
//! `proptest-regressions/` next to this file and replayed first on every run.

use annals_store::codec::{self, RecordFields};
use annals_store::{Metadata, Position, StoreError, StreamId, category_of, validate_event_type};
use proptest::prelude::*;
use uuid::Uuid;

fn cases() -> u32 {
    std::env::var("ANNALS_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000)
}

fn valid_record(payload: &[u8], stream: &str, event_type: &str) -> Vec<u8> {
    let metadata = Metadata {
        actor: Some("fuzz".into()),
        ..Metadata::default()
    };
    let id = Uuid::from_u128(7);
    let fields = RecordFields {
        position: Position(42),
        stream_id: stream,
        stream_version: 3,
        event_id: &id,
        event_type,
        schema_version: 1,
        recorded_at: annals_store::Timestamp(1_700_000_000_000_000),
        metadata: &metadata,
        payload,
    };
    let hash = codec::chain_hash(&fields, &codec::GENESIS_HASH);
    let mut out = Vec::new();
    codec::encode_record(&fields, &codec::GENESIS_HASH, &hash, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))), ..ProptestConfig::default() })]

    #[test]
    fn record_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode_record(&bytes);
        let mut framed = vec![codec::RECORD_FORMAT_V1];
        framed.extend_from_slice(&bytes);
        let _ = codec::decode_record(&framed);
    }

    #[test]
    fn record_decoder_survives_mutations_of_valid_records(
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let record = valid_record(&payload, "order-1", "OrderPlaced");
        let decoded = codec::decode_record(&record).expect("a valid record decodes");
        prop_assert_eq!(codec::recompute_hash(&decoded), decoded.hash);
        let mut mutated = record.clone();
        for (index, value) in &flips {
            let i = index.index(mutated.len());
            mutated[i] ^= value | 1;
        }
        if let Ok(event) = codec::decode_record(&mutated) {
            // A mutation that still decodes must not pass the hash check unless it hit
            // only bytes outside the hashed body (the stored hashes themselves).
            if event.payload != decoded.payload || event.stream_id != decoded.stream_id {
                prop_assert_ne!(codec::recompute_hash(&event), event.hash);
            }
        }
        let truncated = &record[..cut.index(record.len())];
        prop_assert!(codec::decode_record(truncated).is_err());
    }

    #[test]
    fn huge_length_prefixes_are_refused_without_allocating(len in (codec::MAX_RECORD_BYTES as u64)..u64::MAX) {
        // A record whose first string claims an enormous length.
        let mut bytes = vec![codec::RECORD_FORMAT_V1, 42];
        bytes.push(253); // bincode varint marker for a u64 length
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(b"order-1");
        prop_assert!(codec::decode_record(&bytes).is_err());
    }

    #[test]
    fn head_peek_never_panics_and_agrees_with_the_full_decode(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut framed = vec![codec::RECORD_FORMAT_V1];
        framed.extend_from_slice(&bytes);
        if let (Ok(full), Ok(head)) = (codec::decode_record(&framed), codec::peek_head(&framed)) {
            prop_assert_eq!(head.position, full.position.0);
            prop_assert_eq!(head.stream_id, full.stream_id.as_str());
            prop_assert_eq!(head.event_type, full.event_type.as_str());
        }
    }

    #[test]
    fn snapshot_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode_snapshot(&bytes);
    }

    #[test]
    fn stream_ids_are_accepted_exactly_when_the_rules_hold(id in "\\PC{0,3}|.{0,300}|[\\x00-\\x1f]{1,3}") {
        match StreamId::new(id.clone()) {
            Ok(stream) => {
                prop_assert!(!id.is_empty() && id.len() <= 256);
                prop_assert!(!id.chars().any(char::is_control));
                prop_assert_eq!(stream.category(), category_of(&id));
            }
            Err(StoreError::InvalidStreamId { .. }) => {
                prop_assert!(id.is_empty() || id.len() > 256 || id.chars().any(char::is_control));
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn event_types_are_accepted_exactly_when_the_rules_hold(t in "[A-Za-z0-9_.:-]{0,130}|\\PC{1,20}") {
        let valid = !t.is_empty()
            && t.len() <= 128
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        match validate_event_type(&t) {
            Ok(()) => prop_assert!(valid, "{t:?} accepted"),
            Err(StoreError::InvalidEventType { .. }) => prop_assert!(!valid, "{t:?} refused"),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}
