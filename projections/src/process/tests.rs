//! Process managers over a real read-model database: commands sent once under keys
//! derived from their events (across restarts), durable deadlines that fire once, retries
//! and parking, and the given/when/then kit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::process::testkit::given;
use crate::process::{
    CommandExecutor, CommandFailure, Dispatcher, DispatcherOptions, ManualClock, ProcessHandle,
    ProcessManager, ProcessProjection, Reaction, RetryPolicy,
};
use crate::testkit::EventLog;
use crate::{HandlerError, ProjectionRuntime, ReadModelStore, RuntimeOptions};
use annals_store::{
    CommandContext, EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, ReadFilter,
    RecordedEvent, StoreOptions, StreamId, Upcasters,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Answers questions: every `Asked` gets a `Reply`; a question not `Answered` within ten
/// seconds is escalated.
struct Helpdesk;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Ticket {
    asked: bool,
    answered: bool,
    escalated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Act {
    Reply(String),
    Escalate(String),
}

impl ProcessManager for Helpdesk {
    type State = Ticket;
    type Command = Act;

    fn name(&self) -> &str {
        "helpdesk"
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter::categories(["question"])
    }

    fn instance_of(&self, event: &RecordedEvent) -> Option<String> {
        event.stream_id.aggregate_id().map(str::to_string)
    }

    fn react(
        &self,
        state: &mut Ticket,
        event: &RecordedEvent,
        out: &mut Reaction<Act>,
    ) -> Result<(), HandlerError> {
        let id = self.instance_of(event).unwrap();
        match event.event_type.as_str() {
            "Asked" if !state.asked => {
                state.asked = true;
                out.send(Act::Reply(id));
                out.set_deadline("late", Duration::from_secs(10));
            }
            "Answered" => {
                state.answered = true;
                out.cancel_deadline("late");
            }
            _ => {}
        }
        Ok(())
    }

    fn on_deadline(
        &self,
        state: &mut Ticket,
        deadline: &str,
        event: &RecordedEvent,
        out: &mut Reaction<Act>,
    ) -> Result<(), HandlerError> {
        assert_eq!(deadline, "late");
        state.escalated = true;
        out.send(Act::Escalate(self.instance_of(event).unwrap()));
        Ok(())
    }
}

/// The effects of commands, deduplicated by idempotency key as a domain does it.
#[derive(Default)]
struct Ledger {
    effects: Mutex<HashMap<String, Act>>,
    calls: Mutex<u64>,
}

/// Carries out commands into a ledger. `fail_after_effect`: the effect lands, but the
/// answer is a failure (a crash between the two); `fail`: commands for these ids fail.
struct Desk {
    ledger: Arc<Ledger>,
    fail_after_effect: bool,
    fail: Mutex<Vec<String>>,
}

impl Desk {
    fn new(ledger: &Arc<Ledger>) -> Self {
        Self {
            ledger: ledger.clone(),
            fail_after_effect: false,
            fail: Mutex::new(Vec::new()),
        }
    }
}

impl CommandExecutor<Act> for Desk {
    async fn execute(&self, command: Act, ctx: CommandContext) -> Result<(), CommandFailure> {
        *self.ledger.calls.lock().unwrap() += 1;
        let id = match &command {
            Act::Reply(id) | Act::Escalate(id) => id.clone(),
        };
        if self.fail.lock().unwrap().contains(&id) {
            return Err(CommandFailure::Transient(format!("{id} is unreachable")));
        }
        let key = ctx.idempotency_key.expect("process commands carry a key");
        self.ledger
            .effects
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(command);
        if self.fail_after_effect {
            return Err(CommandFailure::Transient("crashed before answering".into()));
        }
        Ok(())
    }
}

struct Running {
    runtime: ProjectionRuntime,
    handle: ProcessHandle,
}

impl Running {
    async fn stop(self) {
        self.handle.shutdown().await;
        self.runtime.shutdown().await;
    }
}

fn start(
    log: &Arc<InMemoryEventStore>,
    dir: &std::path::Path,
    desk: impl Into<Arc<Desk>>,
    clock: &Arc<ManualClock>,
    retry: RetryPolicy,
) -> Running {
    let options = DispatcherOptions {
        retry,
        ..DispatcherOptions::default()
    };
    start_with(log, dir, desk.into(), clock, options)
}

/// The helpdesk's projection over `dir` and its dispatcher sending through `executor`.
fn start_with<X: CommandExecutor<Act>>(
    log: &Arc<InMemoryEventStore>,
    dir: &std::path::Path,
    executor: Arc<X>,
    clock: &Arc<ManualClock>,
    options: DispatcherOptions,
) -> Running {
    let pm = Arc::new(Helpdesk);
    let read = Arc::new(ReadModelStore::open(dir).unwrap());
    let runtime = ProjectionRuntime::start(
        log.clone(),
        read,
        vec![Arc::new(ProcessProjection::new(pm.clone()))],
        Arc::new(Upcasters::new()),
        RuntimeOptions::default(),
    )
    .unwrap();
    let handle = Dispatcher::start(
        pm,
        executor,
        log.clone(),
        runtime.clone(),
        clock.clone(),
        options,
    )
    .unwrap();
    Running { runtime, handle }
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

async fn ask(log: &InMemoryEventStore, id: &str, event_type: &str) {
    let stream = StreamId::new(format!("question-{id}")).unwrap();
    log.append(
        stream,
        ExpectedVersion::Any,
        vec![NewEvent::json(event_type, &json!({}))],
    )
    .await
    .unwrap();
}

async fn until(what: &str, clock: Option<&ManualClock>, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        if let Some(clock) = clock {
            clock.advance(Duration::from_millis(10));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn new_log() -> Arc<InMemoryEventStore> {
    Arc::new(InMemoryEventStore::new(StoreOptions::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_has_its_effect_once_across_crashes() {
    let log = new_log();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let ledger = Arc::new(Ledger::default());

    // First run: every effect lands but no send is acknowledged (a crash after each).
    let mut desk = Desk::new(&ledger);
    desk.fail_after_effect = true;
    let running = start(&log, dir.path(), desk, &clock, quick_retries(1_000));
    for i in 0..40 {
        ask(&log, &format!("q{i}"), "Asked").await;
    }
    until("every effect", Some(&clock), || {
        ledger.effects.lock().unwrap().len() == 40
    })
    .await;
    let status = running.handle.status().unwrap();
    assert_eq!(status.outbox, 40, "nothing was acknowledged: {status:?}");
    running.stop().await;

    // Second run over the same database: the outbox is sent again under the same keys.
    let running = start(
        &log,
        dir.path(),
        Desk::new(&ledger),
        &clock,
        quick_retries(1_000),
    );
    until("the outbox to empty", Some(&clock), || {
        running.handle.status().unwrap().outbox == 0
    })
    .await;
    let effects = ledger.effects.lock().unwrap().clone();
    assert_eq!(effects.len(), 40, "each command had its effect once");
    assert!(
        *ledger.calls.lock().unwrap() >= 80,
        "commands were sent again"
    );
    for (key, act) in &effects {
        assert!(key.starts_with("helpdesk/"), "{key}");
        assert!(key.ends_with("/0"), "{key}");
        assert!(matches!(act, Act::Reply(_)));
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_survives_a_restart_and_fires_once() {
    let log = new_log();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let ledger = Arc::new(Ledger::default());
    let running = start(
        &log,
        dir.path(),
        Desk::new(&ledger),
        &clock,
        quick_retries(3),
    );
    ask(&log, "late", "Asked").await;
    ask(&log, "prompt", "Asked").await;
    ask(&log, "prompt", "Answered").await;
    until("both replies", None, || {
        ledger.effects.lock().unwrap().len() == 2
    })
    .await;
    until("the checkpoint", None, || {
        running
            .handle
            .status()
            .unwrap()
            .projection
            .unwrap()
            .checkpoint
            .0
            == 3
    })
    .await;
    assert_eq!(
        running.handle.status().unwrap().deadlines,
        1,
        "one deadline pends"
    );
    running.stop().await;

    // Nine seconds: not due. Restart, then eleven: due, once, for the unanswered one.
    clock.advance(Duration::from_secs(9));
    let running = start(
        &log,
        dir.path(),
        Desk::new(&ledger),
        &clock,
        quick_retries(3),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.head().0, 3, "nothing fired early");
    clock.advance(Duration::from_secs(2));
    until("the escalation", None, || {
        ledger.effects.lock().unwrap().len() == 3
    })
    .await;
    let fired = log
        .read_stream(
            &StreamId::new("helpdesk-late").unwrap(),
            1,
            annals_store::Direction::Forward,
            10,
        )
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].event_type, "DeadlineReached");
    let asked = log
        .read_all(annals_store::Position(1), 1, &ReadFilter::all())
        .await
        .unwrap();
    assert_eq!(
        fired[0].metadata.causation_id,
        Some(asked.events[0].event_id)
    );
    clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.head().0, 4, "it fired once, and the answered one never");
    let status = running.handle.status().unwrap();
    assert_eq!((status.deadlines, status.deadlines_fired), (0, 1));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_keeps_failing_is_parked_then_retried_or_skipped() {
    let log = new_log();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let ledger = Arc::new(Ledger::default());
    let desk = Desk::new(&ledger);
    desk.fail
        .lock()
        .unwrap()
        .extend(["a".to_string(), "b".to_string()]);
    let desk = Arc::new(desk);
    let Running { runtime, handle } =
        start(&log, dir.path(), desk.clone(), &clock, quick_retries(3));
    for id in ["a", "b", "c"] {
        ask(&log, id, "Asked").await;
    }
    until("two parked commands", Some(&clock), || {
        handle.parked().unwrap().len() == 2
    })
    .await;
    let parked = handle.parked().unwrap();
    assert_eq!(parked[0].instance, "a");
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].error, "a is unreachable");
    assert_eq!(parked[0].command, json!({ "Reply": "a" }));
    assert_eq!(ledger.effects.lock().unwrap().len(), 1, "c went through");
    let status = handle.status().unwrap();
    assert_eq!(
        (status.parked, status.parked_total, status.outbox),
        (2, 2, 0)
    );

    // a's service is back: retried, it goes through; b is given up.
    desk.fail.lock().unwrap().clear();
    let a = (annals_store::Position(parked[0].position), parked[0].index);
    let b = (annals_store::Position(parked[1].position), parked[1].index);
    assert!(handle.retry_parked(a.0, a.1).unwrap());
    assert!(handle.skip_parked(b.0, b.1).unwrap());
    assert!(!handle.skip_parked(b.0, b.1).unwrap(), "skipped once");
    until("a's reply", Some(&clock), || {
        ledger.effects.lock().unwrap().len() == 2
    })
    .await;
    assert!(handle.parked().unwrap().is_empty());
    assert!(
        !handle.retry_parked(a.0, a.1).unwrap(),
        "nothing parked there any more"
    );
    handle.shutdown().await;
    runtime.shutdown().await;
}

fn asked(id: &str) -> Vec<RecordedEvent> {
    EventLog::new()
        .event(&format!("question-{id}"), "Asked", json!({}))
        .into_events()
}

#[test]
fn the_kit_shows_commands_deadlines_and_their_expiry() {
    let answered = EventLog::new()
        .event("question-q", "Asked", json!({}))
        .event("question-q", "Answered", json!({}))
        .into_events();
    given(Helpdesk, Vec::new())
        .when(asked("q").remove(0))
        .then_commands([Act::Reply("q".into())])
        .then_deadline_set("late", Duration::from_secs(10))
        .then_pending_deadlines("q", &["late"])
        .and()
        .when_deadline("q", "late")
        .then_commands([Act::Escalate("q".into())])
        .then_pending_deadlines("q", &[])
        .then_state("q", |t| assert!(t.escalated));
    // An answer cancels the deadline; a second question on the same instance is ignored.
    given(Helpdesk, answered[..1].to_vec())
        .when(answered[1].clone())
        .then_commands([])
        .then_pending_deadlines("q", &[])
        .and()
        .when(asked("q").remove(0))
        .then_nothing();
}

/// Carries out a reply by appending it to the log under the id its key gives it, as the
/// command bus does.
struct LogDesk {
    log: Arc<InMemoryEventStore>,
}

impl CommandExecutor<Act> for LogDesk {
    async fn execute(&self, command: Act, ctx: CommandContext) -> Result<(), CommandFailure> {
        let (Act::Reply(id) | Act::Escalate(id)) = command;
        let event = NewEvent::json("Replied", &json!({})).with_id(ctx.event_id(0).unwrap());
        let stream = StreamId::new(format!("reply-{id}")).unwrap();
        match self
            .log
            .append(stream, ExpectedVersion::Any, vec![event])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(CommandFailure::Transient(e.to_string())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_act_drops_what_the_acting_node_carried_out() {
    let log = new_log();
    let (acting_dir, idle_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::starting_now());
    let never = DispatcherOptions {
        idle: Duration::from_millis(20),
        active_when: Some(crate::process::ActiveWhen(Arc::new(|| false))),
        ..DispatcherOptions::default()
    };
    let idle = start_with(
        &log,
        idle_dir.path(),
        Arc::new(Desk::new(&Arc::new(Ledger::default()))),
        &clock,
        never,
    );
    let acting = start_with(
        &log,
        acting_dir.path(),
        Arc::new(LogDesk { log: log.clone() }),
        &clock,
        DispatcherOptions::default(),
    );
    for i in 0..5 {
        ask(&log, &format!("q{i}"), "Asked").await;
    }
    until("five replies in the log", None, || {
        acting.handle.status().unwrap().sent == 5
    })
    .await;
    until("the idle node's outbox to empty", None, || {
        idle.handle.status().unwrap().outbox == 0
    })
    .await;
    assert_eq!(
        idle.handle.status().unwrap().sent,
        0,
        "it sent nothing itself"
    );
    acting.stop().await;
    idle.stop().await;
}
