//! The real `annals` binary: `keys new-signing`, `export` and `verify`, their output and
//! exit codes, run while this test process holds the event log open for writing.

mod audit_support;
mod common;

use std::path::Path;

use audit_support::*;
use common::binary::annals;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn new_key_pair() -> (String, String) {
    let out = annals(&["keys", "new-signing"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    let (private, public) = (field("private-key:"), field("public-key:"));
    assert_eq!((private.len(), public.len()), (64, 64));
    assert_ne!(private, public);
    (private, public)
}

#[tokio::test]
async fn signed_export_verifies_and_tampering_exits_non_zero_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // This process keeps the log open (and locked) for writing during the whole test.
    let _writer = seed(&log).await;
    let (private, public) = new_key_pair();
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, format!("{private}\n")).unwrap();

    let file = dir.path().join("audit.ndjson");
    let out = annals(&[
        "export",
        "--data-dir",
        s(dir.path()),
        "--output",
        s(&file),
        "--sign-key",
        s(&key_file),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exported 30 events (positions 1..=30) as ndjson"),
        "{}",
        text(&out.stderr)
    );

    let out = annals(&[
        "verify",
        s(&file),
        "--data-dir",
        s(dir.path()),
        "--public-key",
        &public,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("OK: 30 events (positions 1..=30)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("signature valid for the given public key"),
        "{stdout}"
    );

    // Delete the line of position 10.
    let mut lines = read_lines(&file);
    lines.remove(9);
    write_lines(&file, &lines);
    let out = annals(&["verify", s(&file), "--data-dir", s(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("FAILED: deleted event at position 10"),
        "{stderr}"
    );
    assert!(stderr.contains("[DELETED_EVENT]"), "{stderr}");
    assert!(text(&out.stdout).is_empty());

    // A wrong public key on an intact export.
    let intact = dir.path().join("intact.ndjson");
    let out = annals(&[
        "export",
        "--data-dir",
        s(dir.path()),
        "-o",
        s(&intact),
        "--sign-key",
        &private,
    ]);
    assert!(out.status.success());
    let (_, other_public) = new_key_pair();
    let out = annals(&["verify", s(&intact), "--public-key", &other_public]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bad signature"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn filtered_csv_and_stdout_exports_work_beside_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let _writer = seed(&log).await;

    let csv = dir.path().join("alice.csv");
    let out = annals(&[
        "export",
        "--data-dir",
        s(dir.path()),
        "--format",
        "csv",
        "--output",
        s(&csv),
        "--category",
        "order",
        "--actor",
        "alice",
        "--type",
        "OrderPlaced",
        "--correlation-id",
        &CORRELATION.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // alice: odd positions; correlation: 1..=10; OrderPlaced: not divisible by 3.
    let rows = csv::Reader::from_path(&csv).unwrap().records().count();
    assert_eq!(rows, 3, "positions 1, 5 and 7: {}", text(&out.stderr));
    assert!(sidecar_path(&csv).exists());
    let out = annals(&["verify", s(&csv), "--data-dir", s(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("filtered: every hash checked"));

    // To standard output: events, then the manifest line.
    let out = annals(&["export", "--data-dir", s(dir.path()), "--to-position", "5"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6);
    assert!(lines[5].starts_with("{\"manifest\""));
}

#[test]
fn bad_input_exits_with_2_and_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = annals(&[
        "export",
        "--data-dir",
        s(dir.path()),
        "--since",
        "2026-11-24T00:00:00Z",
        "--until",
        "2026-11-23T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--since must be before --until"),
        "{stderr}"
    );
    assert!(stderr.contains("[BAD_USER_INPUT]"), "{stderr}");

    let out = annals(&[
        "export",
        "--data-dir",
        s(dir.path()),
        "--since",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not an RFC 3339 time"));

    let out = annals(&["export", "--data-dir", s(dir.path()), "--sign-key", "abc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("[INVALID_KEY]"),
        "{}",
        text(&out.stderr)
    );

    // No event log there: an I/O failure, exit 3, and nothing is created.
    let missing = dir.path().join("missing");
    let out = annals(&["export", "--data-dir", s(&missing)]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no event log in"));
    assert!(!missing.exists());

    let out = annals(&["verify", s(&missing)]);
    assert_eq!(out.status.code(), Some(3));
}

fn sidecar_path(p: &Path) -> std::path::PathBuf {
    annals::audit::sidecar_path(p)
}
