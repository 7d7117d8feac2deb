//! Export outputs read by standard parsers (the `csv` crate, a JSON Schema of CloudEvents
//! 1.0), the documented payload fields, and exports through a read-only handle while a
//! writer holds the log.

mod audit_support;

use annals::audit::{ExportOptions, Format, Manifest, verify};
use annals_store::{EventStore, ExpectedVersion, NewEvent, RocksEventStore, StoreError, StreamId};
use audit_support::*;

/// The required and optional context attributes of CloudEvents 1.0 (JSON format), with
/// Annals' extension attributes.
fn cloudevents_schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["id", "source", "specversion", "type"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "source": {"type": "string", "minLength": 1, "format": "uri-reference"},
            "specversion": {"const": "1.0"},
            "type": {"type": "string", "minLength": 1},
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string", "minLength": 1},
            "datacontenttype": {"type": "string"},
            "data_base64": {"type": "string", "contentEncoding": "base64"},
            "annalsposition": {"type": "integer", "minimum": 1},
            "annalsstreamversion": {"type": "integer", "minimum": 1},
            "annalsschemaversion": {"type": "integer"},
            "annalsmetadata": {"type": "string"},
            "annalsprevhash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "annalshash": {"type": "string", "pattern": "^[0-9a-f]{64}$"}
        },
        // Context attribute names: lowercase letters and digits only (data_base64 is the
        // one member the JSON format adds).
        "propertyNames": {"anyOf": [{"pattern": "^[a-z0-9]{1,20}$"}, {"const": "data_base64"}]},
        "not": {"required": ["data", "data_base64"]},
        "allOf": [
            {"required": ["time", "subject", "datacontenttype", "annalsposition",
                          "annalsstreamversion", "annalsschemaversion", "annalsmetadata",
                          "annalsprevhash", "annalshash"]},
            {"anyOf": [{"required": ["data"]}, {"required": ["data_base64"]}]}
        ]
    })
}

#[tokio::test]
async fn cloudevents_lines_satisfy_the_cloudevents_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    let store = seed(&dir.path().join("log")).await;
    let path = dir.path().join("events.ce.jsonl");
    let options = ExportOptions {
        format: Format::Cloudevents,
        ..ExportOptions::default()
    };
    export_to(&store, options, &path).await;
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&cloudevents_schema())
        .unwrap();
    let lines = read_lines(&path);
    assert_eq!(
        lines.len() as u64,
        EVENTS,
        "no manifest inside the CloudEvents file"
    );
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{line}: {errors:?}");
    }
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["subject"], "order-1");
    assert_eq!(first["source"], "/annals/order");
    assert_eq!(first["data"], serde_json::json!({"i": 1, "note": "ok"}));
    assert_eq!(first["annalsactor"], "alice");
    // The non-JSON payload travels as data_base64, exactly.
    let twelve: serde_json::Value = serde_json::from_str(&lines[11]).unwrap();
    assert_eq!(twelve["data_base64"], "//54Cg==");
    assert_eq!(twelve["datacontenttype"], "application/octet-stream");
    // The sidecar manifest is there and the file verifies against the store.
    let sidecar = std::fs::read_to_string(annals::audit::verify::sidecar_path(&path)).unwrap();
    assert_eq!(Manifest::from_line(sidecar.trim()).unwrap().count, EVENTS);
    verify(&path, Some(&store), &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn csv_parses_with_the_csv_crate_and_quotes_properly() {
    let dir = tempfile::tempdir().unwrap();
    let store = seed(&dir.path().join("log")).await;
    let path = dir.path().join("events.csv");
    let options = ExportOptions {
        format: Format::Csv,
        ..ExportOptions::default()
    };
    export_to(&store, options, &path).await;
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let headers = reader.headers().unwrap().clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        annals::audit::format::CSV_HEADER.to_vec()
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len() as u64, EVENTS);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 13);
        assert_eq!(row[0].parse::<u64>().unwrap(), i as u64 + 1);
        assert_eq!(row[11].len(), 64);
        // Only a tombstone says so in the last column.
        assert_eq!(&row[12], "");
        let metadata: serde_json::Value = serde_json::from_str(&row[7]).unwrap();
        assert_eq!(metadata["extra"]["ip"], "10.0.0.1");
    }
    // Quotes, commas and line breaks inside cells survive.
    let payload: serde_json::Value = serde_json::from_str(&rows[0][8]).unwrap();
    assert_eq!(payload["note"], "ok");
    assert_eq!(&rows[12][8], "{\n  \"i\": 13\n}");
    assert_eq!(&rows[11][8], "");
    assert_eq!(&rows[11][9], "//54Cg==");
    assert!(
        rows[0][6].ends_with('Z') && rows[0][6].len() == 27,
        "{}",
        &rows[0][6]
    );
}

#[tokio::test]
async fn ndjson_documents_non_json_and_reformatted_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let store = seed(&dir.path().join("log")).await;
    let path = dir.path().join("events.ndjson");
    export_to(&store, ExportOptions::default(), &path).await;
    let lines = read_lines(&path);
    assert_eq!(lines.len() as u64, EVENTS + 1);
    let twelve: serde_json::Value = serde_json::from_str(&lines[11]).unwrap();
    assert_eq!(twelve["payload"], serde_json::Value::Null);
    assert_eq!(twelve["payload_base64"], "//54Cg==");
    let thirteen: serde_json::Value = serde_json::from_str(&lines[12]).unwrap();
    assert_eq!(thirteen["payload"], serde_json::json!({"i": 13}));
    assert!(thirteen["payload_base64"].is_string());
    let one: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(one.get("payload_base64").is_none());
    assert_eq!(one["prev_hash"], "0".repeat(64));
    let manifest = Manifest::from_line(&lines[30]).unwrap();
    assert_eq!(
        (
            manifest.count,
            manifest.first_position,
            manifest.last_position
        ),
        (EVENTS, Some(1), Some(EVENTS))
    );
    let thirtieth: serde_json::Value = serde_json::from_str(&lines[29]).unwrap();
    assert_eq!(manifest.last_hash.as_deref(), thirtieth["hash"].as_str());
    assert_eq!(manifest.tool_version, env!("CARGO_PKG_VERSION"));
    assert!(manifest.contiguous);
}

#[tokio::test]
async fn export_reads_a_consistent_snapshot_while_a_writer_holds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let writer = seed(&log).await;
    // The writer keeps the RocksDB lock; a read-only handle opens beside it.
    assert!(matches!(
        RocksEventStore::open(&log, Default::default()).unwrap_err(),
        StoreError::Locked { .. }
    ));
    let reader = RocksEventStore::open_read_only(&log).unwrap();
    assert!(reader.is_read_only());
    assert_eq!(reader.head().get(), EVENTS);
    let err = reader
        .append(
            StreamId::new("order-9").unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::json("X", &serde_json::json!({}))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }));

    // Appends after the read-only open are not part of its snapshot.
    writer
        .append(
            StreamId::new("order-9").unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::json("Late", &serde_json::json!({}))],
        )
        .await
        .unwrap();
    let path = dir.path().join("snapshot.ndjson");
    export_to(&reader, ExportOptions::default(), &path).await;
    let report = verify(&path, Some(&reader), &Default::default())
        .await
        .unwrap();
    assert_eq!(report.events, EVENTS);
    // And the export also verifies against the live writer's handle.
    let report = verify(&path, Some(&writer), &Default::default())
        .await
        .unwrap();
    assert_eq!(report.last_position, Some(EVENTS));
}
