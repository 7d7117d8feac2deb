//! Revoking API keys while the real `annals serve` binary runs: the keys file is edited
//! (a `revoked:` line, or the key's line removed) and the server is sent SIGHUP. The key
//! is refused with `UNAUTHENTICATED` from then on, other keys keep working, new keys are
//! picked up, a broken or empty file is refused with the keys in force kept, and the
//! server stays up throughout.

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

fn spawn_server(data: &Path, keys: &Path, log: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-keys-file"])
        .arg(keys)
        .env_remove("ANNALS_API_KEYS")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn hangup(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `{ head }` as `key`: the HTTP status and the first error's code and message, if any.
async fn head(
    http: &reqwest::Client,
    server: &Server,
    key: &str,
) -> (u16, Option<(String, String)>) {
    let response = http
        .post(format!("{}/graphql", server.base))
        .bearer_auth(key)
        .json(&json!({ "query": "{ head }" }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let error = body["errors"][0].as_object().map(|e| {
        (
            e["extensions"]["code"]
                .as_str()
                .unwrap_or("<no code>")
                .to_string(),
            e["message"].as_str().unwrap_or_default().to_string(),
        )
    });
    (status, error)
}

/// Polls until `key` gets `status` (the reload is asynchronous to the signal).
async fn until_status(
    http: &reqwest::Client,
    server: &Server,
    key: &str,
    status: u16,
) -> Option<(String, String)> {
    let started = Instant::now();
    loop {
        let (got, error) = head(http, server, key).await;
        if got == status {
            return error;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still {got} ({error:?}) instead of {status} after the reload"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn hash_of(line: &str) -> &str {
    line.split_once(':').unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_after_sighup_while_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    let log = dir.path().join("server.log");
    let (reader, reader_line) = generate_key(Role::Reader).unwrap();
    let (admin, admin_line) = generate_key(Role::Admin).unwrap();
    std::fs::write(&keys, format!("{reader_line}\n{admin_line}\n")).unwrap();
    let server = spawn_server(&dir.path().join("data"), &keys, &log);
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    assert_eq!(head(&http, &server, &reader).await, (200, None));

    // Revoked with a marker line; its role line is still there and must not matter.
    std::fs::write(
        &keys,
        format!(
            "{reader_line}\n{admin_line}\nrevoked:{}\n",
            hash_of(&reader_line)
        ),
    )
    .unwrap();
    hangup(&server);
    let (code, message) = until_status(&http, &server, &reader, 401).await.unwrap();
    assert_eq!(code, "UNAUTHENTICATED");
    assert!(message.contains("revoked"), "{message}");
    assert_eq!(
        head(&http, &server, &admin).await,
        (200, None),
        "other keys work"
    );

    // A new key is picked up; a key whose line is removed is refused as unknown.
    let (writer, writer_line) = generate_key(Role::Writer).unwrap();
    std::fs::write(&keys, format!("{writer_line}\n{admin_line}\n")).unwrap();
    hangup(&server);
    until_status(&http, &server, &writer, 200).await;
    let (status, error) = head(&http, &server, &reader).await;
    assert_eq!(status, 401);
    assert_eq!(error.unwrap().0, "UNAUTHENTICATED");

    // A file that does not parse, or that has no keys at all, is refused: the keys in
    // force stay (an empty set would let everyone in).
    for broken in ["this is not a key line\n", "# nothing\n"] {
        std::fs::write(&keys, broken).unwrap();
        hangup(&server);
        let started = Instant::now();
        while std::fs::read_to_string(&log)
            .unwrap()
            .matches("API keys not reloaded")
            .count()
            < if broken.starts_with('#') { 2 } else { 1 }
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no refusal logged"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(head(&http, &server, &writer).await, (200, None));
        assert_eq!(head(&http, &server, &admin).await, (200, None));
        let (status, _) = head(&http, &server, &reader).await;
        assert_eq!(status, 401);
        let anonymous = http
            .post(format!("{}/graphql", server.base))
            .json(&json!({ "query": "{ head }" }))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
    }

    // Still up and serving.
    let health = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
