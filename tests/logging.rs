//! `--log-format json`: every line on stderr is one JSON object, and the lines of a
//! request carry its request id and principal.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use annals::server::auth::{Role, generate_key};
use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(data: &Path, keys: &Path, log: &Path, format: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["--log-format", format, "serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-keys-file"])
        .arg(keys)
        .env_remove("ANNALS_API_KEYS")
        .env_remove("ANNALS_LOG_FORMAT")
        .env("RUST_LOG", "info,annals::server=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Sends `{ head }` with `request_id` until the server answers (it may still be starting).
async fn head(server: &Server, key: &str, request_id: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = http
            .post(format!("{}/graphql", server.base))
            .bearer_auth(key)
            .header("x-request-id", request_id)
            .json(&json!({ "query": "{ head }" }))
            .send()
            .await;
        if let Ok(response) = sent {
            assert_eq!(response.status(), 200);
            return;
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The log's lines once one of them contains `needle` (or panics after a while).
async fn lines_until(log: &Path, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text.lines().map(str::to_string).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no log line mentions {needle}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_request_id_and_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let (key, line) = generate_key(Role::Writer).unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("{line}\n")).unwrap();
    let log = dir.path().join("stderr.log");
    let server = spawn_server(&dir.path().join("data"), &keys, &log, "json");
    head(&server, &key, "log-test-7f3a").await;
    let lines = lines_until(&log, "log-test-7f3a").await;

    let mut of_the_request = 0;
    for line in &lines {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(object["level"].is_string(), "{line}");
        let spans = object["spans"].as_array().cloned().unwrap_or_default();
        let Some(request) = spans.iter().find(|s| s["name"] == "request") else {
            continue;
        };
        if request["request_id"] != "log-test-7f3a" {
            continue;
        }
        of_the_request += 1;
        assert_eq!(request["path"], "/graphql", "{line}");
        let principal = request["principal"].as_str().unwrap_or_default();
        assert!(
            principal.starts_with("key:"),
            "a line of the request without its principal: {line}"
        );
    }
    assert!(of_the_request > 0, "no line of the request:\n{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_the_default_format() {
    let dir = tempfile::tempdir().unwrap();
    let (key, line) = generate_key(Role::Writer).unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("{line}\n")).unwrap();
    let log = dir.path().join("stderr.log");
    let server = spawn_server(&dir.path().join("data"), &keys, &log, "text");
    head(&server, &key, "log-test-text").await;
    let lines = lines_until(&log, "log-test-text").await;
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{lines:?}"
    );
    drop(server);
}
