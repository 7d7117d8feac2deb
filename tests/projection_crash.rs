//! Crash test of the projections: a child process applies a large backlog of domain events
//! to the read models (and appends more meanwhile); the parent `kill -9`s it at random
//! moments. After each kill, every read model must equal a from-scratch build of exactly
//! the positions up to its checkpoint: no event applied twice, none skipped.
//!
//! The child is this same test binary, re-run with `ANNALS_PROJECTION_CRASH_CHILD` set.
//! `ANNALS_PROJECTION_CRASH_ROUNDS` raises the number of kills (default 10).
//!
//! The second test kills children in the middle of a blue/green rebuild of both reference
//! read models over a log of `ANNALS_PROJECTION_REBUILD_EVENTS` events (default 60,000):
//! every restart must resume the rebuild from the new generation's checkpoint (never from
//! position 1), the partial generation must equal a from-scratch build of the positions up
//! to that checkpoint after every kill, and the rebuild must finish with the take-over.
//! `ANNALS_PROJECTION_REBUILD_KILLS` sets about how many children a rebuild spans (default 5).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::domain;
use annals::read_models;
use annals::sample;
use annals_projections::{
    Generation, ProjectionRuntime, ReadModelStore, RuntimeOptions, build_until,
};
use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, Position, RocksEventStore, StoreOptions,
    StreamAppend, StreamId,
};
use serde_json::json;

const CHILD_ENV: &str = "ANNALS_PROJECTION_CRASH_CHILD";
const REBUILD_CHILD_ENV: &str = "ANNALS_PROJECTION_REBUILD_CHILD";
/// Set for the first rebuild child only: it asks for the rebuilds; later children find
/// them recorded in the read-model database and must resume them on their own.
const REBUILD_REQUEST_ENV: &str = "ANNALS_PROJECTION_REBUILD_REQUEST";
const PRODUCTS: usize = 20;

struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Rng(u64::from(nanos) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn open_store(dir: &std::path::Path) -> Arc<RocksEventStore> {
    Arc::new(
        RocksEventStore::open(
            dir.join("log"),
            StoreOptions::with_durability(Durability::Buffered),
        )
        .unwrap(),
    )
}

/// The reference projections running over `store`, with their read models in `dir/read`.
fn start_runtime(
    store: &Arc<RocksEventStore>,
    dir: &std::path::Path,
    options: RuntimeOptions,
) -> ProjectionRuntime {
    let read = Arc::new(ReadModelStore::open(dir.join("read")).unwrap());
    annals::read_models::start(store.clone(), read, options).unwrap()
}

/// The runtime a child process runs its body on.
fn child_tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        // Small batches: many commits, so kills land between and inside them.
        batch_size: 128,
        ..RuntimeOptions::default()
    }
}

fn product(i: usize) -> StreamId {
    StreamId::new(format!("product-p{i}")).unwrap()
}

/// Appends `orders` orders named after `tag`: placed with a reservation in one commit,
/// then some confirmed and some cancelled (with the release in the same commit).
async fn append_orders(store: &RocksEventStore, tag: &str, orders: usize) {
    for j in 0..orders {
        let order = StreamId::new(format!("order-{tag}-{j}")).unwrap();
        let p = j % PRODUCTS;
        let quantity = 1 + (j % 3) as u64;
        store
            .append_multi(vec![
                StreamAppend::new(
                    order.clone(),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::json(
                        "OrderPlaced",
                        &json!({"customer_id": format!("c{}", j % 37), "lines": [{"product_id": format!("p{p}"), "quantity": quantity, "unit_price_cents": 250}], "total_cents": 250 * quantity}),
                    )],
                ),
                StreamAppend::new(
                    product(p),
                    ExpectedVersion::Any,
                    vec![NewEvent::json(
                        "StockReserved",
                        &json!({"order_id": format!("{tag}-{j}"), "quantity": quantity}),
                    )],
                ),
            ])
            .await
            .unwrap();
        if j.is_multiple_of(3) {
            store
                .append(
                    order.clone(),
                    ExpectedVersion::Exact(1),
                    vec![NewEvent::json("OrderConfirmed", &json!({}))],
                )
                .await
                .unwrap();
        }
        if j % 5 == 1 {
            store
                .append_multi(vec![
                    StreamAppend::new(
                        order,
                        ExpectedVersion::StreamExists,
                        vec![NewEvent::json("OrderCancelled", &json!({"reason": "test"}))],
                    ),
                    StreamAppend::new(
                        product(p),
                        ExpectedVersion::Any,
                        vec![NewEvent::json(
                            "StockReleased",
                            &json!({"order_id": format!("{tag}-{j}"), "quantity": quantity}),
                        )],
                    ),
                ])
                .await
                .unwrap();
        }
    }
}

