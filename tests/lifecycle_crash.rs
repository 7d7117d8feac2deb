//! Backups and retention under `kill -9`: the real `annals serve` binary with a retention
//! rule, clients appending all the while, and a `kill -9` at a random moment while a backup
//! runs (`annals backup --data-dir D --to B`, which goes through the server) and while a
//! retention pass runs, 5 times each.
//!
//! After every kill: the data directory opens, its whole chain verifies, and every
//! acknowledged append is at its position (as itself, or as a tombstone when retention
//! removed it); the backup directory's latest backup either restores and verifies, or is
//! refused with `INCOMPLETE_BACKUP`, never half restored.
//!
//! `ANNALS_LIFECYCLE_CRASH_ROUNDS` sets the number of kills of each kind (default 5).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::lifecycle::{LifecycleError, backup};
use annals_store::{EventStore, Position, RocksEventStore, StoreOptions};
use common::binary::{self, Server, graphql};
use serde_json::{Value, json};

mod common;

const WRITERS: usize = 4;

fn spawn_server(data: &Path, log: &Path) -> Server {
    binary::spawn_server(
        data,
        log,
        &[
            "--checkout",
            "off",
            "--retention",
            "line:max-count=3",
            "--retention-interval-secs",
            "1",
        ],
    )
}

const APPEND: &str = r#"mutation($s: String!, $n: Int!) {
  appendToStream(streamId: $s, expectedVersion: {state: ANY}, events: [{type: "Line", payload: {n: $n, text: "some bytes to copy"}}]) { position }
}"#;

/// Acknowledged appends: position → (stream, n).
type Acked = Arc<Mutex<BTreeMap<u64, (String, i64)>>>;

async fn writer(
    http: reqwest::Client,
    base: String,
    w: usize,
    acked: Acked,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        // Many streams, so retention always finds old events to remove.
        let stream = format!("line-{w}x{}", n % 50);
        let answer = graphql(&http, &base, APPEND, json!({ "s": stream, "n": n })).await;
        if let Some(position) = answer
            .as_ref()
            .and_then(|a| a["data"]["appendToStream"]["position"].as_str())
        {
            acked
                .lock()
                .unwrap()
                .insert(position.parse().unwrap(), (stream, n));
        }
        n += 1;
    }
}

/// The data directory after a kill: it opens, its chain verifies, every acknowledged
/// append is where it was acknowledged.
async fn check_data(data: &Path, acked: &Acked) -> u64 {
    let store = RocksEventStore::open(data.join("log"), StoreOptions::default()).unwrap();
    let head = store.head();
    let report = store.verify_chain(Position::FIRST, head).await.unwrap();
    assert!(report.is_ok(), "chain after a kill: {report:?}");
    let acked = acked.lock().unwrap().clone();
    for (position, (stream, n)) in acked {
        assert!(
            position <= head.0,
            "acknowledged position {position} lost (head {})",
            head.0
        );
        let page = store
            .read_all(Position(position), 1, &annals_store::ReadFilter::all())
            .await
            .unwrap();
        let event = &page.events[0];
        assert_eq!(event.stream_id.as_str(), stream);
        if !event.removed {
            let payload: Value = serde_json::from_slice(&event.payload).unwrap();
            assert_eq!(payload["n"], n);
        }
    }
    store.close();
    head.0
}

