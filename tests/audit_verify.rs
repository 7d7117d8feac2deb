//! Tamper detection on real export files: each kind of tampering is reported as the first
//! fault with the right position and message, with and without the store.

mod audit_support;

use annals::audit::{
    ExportOptions, FaultKind, Format, VerifyOptions, generate_signing_key, verify,
};
use annals_store::codec::recompute_hash;
use audit_support::*;

fn no_key() -> VerifyOptions {
    VerifyOptions::default()
}

/// A fresh seeded log and its full NDJSON export.
async fn exported(dir: &std::path::Path) -> (annals_store::RocksEventStore, std::path::PathBuf) {
    let store = seed(&dir.join("log")).await;
    let path = dir.join("export.ndjson");
    export_to(&store, ExportOptions::default(), &path).await;
    (store, path)
}

#[tokio::test]
async fn round_trip_of_the_whole_log_verifies_against_the_store_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let store = seed(&dir.path().join("log")).await;
    for format in [Format::Ndjson, Format::Csv, Format::Cloudevents] {
        let path = dir.path().join(format!("all.{}", format.as_str()));
        let options = ExportOptions {
            format,
            page_size: 7,
            ..ExportOptions::default()
        };
        export_to(&store, options, &path).await;
        let report = verify(&path, Some(&store), &no_key()).await.unwrap();
        assert_eq!(report.events, EVENTS, "{format:?}");
        assert_eq!(report.first_position, Some(1));
        assert_eq!(report.last_position, Some(EVENTS));
        assert!(report.contiguous && report.against_store);
        assert!(report.to_string().starts_with("OK: 30 events"), "{report}");
    }
    // The store's own chain check agrees.
    use annals_store::{EventStore, Position};
    assert!(
        store
            .verify_chain(Position(1), Position(EVENTS))
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn filtered_exports_verify_event_by_event_and_against_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = seed(&dir.path().join("log")).await;
    let path = dir.path().join("alice.ndjson");
    let mut options = ExportOptions::default();
    options.filters.actors = vec!["alice".into()];
    options.filters.categories = vec!["order".into()];
    export_to(&store, options, &path).await;
    let report = verify(&path, Some(&store), &no_key()).await.unwrap();
    // alice = odd positions; order = positions not divisible by 4: all odd ones.
    assert_eq!(report.events, 15);
    assert!(!report.contiguous);

    // Deleting a line of a filtered export: the store locates it, the manifest counts it.
    let mut lines = read_lines(&path);
    lines.remove(2); // position 5
    write_lines(&path, &lines);
    let f = fault_of(&path, Some(&store), &no_key()).await;
    assert_fault(
        &f,
        FaultKind::DeletedEvent,
        Some(5),
        "deleted event at position 5",
    );
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::ManifestMismatch,
        None,
        "counts 15 events, the file has 14",
    );
}

#[tokio::test]
async fn a_modified_payload_byte_is_detected_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = exported(dir.path()).await;
    let mut lines = read_lines(&path);
    assert!(lines[6].contains(r#""payload":{"i":7,"#));
    lines[6] = lines[6].replacen(r#""i":7"#, r#""i":8"#, 1);
    write_lines(&path, &lines);
    for s in [None, Some(&store)] {
        let f = fault_of(&path, s, &no_key()).await;
        assert_fault(
            &f,
            FaultKind::ModifiedEvent,
            Some(7),
            "modified payload or metadata at position 7",
        );
        assert_eq!(f.line, Some(7));
    }
}

#[tokio::test]
async fn modified_metadata_is_detected_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, path) = exported(dir.path()).await;
    let mut lines = read_lines(&path);
    lines[3] = lines[3].replacen(r#""actor":"bob""#, r#""actor":"eve""#, 1);
    write_lines(&path, &lines);
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::ModifiedEvent,
        Some(4),
        "modified payload or metadata at position 4",
    );
}

#[tokio::test]
async fn a_deleted_line_is_detected_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = exported(dir.path()).await;
    let mut lines = read_lines(&path);
    lines.remove(9); // position 10
    write_lines(&path, &lines);
    for s in [None, Some(&store)] {
        let f = fault_of(&path, s, &no_key()).await;
        assert_fault(
            &f,
            FaultKind::DeletedEvent,
            Some(10),
            "deleted event at position 10",
        );
    }
    // The first line too: the manifest says where the export starts.
    let mut lines = read_lines(&path);
    lines.remove(0);
    write_lines(&path, &lines);
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::DeletedEvent,
        Some(1),
        "position 1 is missing",
    );
}

#[tokio::test]
async fn swapped_lines_are_reported_as_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = exported(dir.path()).await;
    let mut lines = read_lines(&path);
    lines.swap(4, 5); // positions 5 and 6
    write_lines(&path, &lines);
    for s in [None, Some(&store)] {
        let f = fault_of(&path, s, &no_key()).await;
        assert_fault(
            &f,
            FaultKind::ReorderedEvents,
            Some(5),
            "reordered events at position 5",
        );
    }
}

/// A forged copy of the line for `position` with another payload and a recomputed hash.
async fn forged_line(store: &annals_store::RocksEventStore, line: &str, position: u64) -> String {
    let mut event = event_at(store, position).await;
    event.payload = br#"{"i":999,"note":"forged"}"#.to_vec();
    event.hash = recompute_hash(&event);
    let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
    value["payload"] = serde_json::from_slice(&event.payload).unwrap();
    value["hash"] = hex::encode(event.hash).into();
    serde_json::to_string(&value).unwrap()
}

