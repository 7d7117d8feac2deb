//! The published contracts and the CLI around them: the committed SDL and event JSON
//! Schemas match the code, graphql-js (a GraphQL implementation nobody here wrote)
//! accepts the served schema, and the `keys`/`serve` commands behave.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestServer;

#[test]
fn published_contracts_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let problems = annals::contracts::check(&dir).unwrap();
    assert!(
        problems.is_empty(),
        "the published contracts are stale; run `cargo run -- schema` and commit schema/:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_event_type_and_version_has_a_schema() {
    let contracts = annals::contracts::generate().unwrap();
    let names: Vec<String> = contracts
        .iter()
        .map(|c| c.path.display().to_string())
        .collect();
    for expected in [
        "annals.graphql",
        "events/OrderPlaced.v1.json",
        "events/OrderPlaced.v2.json",
        "events/OrderConfirmed.v1.json",
        "events/OrderShipped.v1.json",
        "events/OrderCancelled.v1.json",
        "events/ProductRegistered.v1.json",
        "events/StockReceived.v1.json",
        "events/StockReserved.v1.json",
        "events/StockReleased.v1.json",
        "events/PriceChanged.v1.json",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected}: {names:?}"
        );
    }
    let placed = contracts
        .iter()
        .find(|c| c.path.ends_with("OrderPlaced.v2.json"))
        .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&placed.contents).unwrap();
    assert_eq!(schema["x-annals-schema-version"], 2);
    assert!(
        schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "total_cents")
    );
    assert!(
        schema["$defs"]["OrderLine"].is_object(),
        "referenced types travel along"
    );
    let sdl = &contracts[0].contents;
    assert!(sdl.contains("scalar Position") && sdl.contains("scalar Version"));
}

fn annals() -> Command {
    Command::new(env!("CARGO_BIN_EXE_annals"))
}

#[test]
fn keys_new_prints_a_key_once_and_its_configuration_line() {
    let output = annals()
        .args(["keys", "new", "--role", "writer"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("ank_"))
        .expect("a key");
    let line = text.lines().last().unwrap();
    assert_eq!(
        line,
        format!("writer:{}", annals::server::auth::hash_key(key))
    );
    let keys = annals::server::auth::ApiKeys::parse(line).unwrap();
    assert!(keys.principal_for_key(key).is_some());
    let bad = annals()
        .args(["keys", "new", "--role", "root"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn serve_refuses_a_public_address_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let output = annals()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("ANNALS_API_KEYS")
        .env_remove("ANNALS_API_KEYS_FILE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without API keys"), "{stderr}");
    assert!(
        !dir.path().join("log").exists(),
        "refused before opening the store"
    );
}

/// Runs graphql-js against the live schema. Skips (with the reason printed) only when
/// node is not installed; a failing `npm ci` or a rejected schema fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_js_accepts_the_schema() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED graphql_js_accepts_the_schema: node is not installed");
        return;
    }
    if !js.join("node_modules/graphql/package.json").exists() {
        let status = Command::new("npm")
            .args(["ci", "--prefer-offline", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in tests/js failed");
    }
    let server = TestServer::open().await;
    let url = server.url("/graphql");
    // The server runs on this runtime; node waits on another thread.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("check-schema.mjs")
            .arg(&url)
            .current_dir(&js)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "graphql-js refused:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("graphql-js accepts the schema"), "{stdout}");
}

/// The real binary: request ids on the request's log lines, and SIGTERM stops it
/// gracefully with every acknowledged event durable.
#[cfg(unix)]
#[test]
fn serve_logs_request_ids_and_stops_gracefully_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let mut child = annals()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info,annals::server=debug")
        .env("NO_COLOR", "1")
        .env_remove("ANNALS_API_KEYS")
        .env_remove("ANNALS_API_KEYS_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Whatever happens below, the server does not outlive the test.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let guard = KillOnDrop(child.id());
    let mut log = Vec::new();
    let addr = loop {
        let line = lines.next().expect("the server logs").unwrap();
        log.push(line.clone());
        if line.contains("annals serving")
            && let Some(rest) = line.split("addr=").nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(
        log.iter().any(|l| l.contains("no API keys configured")),
        "warns about running without keys: {log:?}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/graphql"))
            .header("x-request-id", "req-e2e-42")
            .json(&serde_json::json!({ "query":
                r#"mutation { registerProduct(productId: "p1", sku: "S", name: "N", priceCents: 5) { position } }"# }))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    log.extend(lines.map_while(Result::ok));
    let exit = child.wait().unwrap();
    std::mem::forget(guard);
    assert!(exit.success(), "exit {exit:?}; log:\n{}", log.join("\n"));

    let request_lines: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("processing request"))
        .collect();
    assert!(request_lines.len() >= 2, "{log:?}");
    for line in request_lines {
        assert!(line.contains("request_id=req-e2e-42"), "{line}");
    }
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("event store closed")),
        "{log:?}"
    );

    // The acknowledged command is in the log after the shutdown.
    let store = annals_store::RocksEventStore::open(
        dir.path().join("log"),
        annals_store::StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(annals_store::EventStore::head(&store).get(), 1);
}