async fn seed(store: &RocksEventStore) {
    for i in 0..PRODUCTS {
        store
            .append(
                product(i),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::json(
                        "ProductRegistered",
                        &json!({"sku": format!("SKU-{i}"), "name": format!("Product {i}"), "price_cents": 250}),
                    ),
                    NewEvent::json("StockReceived", &json!({"quantity": 1_000_000})),
                ],
            )
            .await
            .unwrap();
    }
    append_orders(store, "seed", 6_000).await;
}

/// Not a test of its own: the body of the child process (a no-op unless the env is set).
#[test]
fn projection_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    child_tokio().block_on(async move {
        let store = open_store(&dir);
        let _runtime = start_runtime(&store, &dir, options());
        println!("ready");
        // Keep the backlog growing while the workers apply it, until the parent kills us.
        let tag = format!("r{}", std::process::id());
        for batch in 0.. {
            append_orders(&store, &format!("{tag}-{batch}"), 200).await;
        }
    });
}

/// Every read model equals a from-scratch build of the positions up to its checkpoint.
async fn check(dir: &std::path::Path) -> Vec<u64> {
    let store = open_store(dir);
    let read = Arc::new(ReadModelStore::open(dir.join("read")).unwrap());
    let upcasters = Arc::new(domain::upcasters());
    let mut checkpoints = Vec::new();
    for projection in read_models::projections() {
        let name = projection.name().to_string();
        let generation = read.active_generation(&name).expect("projection started");
        let checkpoint = read.checkpoint(&name, generation).unwrap();
        let scratch_dir = tempfile::tempdir().unwrap();
        let scratch = Arc::new(ReadModelStore::open(scratch_dir.path()).unwrap());
        let reached = build_until(
            &store,
            &scratch,
            projection,
            &upcasters,
            &options(),
            checkpoint,
        )
        .await
        .unwrap();
        assert_eq!(reached, checkpoint);
        let (actual, expected) = (read.dump(&name).unwrap(), scratch.dump(&name).unwrap());
        assert_eq!(
            actual.len(),
            expected.len(),
            "{name}: row count at checkpoint {checkpoint}"
        );
        assert!(
            actual == expected,
            "{name}: read model differs from a scratch build at {checkpoint}"
        );
        assert!(
            read.parked(&name).unwrap().is_empty(),
            "{name}: parked events"
        );
        checkpoints.push(checkpoint.0);
    }
    store.close();
    checkpoints
}

#[test]
fn kill_9_while_applying_a_backlog_leaves_read_models_equal_to_a_rebuild() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var(REBUILD_CHILD_ENV).is_ok() {
        return;
    }
    let rounds: usize = std::env::var("ANNALS_PROJECTION_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open_store(dir.path());
        seed(&store).await;
        store.close();
    });
    let mut rng = Rng::seeded();
    let started = Instant::now();
    let mut progressed = 0;
    let mut last = Vec::new();
    for _ in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "projection_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "child ended before it was ready"
            );
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        // SIGKILL: no destructor, no flush runs in the child.
        child.kill().unwrap();
        child.wait().unwrap();
        let checkpoints = rt.block_on(check(dir.path()));
        if checkpoints != last {
            progressed += 1;
        }
        last = checkpoints;
    }
    assert!(
        progressed >= rounds / 2,
        "the projections barely moved between kills"
    );
    eprintln!(
        "projection crash test: {rounds} kills, checkpoints {last:?}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn rebuild_options() -> RuntimeOptions {
    RuntimeOptions {
        batch_size: 512,
        drop_delay: Duration::ZERO,
        ..RuntimeOptions::default()
    }
}