#[tokio::test]
async fn an_inserted_forged_line_with_a_recomputed_hash_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = exported(dir.path()).await;
    let original = read_lines(&path);
    // Inserted before the real position 8, claiming position 8 and linking to 7.
    let forged = forged_line(&store, &original[7], 8).await;
    let mut lines = original.clone();
    lines.insert(7, forged.clone());
    write_lines(&path, &lines);
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::InsertedEvent,
        Some(8),
        "a second event claims position 8",
    );
    let f = fault_of(&path, Some(&store), &no_key()).await;
    assert_fault(
        &f,
        FaultKind::InsertedEvent,
        Some(8),
        "differs from the one the store holds",
    );

    // Replacing the real line instead: the next event's link exposes it.
    let mut lines = original.clone();
    lines[7] = forged;
    write_lines(&path, &lines);
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(&f, FaultKind::InsertedEvent, Some(8), "forged or replaced");

    // Appended after the last event, linking to it: past the manifest.
    let mut last = event_at(&store, EVENTS).await;
    last.position = annals_store::Position(EVENTS + 1);
    last.stream_version += 1;
    last.prev_hash = last.hash;
    last.hash = recompute_hash(&last);
    let mut value: serde_json::Value =
        serde_json::from_str(&original[EVENTS as usize - 1]).unwrap();
    value["position"] = (EVENTS + 1).into();
    value["stream_version"] = last.stream_version.into();
    value["prev_hash"] = hex::encode(last.prev_hash).into();
    value["hash"] = hex::encode(last.hash).into();
    let mut lines = original;
    lines.insert(EVENTS as usize, serde_json::to_string(&value).unwrap());
    write_lines(&path, &lines);
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::InsertedEvent,
        Some(EVENTS + 1),
        "the manifest ends the export at position 30",
    );
}

#[tokio::test]
async fn a_truncated_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, path) = exported(dir.path()).await;
    let bytes = std::fs::read(&path).unwrap();
    let lines = read_lines(&path);
    // Cut in the middle of line 20.
    let cut: usize = lines[..19].iter().map(|l| l.len() + 1).sum::<usize>() + 40;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::TruncatedFile,
        Some(20),
        "truncated file at position 20",
    );
    // Cut at a line boundary: the manifest line is gone.
    write_lines(&path, &lines[..25]);
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::TruncatedFile,
        Some(26),
        "ends without its manifest line",
    );
    // Events cut at the end of a CSV export whose sidecar manifest survived.
    let store = seed(&dir.path().join("log2")).await;
    let csv = dir.path().join("export.csv");
    let options = ExportOptions {
        format: Format::Csv,
        ..ExportOptions::default()
    };
    export_to(&store, options, &csv).await;
    let rows = read_lines(&csv);
    // Row 13 has a pretty-printed payload over three lines: keep rows up to position 20.
    let keep = rows.iter().position(|r| r.starts_with("21,")).unwrap();
    write_lines(&csv, &rows[..keep]);
    let f = fault_of(&csv, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::TruncatedFile,
        Some(21),
        "last event is at position 20, the manifest's at 30",
    );
}

#[tokio::test]
async fn an_edited_manifest_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, path) = exported(dir.path()).await;
    let mut lines = read_lines(&path);
    let last = lines.len() - 1;
    lines[last] = lines[last].replacen(r#""count":30"#, r#""count":31"#, 1);
    write_lines(&path, &lines);
    let f = fault_of(&path, None, &no_key()).await;
    assert_fault(
        &f,
        FaultKind::ManifestMismatch,
        None,
        "manifest mismatch: the manifest counts 31 events",
    );
}

#[tokio::test]
async fn signatures_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = seed(&dir.path().join("log")).await;
    let key = generate_signing_key().unwrap();
    let path = dir.path().join("signed.ndjson");
    let options = ExportOptions {
        signing_key: Some(key.clone()),
        ..ExportOptions::default()
    };
    export_to(&store, options, &path).await;
    let pinned = VerifyOptions {
        public_key: Some(key.verifying_key()),
    };
    let report = verify(&path, Some(&store), &pinned).await.unwrap();
    assert_eq!(report.signature_pinned, Some(true));

    // Another key.
    let other = VerifyOptions {
        public_key: Some(generate_signing_key().unwrap().verifying_key()),
    };
    let f = fault_of(&path, None, &other).await;
    assert_fault(&f, FaultKind::BadSignature, None, "signed with another key");

    // An edited signed manifest: the signature no longer matches.
    let mut lines = read_lines(&path);
    let last = lines.len() - 1;
    lines[last] = lines[last].replacen(r#""head_at_start":30"#, r#""head_at_start":29"#, 1);
    write_lines(&path, &lines);
    let f = fault_of(&path, None, &pinned).await;
    assert_fault(
        &f,
        FaultKind::BadSignature,
        None,
        "bad signature: the signature does not match the manifest",
    );

    // An unsigned export when a key is required.
    let unsigned = dir.path().join("unsigned.ndjson");
    export_to(&store, ExportOptions::default(), &unsigned).await;
    let f = fault_of(&unsigned, None, &pinned).await;
    assert_fault(&f, FaultKind::BadSignature, None, "not signed");
}

#[tokio::test]
async fn a_store_that_differs_from_the_export_is_reported() {
    // The export is intact but the store given is another log: every event differs.
    let dir = tempfile::tempdir().unwrap();
    let (_store, path) = exported(dir.path()).await;
    let other = seed(&dir.path().join("other")).await;
    let f = fault_of(&path, Some(&other), &no_key()).await;
    assert_fault(
        &f,
        FaultKind::InsertedEvent,
        Some(1),
        "differs from the one the store holds",
    );
}
