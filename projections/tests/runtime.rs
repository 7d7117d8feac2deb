//! The projection runtime against the real RocksDB event store: read-your-writes, poison
//! events under both policies, pause/resume, blue/green rebuilds (also across a restart)
//! and version upgrades.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use annals_projections::{
    HandlerError, PoisonPolicy, Projection, ProjectionError, ProjectionRuntime, ProjectionState,
    ReadModelStore, ReadModelTx, RuntimeOptions, build_until,
};
use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, Position, ReadFilter, RecordedEvent,
    RocksEventStore, StoreOptions, StreamId, Upcasters,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// Counts events per stream and sums their `n`; fails on `{"poison": true}` while
/// `failing` is set.
struct Counter {
    name: &'static str,
    version: u32,
    policy: PoisonPolicy,
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

impl Counter {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            version: 1,
            policy: PoisonPolicy::Continue,
            failing: Arc::new(AtomicBool::new(true)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Projection for Counter {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn filter(&self) -> ReadFilter {
        ReadFilter::categories(["counter"])
    }
    fn poison_policy(&self) -> PoisonPolicy {
        self.policy
    }
    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let payload: serde_json::Value = serde_json::from_slice(&event.payload)?;
        if payload["poison"] == json!(true) && self.failing.load(Ordering::SeqCst) {
            return Err(format!("cannot apply poison at {}", event.position).into());
        }
        let key = format!("count/{}", event.stream_id);
        let count: u64 = tx.get_json(key.as_bytes())?.unwrap_or(0);
        tx.put_json(key, &(count + 1))?;
        let sum: u64 = tx.get_json(b"sum")?.unwrap_or(0);
        tx.put_json("sum", &(sum + payload["n"].as_u64().unwrap_or(0)))?;
        Ok(())
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<RocksEventStore>,
    read: Arc<ReadModelStore>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksEventStore::open(
        dir.path().join("log"),
        StoreOptions::with_durability(Durability::Buffered),
    )
    .unwrap();
    let read = ReadModelStore::open(dir.path().join("read")).unwrap();
    Env {
        _dir: dir,
        store: Arc::new(store),
        read: Arc::new(read),
    }
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        batch_size: 100,
        max_attempts: 2,
        retry_backoff: Duration::from_millis(1),
        drop_delay: Duration::ZERO,
        min_step_interval: Duration::ZERO,
    }
}

fn start(env: &Env, projections: Vec<Arc<dyn Projection>>) -> ProjectionRuntime {
    ProjectionRuntime::start(
        env.store.clone(),
        env.read.clone(),
        projections,
        Arc::new(Upcasters::new()),
        options(),
    )
    .unwrap()
}

/// Appends `count` events of `{"n": 1}` over 10 streams, in appends of 50.
async fn fill(store: &RocksEventStore, count: usize) -> Position {
    let mut last = Position::ZERO;
    for chunk in 0..count.div_ceil(50) {
        let stream = StreamId::new(format!("counter-{}", chunk % 10)).unwrap();
        let n = 50.min(count - chunk * 50);
        let events = (0..n)
            .map(|_| NewEvent::json("Counted", &json!({"n": 1})))
            .collect();
        last = store
            .append(stream, ExpectedVersion::Any, events)
            .await
            .unwrap()
            .last_position;
    }
    last
}

async fn append_one(store: &RocksEventStore, stream: &str, payload: serde_json::Value) -> Position {
    store
        .append(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::json("Counted", &payload)],
        )
        .await
        .unwrap()
        .last_position
}

fn sum(read: &ReadModelStore, name: &str) -> u64 {
    read.view(name)
        .unwrap()
        .get_json(b"sum")
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_sees_its_own_write() {
    let env = env();
    let runtime = start(&env, vec![Arc::new(Counter::new("counter"))]);
    for i in 1..=20u64 {
        let position = append_one(&env.store, "counter-a", json!({"n": i})).await;
        runtime.wait_for("counter", position, WAIT).await.unwrap();
        assert_eq!(sum(&env.read, "counter"), i * (i + 1) / 2);
    }
    // Other categories move the checkpoint too, so waiting on them does not hang.
    let other = append_one(&env.store, "other-1", json!({"n": 100})).await;
    runtime.wait_for("counter", other, WAIT).await.unwrap();
    assert_eq!(sum(&env.read, "counter"), 210);
    runtime.shutdown().await;
}

/// Holds its handler at one position until the gate opens (or 30 s pass).
struct Gated {
    at: Position,
    open: Arc<AtomicBool>,
}

impl Projection for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        if event.position == self.at {
            let started = std::time::Instant::now();
            while !self.open.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        tx.put(event.position.0.to_be_bytes().to_vec(), b"seen".to_vec());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_publishes_each_batch_as_it_is_written() {
    let env = env();
    let head = fill(&env.store, 300).await;
    let open = Arc::new(AtomicBool::new(false));
    let gated = Gated {
        at: Position(150),
        open: open.clone(),
    };
    let runtime = ProjectionRuntime::start(
        env.store.clone(),
        env.read.clone(),
        vec![Arc::new(gated)],
        Arc::new(Upcasters::new()),
        RuntimeOptions {
            batch_size: 10,
            ..options()
        },
    )
    .unwrap();
    // Held at 150, in the middle of a run of pipelined batches: those written before it
    // must already be visible to readers waiting for them.
    let waited = runtime
        .wait_for("gated", Position(100), Duration::from_secs(10))
        .await;
    let held_at = runtime.checkpoint("gated").unwrap();
    open.store(true, Ordering::SeqCst);
    waited.unwrap();
    assert!(held_at < Position(150), "{held_at:?}");
    runtime.wait_for("gated", head, WAIT).await.unwrap();
    assert_eq!(env.read.dump("gated").unwrap().len(), 300);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_times_out_with_a_stale_read_error() {
    let env = env();
    let runtime = start(&env, vec![Arc::new(Counter::new("counter"))]);
    let position = append_one(&env.store, "counter-a", json!({"n": 1})).await;
    let err = runtime
        .wait_for(
            "counter",
            Position(position.0 + 1),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::StaleRead { .. }), "{err}");
    let err = runtime
        .wait_for("nope", position, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProjectionError::UnknownProjection { .. }),
        "{err}"
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_parked_and_the_projection_reaches_the_head() {
    let env = env();
    let counter = Counter::new("counter");
    let failing = counter.failing.clone();
    let runtime = start(&env, vec![Arc::new(counter)]);
    append_one(&env.store, "counter-a", json!({"n": 1})).await;
    let poison = append_one(&env.store, "counter-a", json!({"n": 10, "poison": true})).await;
    let head = append_one(&env.store, "counter-a", json!({"n": 100})).await;
    runtime.wait_for("counter", head, WAIT).await.unwrap();
    assert_eq!(sum(&env.read, "counter"), 101);

    let status = runtime.status_of("counter").unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!(status.checkpoint, head);
    assert_eq!(status.parked, 1);
    assert!(status.last_error.unwrap().contains("poison"));
    let parked = runtime.parked("counter").unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, poison.0);
    assert_eq!(parked[0].attempts, 2);
    assert_eq!(parked[0].stream_id, "counter-a");

    // Replaying while the handler still fails keeps it parked; after the fix it applies.
    assert!(!runtime.replay_parked("counter", poison).await.unwrap());
    assert_eq!(runtime.parked("counter").unwrap()[0].attempts, 3);
    failing.store(false, Ordering::SeqCst);
    assert!(runtime.replay_parked("counter", poison).await.unwrap());
    assert!(runtime.parked("counter").unwrap().is_empty());
    assert_eq!(sum(&env.read, "counter"), 111);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_policy_reports_failed_with_the_position_and_resume_retries() {
    let env = env();
    let mut counter = Counter::new("counter");
    counter.policy = PoisonPolicy::Stop;
    let failing = counter.failing.clone();
    let runtime = start(&env, vec![Arc::new(counter)]);
    let before = append_one(&env.store, "counter-a", json!({"n": 1})).await;
    let poison = append_one(&env.store, "counter-a", json!({"n": 10, "poison": true})).await;
    let head = append_one(&env.store, "counter-a", json!({"n": 100})).await;
    runtime.wait_for("counter", before, WAIT).await.unwrap();
    let status = wait_until(&runtime, |s| s.state == ProjectionState::Failed).await;
    assert_eq!(status.failed_position, Some(poison));
    assert_eq!(status.checkpoint, before);
    assert_eq!(status.parked, 0);
    assert!(status.last_error.unwrap().contains("poison"));
    assert_eq!(sum(&env.read, "counter"), 1);

    failing.store(false, Ordering::SeqCst);
    runtime.resume("counter").unwrap();
    runtime.wait_for("counter", head, WAIT).await.unwrap();
    assert_eq!(sum(&env.read, "counter"), 111);
    assert_eq!(
        runtime.status_of("counter").unwrap().state,
        ProjectionState::Running
    );
    runtime.shutdown().await;
}

async fn wait_until(
    runtime: &ProjectionRuntime,
    ok: impl Fn(&annals_projections::ProjectionStatus) -> bool,
) -> annals_projections::ProjectionStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = runtime.status_of("counter").unwrap();
        if ok(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never matched: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_checkpoint_and_resume_catches_up() {
    let env = env();
    let runtime = start(&env, vec![Arc::new(Counter::new("counter"))]);
    let first = append_one(&env.store, "counter-a", json!({"n": 1})).await;
    runtime.wait_for("counter", first, WAIT).await.unwrap();
    runtime.pause("counter").unwrap();
    wait_until(&runtime, |s| s.state == ProjectionState::Paused).await;
    let second = append_one(&env.store, "counter-a", json!({"n": 2})).await;
    let err = runtime
        .wait_for("counter", second, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::StaleRead { checkpoint, .. } if checkpoint == first));
    let status = runtime.status_of("counter").unwrap();
    assert_eq!(status.lag, 1);
    runtime.resume("counter").unwrap();
    runtime.wait_for("counter", second, WAIT).await.unwrap();
    assert_eq!(sum(&env.read, "counter"), 3);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_hands_events_to_the_projection_again() {
    let env = env();
    let runtime = start(&env, vec![Arc::new(Counter::new("counter"))]);
    append_one(&env.store, "counter-a", json!({"n": 1})).await;
    let second = append_one(&env.store, "counter-a", json!({"n": 2})).await;
    runtime.wait_for("counter", second, WAIT).await.unwrap();
    runtime.rewind("counter", second).unwrap();
    // The second event is applied again: the counter is not idempotent, which shows it.
    wait_until(&runtime, |_| sum(&env.read, "counter") == 5).await;
    runtime.shutdown().await;
}

/// A from-scratch build of the same projection into a fresh database, up to `until`.
async fn scratch(
    env: &Env,
    projection: Arc<dyn Projection>,
    until: Position,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let read = Arc::new(ReadModelStore::open(dir.path()).unwrap());
    let name = projection.name().to_string();
    let reached = build_until(
        &env.store,
        &read,
        projection,
        &Arc::new(Upcasters::new()),
        &options(),
        until,
    )
    .await
    .unwrap();
    assert_eq!(reached, until);
    read.dump(&name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_is_blue_green_and_takes_over_equal_to_a_scratch_build() {
    let env = env();
    let head = fill(&env.store, 20_000).await;
    let counter = Counter::new("counter");
    let calls = counter.calls.clone();
    let runtime = start(&env, vec![Arc::new(counter)]);
    runtime.wait_for("counter", head, WAIT).await.unwrap();
    assert_eq!(sum(&env.read, "counter"), 20_000);
    assert_eq!(calls.load(Ordering::Relaxed), 20_000);

    runtime.rebuild("counter").unwrap();
    let err = runtime.rebuild("counter").unwrap_err();
    assert!(matches!(err, ProjectionError::InvalidState { .. }), "{err}");
    let status = wait_until(&runtime, |s| {
        s.state == ProjectionState::Rebuilding
            && s.rebuild
                .as_ref()
                .is_some_and(|r| r.checkpoint > Position::ZERO)
    })
    .await;
    assert_eq!(status.generation, 1);
    // While the rebuild runs, the old generation answers in full and follows appends.
    let mut appended = 0;
    while runtime.status_of("counter").unwrap().rebuild.is_some() {
        assert!(sum(&env.read, "counter") >= 20_000);
        let p = append_one(&env.store, "counter-live", json!({"n": 1})).await;
        appended += 1;
        runtime.wait_for("counter", p, WAIT).await.unwrap();
        assert_eq!(sum(&env.read, "counter"), 20_000 + appended);
    }
    let status = runtime.status_of("counter").unwrap();
    assert_eq!(status.generation, 2);
    assert_eq!(status.state, ProjectionState::Running);
    assert!(
        appended > 0,
        "the rebuild finished before any append could overlap it"
    );
    let checkpoint = status.checkpoint;
    runtime.pause("counter").unwrap();
    wait_until(&runtime, |s| s.state == ProjectionState::Paused).await;
    let rebuilt = env.read.dump("counter").unwrap();
    assert_eq!(
        rebuilt,
        scratch(&env, Arc::new(Counter::new("counter")), checkpoint).await
    );
    // The old generation's rows are gone (drop delay zero in these tests).
    wait_until(&runtime, |_| {
        env.read.active_generation("counter") == Some(2)
    })
    .await;
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_interrupted_by_a_restart_resumes_from_its_checkpoint() {
    let env = env();
    let head = fill(&env.store, 30_000).await;
    let runtime = start(&env, vec![Arc::new(Counter::new("counter"))]);
    runtime.wait_for("counter", head, WAIT).await.unwrap();
    runtime.rebuild("counter").unwrap();
    let status = wait_until(&runtime, |s| {
        s.rebuild.as_ref().is_some_and(|r| r.checkpoint.0 >= 5_000)
    })
    .await;
    runtime.shutdown().await;
    let interrupted_at = status.rebuild.unwrap().checkpoint;
    assert!(
        interrupted_at < head,
        "rebuild finished before the interruption"
    );

    let counter = Counter::new("counter");
    let calls = counter.calls.clone();
    let runtime = start(&env, vec![Arc::new(counter)]);
    let status = runtime.status_of("counter").unwrap();
    let resumed = status.rebuild.expect("the rebuild is still in progress");
    assert!(resumed.checkpoint >= interrupted_at);
    wait_until(&runtime, |s| s.generation == 2 && s.rebuild.is_none()).await;
    // Only the rest of the log was handed to the handler again, not all of it.
    assert!(
        calls.load(Ordering::Relaxed) <= head.0 - interrupted_at.0,
        "{} calls after resuming at {interrupted_at}",
        calls.load(Ordering::Relaxed)
    );
    assert_eq!(sum(&env.read, "counter"), 30_000);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_projection_version_is_rebuilt_on_start() {
    let env = env();
    let head = fill(&env.store, 1_000).await;
    let runtime = start(&env, vec![Arc::new(Counter::new("counter"))]);
    runtime.wait_for("counter", head, WAIT).await.unwrap();
    runtime.shutdown().await;
    let mut v2 = Counter::new("counter");
    v2.version = 2;
    let runtime = start(&env, vec![Arc::new(v2)]);
    let status = wait_until(&runtime, |s| s.version == 2 && s.rebuild.is_none()).await;
    assert_eq!(status.generation, 2);
    assert_eq!(sum(&env.read, "counter"), 1_000);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_survive_a_restart() {
    let env = env();
    let head = fill(&env.store, 500).await;
    let runtime = start(&env, vec![Arc::new(Counter::new("counter"))]);
    runtime.wait_for("counter", head, WAIT).await.unwrap();
    runtime.shutdown().await;
    let counter = Counter::new("counter");
    let calls = counter.calls.clone();
    let runtime = start(&env, vec![Arc::new(counter)]);
    assert_eq!(runtime.checkpoint("counter").unwrap(), head);
    let next = append_one(&env.store, "counter-z", json!({"n": 1})).await;
    runtime.wait_for("counter", next, WAIT).await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(sum(&env.read, "counter"), 501);
    runtime.shutdown().await;
}

#[test]
fn invalid_and_duplicate_names_are_refused() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _guard = tokio.enter();
    let env = env();
    let err = ProjectionRuntime::start(
        env.store.clone(),
        env.read.clone(),
        vec![Arc::new(Counter::new("Bad Name"))],
        Arc::new(Upcasters::new()),
        options(),
    )
    .unwrap_err();
    assert!(matches!(err, ProjectionError::InvalidName { .. }), "{err}");
    let err = ProjectionRuntime::start(
        env.store.clone(),
        env.read.clone(),
        vec![Arc::new(Counter::new("a")), Arc::new(Counter::new("a"))],
        Arc::new(Upcasters::new()),
        options(),
    )
    .unwrap_err();
    assert!(matches!(err, ProjectionError::DuplicateProjection { .. }));
}

#[test]
fn a_held_read_model_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = ReadModelStore::open(dir.path()).unwrap();
    let err = ReadModelStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, ProjectionError::Locked { .. }), "{err}");
}