/// Not a test of its own: the body of the rebuild child (a no-op unless the env is set).
/// It runs the runtime, asks for the rebuilds when told to, appends a trickle of orders,
/// and prints every projection's status every few milliseconds until it is killed:
/// `status <name> <serving generation> <rebuild generation or 0> <rebuild checkpoint>`.
#[test]
fn projection_rebuild_crash_child() {
    let Ok(dir) = std::env::var(REBUILD_CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    child_tokio().block_on(async move {
        let store = open_store(&dir);
        let runtime = start_runtime(&store, &dir, rebuild_options());
        if std::env::var(REBUILD_REQUEST_ENV).is_ok() {
            for name in runtime.names() {
                runtime.rebuild(&name).unwrap();
            }
        }
        println!("ready");
        // The serving generations follow a moving head, so the take-over chases it.
        let tag = format!("b{}", std::process::id());
        tokio::spawn(async move {
            for batch in 0.. {
                append_orders(&store, &format!("{tag}-{batch}"), 10).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        loop {
            for s in runtime.status() {
                let (generation, checkpoint) = s
                    .rebuild
                    .map(|r| (r.generation, r.checkpoint.0))
                    .unwrap_or((0, 0));
                println!(
                    "status {} {} {generation} {checkpoint}",
                    s.name, s.generation
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

/// One `status` line of the rebuild child.
struct RebuildStatus {
    name: String,
    serving: Generation,
    rebuilding: Generation,
    checkpoint: u64,
}

fn parse_status(line: &str) -> Option<RebuildStatus> {
    let mut parts = line.split_whitespace();
    if parts.next()? != "status" {
        return None;
    }
    Some(RebuildStatus {
        name: parts.next()?.to_string(),
        serving: parts.next()?.parse().ok()?,
        rebuilding: parts.next()?.parse().ok()?,
        checkpoint: parts.next()?.parse().ok()?,
    })
}

fn spawn_rebuild_child(dir: &std::path::Path, request: bool) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "projection_rebuild_crash_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(REBUILD_CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if request {
        command.env(REBUILD_REQUEST_ENV, "1");
    }
    command.spawn().unwrap()
}

/// Where a projection's rebuild stands on disk after a kill.
#[derive(Clone, Copy, Debug, PartialEq)]
enum OnDisk {
    /// Generation `.0` is being rebuilt and has applied the log up to `.1`.
    Rebuilding(Generation, Position),
    /// The rebuilt generation serves, with its checkpoint.
    TookOver(Generation, Position),
}

/// A from-scratch build of one projection, advanced to each checkpoint in turn (the
/// checkpoints only grow, so the whole test builds the log once per projection).
struct Scratch {
    _dir: tempfile::TempDir,
    read: Arc<ReadModelStore>,
}

/// Reads every projection's rebuild state from the killed child's databases and checks
/// that the generation being built (or, after the take-over, serving) equals a
/// from-scratch build of exactly the positions up to its checkpoint.
async fn check_rebuild(
    dir: &std::path::Path,
    scratch: &mut HashMap<String, Scratch>,
) -> HashMap<String, OnDisk> {
    let store = open_store(dir);
    let read = ReadModelStore::open(dir.join("read")).unwrap();
    let upcasters = Arc::new(domain::upcasters());
    let mut states = HashMap::new();
    for projection in read_models::projections() {
        let name = projection.name().to_string();
        let active = read.active_generation(&name).expect("projection started");
        let (state, generation, checkpoint) = match read.rebuild_in_progress(&name).unwrap() {
            Some(record) => {
                let checkpoint = read.checkpoint(&name, record.generation).unwrap();
                (
                    OnDisk::Rebuilding(record.generation, checkpoint),
                    record.generation,
                    checkpoint,
                )
            }
            None => {
                let checkpoint = read.checkpoint(&name, active).unwrap();
                (OnDisk::TookOver(active, checkpoint), active, checkpoint)
            }
        };
        states.insert(name.clone(), state);
        if generation == 1 {
            continue; // The rebuild has not started yet: nothing of it to compare.
        }
        let entry = scratch.entry(name.clone()).or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let read = Arc::new(ReadModelStore::open(dir.path()).unwrap());
            Scratch { _dir: dir, read }
        });
        let reached = build_until(
            &store,
            &entry.read,
            projection,
            &upcasters,
            &rebuild_options(),
            checkpoint,
        )
        .await
        .unwrap();
        assert_eq!(
            reached, checkpoint,
            "{name}: the rebuild's checkpoint moved backwards ({state:?})"
        );
        let actual = read.dump_generation(&name, generation).unwrap();
        let expected = entry.read.dump(&name).unwrap();
        assert_eq!(
            actual.len(),
            expected.len(),
            "{name}: row count of generation {generation} at checkpoint {checkpoint}"
        );
        assert!(
            actual == expected,
            "{name}: generation {generation} differs from a scratch build at {checkpoint}"
        );
        assert!(
            read.parked(&name).unwrap().is_empty(),
            "{name}: parked events"
        );
    }
    drop(read);
    store.close();
    states
}

#[test]
fn kill_9_during_a_blue_green_rebuild_resumes_it_from_its_checkpoint() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var(REBUILD_CHILD_ENV).is_ok() {
        return;
    }
    let events: u64 = std::env::var("ANNALS_PROJECTION_REBUILD_EVENTS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(60_000);
    // Each child is killed once every rebuild moved this far past where it resumed, so a
    // rebuild spans about `kills` children.
    let kills: u64 = std::env::var("ANNALS_PROJECTION_REBUILD_KILLS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .clamp(3, 1_000);
    let step = events / kills;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let store =
            Arc::new(RocksEventStore::open(dir.path().join("log"), sample::log_options()).unwrap());
        sample::build_log(&store, events).await.unwrap();
        let head = store.head();
        // The serving generations are caught up before any rebuild starts, so the rebuild
        // has the whole log to redo.
        let runtime = start_runtime(&store, dir.path(), rebuild_options());
        runtime
            .wait_for_all(head, Duration::from_secs(600))
            .await
            .unwrap();
        runtime.shutdown().await;
        drop(runtime);
        store.close();
    });
    let names: Vec<String> = read_models::projections()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let mut rng = Rng::seeded();
    let mut scratch = HashMap::new();
    let mut on_disk: HashMap<String, OnDisk> = HashMap::new();
    let mut generation_of: HashMap<String, Generation> = HashMap::new();
    let mut kills_mid_rebuild = 0;
    let mut resumed_at = Vec::new();
    let mut round = 0;
    loop {
        round += 1;
        assert!(
            round <= 2 * kills + 10,
            "the rebuild did not finish in {round} children"
        );
        let mut child = spawn_rebuild_child(dir.path(), round == 1);
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "child ended before it was ready"
            );
        }
        // Where each projection stood when this child started: it must go on from there.
        let from: HashMap<&str, u64> = names
            .iter()
            .map(|n| {
                let at = match on_disk.get(n) {
                    Some(OnDisk::Rebuilding(_, p)) | Some(OnDisk::TookOver(_, p)) => p.0,
                    None => 0,
                };
                (n.as_str(), at)
            })
            .collect();
        let mut done: HashMap<String, bool> = HashMap::new();
        let mut far: HashMap<String, bool> = HashMap::new();
        let round_started = Instant::now();
        loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "child ended on its own"
            );
            assert!(
                round_started.elapsed() < Duration::from_secs(300),
                "no progress in 300 s"
            );
            let Some(status) = parse_status(&line) else {
                continue;
            };
            let name = status.name.clone();
            if status.rebuilding != 0 {
                let generation = *generation_of
                    .entry(name.clone())
                    .or_insert(status.rebuilding);
                assert_eq!(
                    status.rebuilding, generation,
                    "{name}: a restart began another rebuild instead of resuming generation {generation}"
                );
                // The assertion that fails if a restart starts the rebuild over: its
                // checkpoint never goes below what the killed child had committed.
                assert!(
                    status.checkpoint >= from[name.as_str()],
                    "{name}: the rebuild restarted at {} after it had reached {}",
                    status.checkpoint,
                    from[name.as_str()]
                );
                if status.checkpoint >= from[name.as_str()] + step {
                    far.insert(name.clone(), true);
                }
            } else if let Some(generation) = generation_of.get(&name)
                && status.serving == *generation
            {
                done.insert(name.clone(), true);
            } else if !generation_of.contains_key(&name) && status.serving > 1 {
                // A projection with little to redo (no payments in the sample log) can
                // rebuild and take over between two status lines: it serves a newer
                // generation than the one every projection started with.
                generation_of.insert(name.clone(), status.serving);
                done.insert(name.clone(), true);
            } else if let Some(OnDisk::Rebuilding(..)) = on_disk.get(&name) {
                panic!("{name}: the recorded rebuild was not resumed after the restart");
            }
            let all_done = names.iter().all(|n| done.contains_key(n));
            let all_far = names
                .iter()
                .all(|n| done.contains_key(n) || far.contains_key(n));
            if all_done || all_far {
                break;
            }
        }
        // Land the kill anywhere inside a batch, not right after one.
        std::thread::sleep(Duration::from_millis(rng.below(30)));
        child.kill().unwrap();
        child.wait().unwrap();
        on_disk = rt.block_on(check_rebuild(dir.path(), &mut scratch));
        let mid = on_disk
            .values()
            .filter(|s| matches!(s, OnDisk::Rebuilding(_, p) if p.0 > 0))
            .count();
        if mid > 0 {
            kills_mid_rebuild += 1;
            resumed_at.push(
                names
                    .iter()
                    .map(|n| match on_disk[n] {
                        OnDisk::Rebuilding(_, p) | OnDisk::TookOver(_, p) => p.0,
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let finished = names.iter().all(|n| {
            matches!(on_disk.get(n), Some(OnDisk::TookOver(g, _)) if Some(g) == generation_of.get(n))
        });
        if finished {
            break;
        }
    }
    assert!(
        kills_mid_rebuild >= 3,
        "only {kills_mid_rebuild} kills landed inside the rebuild"
    );
    eprintln!(
        "rebuild crash test: {round} children, {kills_mid_rebuild} killed mid-rebuild at checkpoints {resumed_at:?}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