/// The backup directory after a kill: its latest backup restores and verifies, or is
/// refused as incomplete.
async fn check_backup(dir: &Path, scratch: &Path) -> Option<u64> {
    if !dir.exists() {
        return None;
    }
    let target = scratch.join(format!("restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    let outcome = backup::restore(dir, None, &target).await;
    let _ = std::fs::remove_dir_all(&target);
    match outcome {
        Ok(report) => {
            assert_eq!(report.verified, report.backup.log.head.0);
            Some(report.backup.log.head.0)
        }
        Err(LifecycleError::IncompleteBackup { .. }) => None,
        Err(other) => panic!("a backup is complete or refused as incomplete, not: {other}"),
    }
}

#[test]
fn kill_9_during_backups_and_retention_leaves_everything_complete_or_refused() {
    let rounds = binary::rounds("ANNALS_LIFECYCLE_CRASH_ROUNDS", 5);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let log: PathBuf = dir.path().join("server.log");
    let (rt, http) = binary::client_runtime();
    let started = Instant::now();
    rt.block_on(async {
        let acked: Acked = Arc::default();
        let mut server = spawn_server(&data, &log);
        binary::wait_ready(&mut server, &http, &log, Duration::from_secs(30)).await;
        let mut seed = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        );
        let (mut complete, mut refused, mut removed_seen) = (0, 0, 0u64);
        // How many backups and retention passes the kill cut short (the others finished
        // first): the kills land at random moments, so this varies from run to run.
        let (mut backups_cut, mut passes_cut) = (0, 0);
        for round in 0..2 * rounds {
            let during_backup = round < rounds;
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    tokio::spawn(writer(
                        http.clone(),
                        server.base.clone(),
                        w,
                        acked.clone(),
                        stop.clone(),
                    ))
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(300)).await;
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let delay = Duration::from_millis((seed >> 33) % 60);
            let mut backup_cli = None;
            if during_backup {
                // The CLI finds the server through the data directory's serve.json.
                backup_cli = Some(
                    Command::new(env!("CARGO_BIN_EXE_annals"))
                        .args(["backup", "--data-dir"])
                        .arg(&data)
                        .arg("--to")
                        .arg(&backups)
                        .env_remove("ANNALS_API_KEY")
                        .env("RUST_LOG", "error")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
            }
            let pass = (!during_backup).then(|| {
                let base = server.base.clone();
                let http = http.clone();
                tokio::spawn(async move {
                    graphql(&http, &base, "mutation { applyRetention { removed } }", json!({})).await
                })
            });
            tokio::time::sleep(delay).await;
            // SIGKILL: no destructor, no flush, no graceful shutdown.
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                task.await.unwrap();
            }
            if let Some(mut cli) = backup_cli {
                backups_cut += usize::from(!cli.wait().unwrap().success());
            }
            if let Some(pass) = pass {
                passes_cut += usize::from(pass.await.unwrap().is_none());
            }
            check_data(&data, &acked).await;
            match check_backup(&backups, dir.path()).await {
                Some(_) => complete += 1,
                None => refused += 1,
            }
            server = spawn_server(&data, &log);
            binary::wait_ready(&mut server, &http, &log, Duration::from_secs(30)).await;
            if !during_backup {
                // A pass after the restart finishes what the killed one began.
                let answer = graphql(
                    &http,
                    &server.base,
                    "mutation { applyRetention { removed } }",
                    json!({}),
                )
                .await
                .unwrap();
                let removed = &answer["data"]["applyRetention"]["removed"];
                removed_seen += removed.as_str().unwrap_or("0").parse::<u64>().unwrap();
            }
        }
        // A backup after all this is complete and restores to its head.
        let taken = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["backup", "--json", "--data-dir"])
            .arg(&data)
            .arg("--to")
            .arg(&backups)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
        let head = check_backup(&backups, dir.path()).await.expect("a complete backup");
        let taken: Value = serde_json::from_slice(&taken.stdout).unwrap();
        assert_eq!(taken["head"], head.to_string());
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let final_head = check_data(&data, &acked).await;
        assert!(removed_seen > 0, "retention removed events during the rounds");
        eprintln!(
            "lifecycle crash test: {rounds} kills during backups ({backups_cut} cut short), {rounds} during retention passes ({passes_cut} cut short); {} acknowledged appends, head {final_head}; latest backup complete after {complete} kills, refused after {refused}; {:.1}s",
            acked.lock().unwrap().len(),
            started.elapsed().as_secs_f64()
        );
    });
}
