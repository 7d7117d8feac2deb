//! The real `annals serve` binary as a child process, for the crash loops: started on a
//! free loopback port over a data directory, its stderr appended to a log file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running `annals serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
}

/// Starts `annals serve` over `data` with `args` after the common ones (anonymous clients
/// without a rate limit: the limiter is not under test in a crash loop).
pub fn spawn_server(data: &Path, log: &Path, args: &[&str]) -> Server {
    let port = free_port();
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--rate-limit", "1000000", "--rate-burst", "1000000"])
        .args(args)
        .env_remove("ANNALS_API_KEYS")
        .env_remove("ANNALS_API_KEYS_FILE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Polls `/ready` until it answers 200; returns how long that took. Fails if the server
/// exits first (with its log) or takes longer than `within`.
pub async fn wait_ready(
    server: &mut Server,
    http: &reqwest::Client,
    log: &Path,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(response) = http.get(format!("{}/ready", server.base)).send().await
            && response.status().as_u16() == 200
        {
            return started.elapsed();
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!(
                "server exited with {status} before it was ready:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(started.elapsed() < within, "not ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The number of kills a crash loop runs: `var` from the environment, else `default`.
pub fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// The runtime a crash loop drives its clients on (two workers, as the machine has two
/// cores), and the HTTP client they share.
pub fn client_runtime() -> (tokio::runtime::Runtime, reqwest::Client) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = {
        let _entered = rt.enter();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    (rt, http)
}

/// A GraphQL request to `base`; `None` when the server did not answer (it was killed).
pub async fn graphql(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    variables: serde_json::Value,
) -> Option<serde_json::Value> {
    let response = http
        .post(format!("{base}/graphql"))
        .json(&serde_json::json!({ "query": query, "variables": variables }))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// Runs the `annals` binary with `args` (no data directory or signing key from the
/// environment) and returns what it printed.
pub fn annals(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .env_remove("ANNALS_DATA_DIR")
        .env_remove("ANNALS_SIGN_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run annals")
}
