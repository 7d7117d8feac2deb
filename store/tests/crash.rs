//! Crash test: a child process appends with `Fsync` under concurrency and prints every
//! acknowledged append; the parent `kill -9`s it at random moments and, after each reopen,
//! checks that every acknowledged event is where it was acknowledged, positions are
//! gapless, no commit is partial and the hash chain verifies.
//!
//! The child is this same test binary, re-run with `ANNALS_CRASH_CHILD` set.
//! `ANNALS_CRASH_ROUNDS` raises the number of kills (default 20).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, Position, ReadFilter, RocksEventStore,
    StoreOptions, StreamAppend, StreamId,
};
use serde_json::json;
use uuid::Uuid;

const CHILD_ENV: &str = "ANNALS_CRASH_CHILD";
const EVENTS_PER_PART: u64 = 3;
const TASKS: u64 = 16;

/// A small xorshift generator: the test needs cheap unpredictability, not quality.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Rng(u64::from(nanos) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Not a test of its own: the body of the child process (a no-op unless the env is set).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(
            RocksEventStore::open(&dir, StoreOptions::with_durability(Durability::Fsync)).unwrap(),
        );
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(task * 7919 + Rng::seeded().next());
                loop {
                    // Most appends go to one stream; every fourth is a two-stream commit.
                    let parts = if rng.below(4) == 0 { 2 } else { 1 };
                    let commit = Uuid::new_v4();
                    let mut appends = Vec::new();
                    for p in 0..parts {
                        let stream =
                            StreamId::new(format!("crash{p}-{task}-{}", rng.below(3))).unwrap();
                        let version = store.stream_version(&stream).await.unwrap();
                        let events = (0..EVENTS_PER_PART)
                            .map(|i| {
                                NewEvent::json(
                                    "Crashy",
                                    &json!({ "i": i, "commit": commit, "parts": parts }),
                                )
                                .with_id(Uuid::new_v4())
                            })
                            .collect();
                        appends.push(StreamAppend::new(
                            stream,
                            ExpectedVersion::Exact(version),
                            events,
                        ));
                    }
                    let ids: Vec<Vec<Uuid>> = appends
                        .iter()
                        .map(|a| a.events.iter().map(|e| e.event_id.unwrap()).collect())
                        .collect();
                    if let Ok(result) = store.append_multi(appends).await {
                        let mut out = out.lock().unwrap();
                        for (r, ids) in result.streams.iter().zip(ids) {
                            let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                            writeln!(
                                out,
                                "ACK {} {} {} {}",
                                r.stream_id,
                                r.first_position.0,
                                r.first_version,
                                ids.join(",")
                            )
                            .unwrap();
                        }
                        out.flush().unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// One acknowledged event: where the child was told it is.
#[derive(Debug, Clone)]
struct Acked {
    stream: String,
    position: u64,
    version: u64,
    id: Uuid,
}

fn parse_ack(line: &str) -> Option<Vec<Acked>> {
    let mut words = line.strip_prefix("ACK ")?.split(' ');
    let stream = words.next()?.to_string();
    let position: u64 = words.next()?.parse().ok()?;
    let version: u64 = words.next()?.parse().ok()?;
    let ids = words.next()?;
    let mut acked = Vec::new();
    for (i, id) in ids.split(',').enumerate() {
        acked.push(Acked {
            stream: stream.clone(),
            position: position + i as u64,
            version: version + i as u64,
            id: id.parse().ok()?,
        });
    }
    (acked.len() == EVENTS_PER_PART as usize).then_some(acked)
}

#[test]
fn kill_9_loses_no_acknowledged_append() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rounds: usize = std::env::var("ANNALS_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::seeded();
    let mut acked: Vec<Acked> = Vec::new();
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();

    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| parse_ack(&l))
                .flatten()
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(150 + rng.below(650)));
        // SIGKILL: no destructor, no flush, no WAL sync runs in the child.
        child.kill().unwrap();
        child.wait().unwrap();
        let new = reader.join().unwrap();
        assert!(
            !new.is_empty() || round > 0 || rounds == 0,
            "the child acknowledged nothing in round {round}"
        );
        acked.extend(new);

        rt.block_on(check_log(dir.path(), &acked));
    }
    eprintln!(
        "crash test: {rounds} kills, {} acknowledged events checked, {:.1}s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}

async fn check_log(path: &std::path::Path, acked: &[Acked]) {
    let store = RocksEventStore::open(path, StoreOptions::default()).unwrap();
    let head = store.head();
    let mut log = Vec::new();
    let mut from = Position(1);
    while from <= head {
        // read_all itself fails on a gap; check the positions too.
        let page = store
            .read_all(from, 10_000, &ReadFilter::all())
            .await
            .unwrap();
        log.extend(page.events);
        from = page.next;
    }
    assert_eq!(log.len() as u64, head.0);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.position.0, i as u64 + 1, "positions are gapless");
    }
    for a in acked {
        let e = log
            .get(a.position as usize - 1)
            .unwrap_or_else(|| panic!("acknowledged event at {} is lost", a.position));
        assert_eq!(
            e.event_id, a.id,
            "event at {} is not the acknowledged one",
            a.position
        );
        assert_eq!(e.stream_id.as_str(), a.stream);
        assert_eq!(e.stream_version, a.version);
    }
    // No partial commit: every stream holds whole parts, and a two-stream commit is in
    // both of its streams or in neither.
    let mut streams: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut commits: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &log {
        let payload: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        streams
            .entry(e.stream_id.as_str())
            .or_default()
            .push(payload["i"].as_u64().unwrap());
        let entry = commits
            .entry(payload["commit"].as_str().unwrap().to_string())
            .or_default();
        entry.0 += 1;
        entry.1 = payload["parts"].as_u64().unwrap();
    }
    for (stream, parts) in streams {
        for (n, i) in parts.iter().enumerate() {
            assert_eq!(*i, n as u64 % EVENTS_PER_PART, "partial append in {stream}");
        }
        assert_eq!(
            parts.len() as u64 % EVENTS_PER_PART,
            0,
            "partial append in {stream}"
        );
    }
    for (commit, (events, parts)) in commits {
        assert_eq!(events, parts * EVENTS_PER_PART, "partial commit {commit}");
    }
    let report = store.verify_chain(Position(1), head).await.unwrap();
    assert!(report.is_ok(), "hash chain broken: {report:?}");
    store.close();
}
