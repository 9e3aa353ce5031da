//! The runtime's actors on a real actix system with the in-memory store: one test per path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::error::RuntimeError;
use flowd_actors::events::EventKind;
use flowd_actors::flow::ControlCommand;
use flowd_actors::handler::{HandlerSet, PhaseContext, PhaseOutput};
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::memory_store::MemoryStore;
use flowd_actors::model::{FlowState, FlowStatus, NewFlow, PhaseStatus};
use flowd_actors::store::FlowStore;
use flowd_actors::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

fn phase(name: &str, handler: &str, params: Value, retries: u32) -> PhaseDefinition {
    PhaseDefinition {
        params,
        retries,
        retry_backoff_ms: Some(5),
        ..PhaseDefinition::new(name, handler)
    }
}

fn flow_type(name: &str, phases: Vec<PhaseDefinition>) -> FlowType {
    FlowType {
        name: name.into(),
        version: 1,
        phases,
    }
}

/// Set when the thread-blocking handler finally returns.
static BLOCKING_HANDLER_WOKE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn handlers() -> HandlerSet {
    let mut set = HandlerSet::with_builtins();
    set.register("panics", |_ctx: PhaseContext| async move {
        if true {
            panic!("handler exploded");
        }
        Ok(PhaseOutput::new(json!({})))
    });
    set.register("hangs", |_ctx: PhaseContext| std::future::pending());
    set.register("beats_then_hangs", |ctx: PhaseContext| async move {
        ctx.heartbeat.beat();
        std::future::pending::<()>().await;
        Ok(PhaseOutput::new(json!({})))
    });
    set.register("beats_while_working", |ctx: PhaseContext| async move {
        for _ in 0..15 {
            ctx.heartbeat.beat();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(PhaseOutput::new(json!({})))
    });
    set.register("blocks_thread", |_ctx: PhaseContext| async move {
        // Deliberately blocking: a sync call that never yields, as badly written handlers do.
        std::thread::sleep(Duration::from_secs(8));
        BLOCKING_HANDLER_WOKE.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(PhaseOutput::new(json!({})))
    });
    set.register("echo_key", |ctx: PhaseContext| async move {
        Ok(PhaseOutput::new(
            json!({ "key": ctx.idempotency_key, "seen": ctx.outputs.len() }),
        ))
    });
    set
}

async fn start(store: Arc<MemoryStore>, types: Vec<FlowType>) -> Runtime {
    let config = RuntimeConfig {
        flow_arbiters: 2,
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(500),
        ..RuntimeConfig::default()
    };
    Runtime::start(config, store, handlers(), types)
        .await
        .expect("runtime starts")
}

fn request(flow_type: &str) -> NewFlow {
    NewFlow {
        flow_type: flow_type.into(),
        input: json!({ "n": 1 }),
        parent_flow_id: None,
        master_flow_id: None,
        tenant: Tenant::default_tenant(),
        created_by: Some("tester".into()),
        idempotency_key: None,
    }
}

async fn wait_for(store: &MemoryStore, id: FlowId, done: impl Fn(&FlowState) -> bool) -> FlowState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flow = store.load_flow(id).await.unwrap().expect("flow stored");
        if done(&flow) {
            return flow;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; flow is {:?} at {:?}",
            flow.status,
            flow.current_phase
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn terminal(flow: &FlowState) -> bool {
    flow.status.is_terminal()
}

#[actix::test]
async fn a_flow_runs_every_phase_to_completed_with_gap_free_events() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "three",
        vec![
            phase("a", "noop", json!({}), 0),
            phase("b", "echo_key", json!({}), 0),
            phase("c", "noop", json!({}), 0),
        ],
    )];
    let runtime = start(store.clone(), types).await;
    let created = runtime.create_flow(request("three")).await.unwrap();
    assert!(created.created);
    assert_eq!(
        created.flow.status,
        FlowStatus::Running,
        "create answers with the flow already running"
    );
    let flow = wait_for(&store, created.flow.id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(flow.progress_percentage, 100.0);
    assert_eq!(flow.next_phase, None);
    assert!(
        flow.phases
            .iter()
            .all(|p| p.status == PhaseStatus::Succeeded)
    );
    let b = flow.phases[1].output.clone().unwrap();
    assert_eq!(b["key"], json!(format!("{}:b:1", flow.id)));
    assert_eq!(b["seen"], json!(1), "handlers see earlier outputs");
    let events = store.flow_events(flow.id, 0, 100).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(events[0].status, FlowStatus::Initialized);
    assert_eq!(events[1].status, FlowStatus::Running);
    assert_eq!(events.last().unwrap().kind, EventKind::FlowCompleted);
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
}

#[actix::test]
async fn a_failing_phase_retries_then_succeeds_with_journal_rows() {
    let store = Arc::new(MemoryStore::new());
    let runtime = start(
        store.clone(),
        vec![flow_type(
            "flaky",
            vec![phase("f", "fail", json!({"times": 2}), 2)],
        )],
    )
    .await;
    let id = runtime.create_flow(request("flaky")).await.unwrap().flow.id;
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(flow.phases[0].attempt, 3);
    let failures = store.failures(id).await.unwrap();
    assert_eq!(
        failures.iter().map(|f| f.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[actix::test]
async fn retries_exhausted_fail_the_flow() {
    let store = Arc::new(MemoryStore::new());
    let runtime = start(
        store.clone(),
        vec![flow_type(
            "flaky",
            vec![phase("f", "fail", json!({"times": 2}), 1)],
        )],
    )
    .await;
    let id = runtime.create_flow(request("flaky")).await.unwrap().flow.id;
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(store.failures(id).await.unwrap().len(), 2);
}

#[actix::test]
async fn a_panicking_handler_is_journaled_and_other_flows_carry_on() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![
        flow_type("bad", vec![phase("p", "panics", json!({}), 0)]),
        flow_type("good", vec![phase("a", "noop", json!({}), 0)]),
    ];
    let runtime = start(store.clone(), types).await;
    let bad = runtime.create_flow(request("bad")).await.unwrap().flow.id;
    let good = runtime.create_flow(request("good")).await.unwrap().flow.id;
    assert_eq!(
        wait_for(&store, bad, terminal).await.status,
        FlowStatus::Failed
    );
    assert_eq!(
        wait_for(&store, good, terminal).await.status,
        FlowStatus::Completed
    );
    let failures = store.failures(bad).await.unwrap();
    assert_eq!(failures[0].error_kind, "panic");
    assert!(failures[0].message.contains("handler exploded"));
}

#[actix::test]
async fn a_hanging_handler_times_out() {
    let store = Arc::new(MemoryStore::new());
    let mut hang = phase("h", "hangs", json!({}), 0);
    hang.timeout_s = Some(1);
    let runtime = start(store.clone(), vec![flow_type("hang", vec![hang])]).await;
    let id = runtime.create_flow(request("hang")).await.unwrap().flow.id;
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(store.failures(id).await.unwrap()[0].error_kind, "timeout");
}

#[actix::test]
async fn pause_resume_and_cancel() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "slow",
        vec![
            phase("a", "sleep", json!({"ms": 200}), 0),
            phase("b", "sleep", json!({"ms": 200}), 0),
            phase("c", "noop", json!({}), 0),
        ],
    )];
    let runtime = start(store.clone(), types).await;
    let tenant = Tenant::default_tenant();
    let id = runtime.create_flow(request("slow")).await.unwrap().flow.id;
    let paused = runtime
        .control(tenant.clone(), id, ControlCommand::Pause)
        .await
        .unwrap();
    assert_eq!(paused.status, FlowStatus::Paused);
    let held = wait_for(&store, id, |f| f.phases[0].status == PhaseStatus::Succeeded).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held_later = store.load_flow(id).await.unwrap().unwrap();
    assert_eq!(
        held_later.phases[1].status,
        PhaseStatus::Pending,
        "no phase starts while paused"
    );
    assert_eq!(held.current_phase.as_deref(), Some("b"));
    runtime
        .control(tenant.clone(), id, ControlCommand::Resume)
        .await
        .unwrap();
    wait_for(&store, id, |f| f.phases[1].status == PhaseStatus::Running).await;
    let cancelled = runtime
        .control(tenant.clone(), id, ControlCommand::Cancel)
        .await
        .unwrap();
    assert_eq!(cancelled.status, FlowStatus::Cancelled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flow = store.load_flow(id).await.unwrap().unwrap();
    assert_eq!(flow.status, FlowStatus::Cancelled);
    assert_eq!(
        flow.phases[2].status,
        PhaseStatus::Pending,
        "no later phase runs after cancel"
    );
    let again = runtime
        .control(tenant.clone(), id, ControlCommand::Cancel)
        .await
        .unwrap();
    assert_eq!(again.status, FlowStatus::Cancelled, "cancel is idempotent");
    let refused = runtime.control(tenant, id, ControlCommand::Resume).await;
    assert!(matches!(
        refused,
        Err(RuntimeError::IllegalTransition {
            status: FlowStatus::Cancelled
        })
    ));
}

#[actix::test]
async fn retry_resumes_a_failed_flow_at_its_failed_phase() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "once",
        vec![
            phase("a", "noop", json!({}), 0),
            phase("b", "fail", json!({"times": 1}), 0),
        ],
    )];
    let runtime = start(store.clone(), types).await;
    let id = runtime.create_flow(request("once")).await.unwrap().flow.id;
    assert_eq!(
        wait_for(&store, id, terminal).await.status,
        FlowStatus::Failed
    );
    let retried = runtime
        .control(Tenant::default_tenant(), id, ControlCommand::Retry)
        .await
        .unwrap();
    assert_eq!(retried.status, FlowStatus::Running);
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!((flow.phases[0].attempt, flow.phases[1].attempt), (1, 2));
}

#[actix::test]
async fn a_short_outage_is_bridged_by_commit_retries() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "two",
        vec![
            phase("a", "sleep", json!({"ms": 100}), 0),
            phase("b", "noop", json!({}), 0),
        ],
    )];
    let runtime = start(store.clone(), types).await;
    let id = runtime.create_flow(request("two")).await.unwrap().flow.id;
    store.set_fail_commits(true);
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.set_fail_commits(false);
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    let events = store.flow_events(id, 0, 100).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
}

#[actix::test]
async fn idempotent_creates_share_one_flow() {
    let store = Arc::new(MemoryStore::new());
    let runtime = start(
        store.clone(),
        vec![flow_type("one", vec![phase("a", "noop", json!({}), 0)])],
    )
    .await;
    let mut keyed = request("one");
    keyed.idempotency_key = Some("k1".into());
    let answers =
        futures_util::future::join_all((0..20).map(|_| runtime.create_flow(keyed.clone()))).await;
    let ids: std::collections::HashSet<FlowId> = answers
        .iter()
        .map(|a| a.as_ref().unwrap().flow.id)
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.as_ref().unwrap().created)
            .count(),
        1
    );
    keyed.input = json!({ "other": true });
    assert!(matches!(
        runtime.create_flow(keyed).await,
        Err(RuntimeError::IdempotencyMismatch(_))
    ));
}

#[actix::test]
async fn concurrent_creates_with_one_key_and_different_bodies_conflict() {
    let store = Arc::new(MemoryStore::new());
    let runtime = start(
        store.clone(),
        vec![flow_type("one", vec![phase("a", "noop", json!({}), 0)])],
    )
    .await;
    let mut first = request("one");
    first.idempotency_key = Some("k2".into());
    let mut second = first.clone();
    second.input = json!({ "n": 2 });
    let (a, b) = futures_util::join!(runtime.create_flow(first), runtime.create_flow(second));
    assert!(a.is_ok(), "{a:?}");
    assert!(
        matches!(b, Err(RuntimeError::IdempotencyMismatch(_))),
        "the second request got {b:?}"
    );
}

#[actix::test]
async fn a_long_outage_is_waited_out_and_the_finished_phase_is_kept() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "two",
        vec![
            phase("a", "sleep", json!({"ms": 50}), 0),
            phase("b", "noop", json!({}), 0),
        ],
    )];
    let runtime = start(store.clone(), types).await;
    let id = runtime.create_flow(request("two")).await.unwrap().flow.id;
    store.set_fail_commits(true);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        !runtime.is_writable().await.unwrap_or(false),
        "an outage shows in readiness"
    );
    store.set_fail_commits(false);
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(flow.phases[0].attempt, 1, "phase a ran again");
    assert!(
        runtime
            .metrics()
            .render(&Default::default())
            .contains("flowd_actor_restarts_total 0"),
        "the flow actor was restarted instead of waiting"
    );
    assert!(runtime.is_writable().await.expect("ready"));
    let events = store.flow_events(id, 0, 100).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let started_a = events
        .iter()
        .filter(|e| e.kind == EventKind::PhaseStarted && e.current_phase.as_deref() == Some("a"))
        .count();
    assert_eq!(
        started_a, 1,
        "the interrupted attempt re-ran without a second start event"
    );
}

fn strict_config(max_restarts: usize) -> RuntimeConfig {
    RuntimeConfig {
        flow_arbiters: 1,
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        restart_intensity: flowd_actors::supervisor::RestartIntensity {
            max_restarts,
            window: Duration::from_secs(60),
        },
        ..RuntimeConfig::default()
    }
}

#[actix::test]
async fn a_database_outage_never_counts_toward_the_restart_intensity() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "two",
        vec![
            phase("a", "sleep", json!({"ms": 50}), 0),
            phase("b", "noop", json!({}), 0),
        ],
    )];
    let runtime = Runtime::start(strict_config(1), store.clone(), handlers(), types)
        .await
        .unwrap();
    let id = runtime.create_flow(request("two")).await.unwrap().flow.id;
    // Long enough for several failed commits and restarts of the flow's actor.
    store.set_fail_commits(true);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        !runtime.is_writable().await.unwrap(),
        "unready while commits fail"
    );
    store.set_fail_commits(false);
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(
        flow.status,
        FlowStatus::Completed,
        "an outage is waited out, not held against the flow"
    );
    assert!(store.failures(id).await.unwrap().is_empty());
    assert!(
        runtime.is_writable().await.unwrap(),
        "ready again after a commit succeeded"
    );
}

#[actix::test]
async fn an_actor_that_stops_answering_pings_is_restarted_and_the_flow_completes() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "slow",
        vec![
            phase("a", "sleep", json!({"ms": 300}), 0),
            phase("b", "noop", json!({}), 0),
        ],
    )];
    let runtime = Runtime::start(strict_config(3), store.clone(), handlers(), types)
        .await
        .unwrap();
    let id = runtime.create_flow(request("slow")).await.unwrap().flow.id;
    // Frozen past its ping timeout, and thawed only after its successor finished the flow.
    runtime.faults().freeze(id, 1, Duration::from_millis(2000));
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(
        runtime
            .metrics()
            .failures_by_kind()
            .get("restart_intensity_exceeded"),
        None
    );
    assert!(runtime.health_stats().await.unwrap().pings_missed >= 1);
    let events = store.flow_events(id, 0, 100).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = store.flow_events(id, 0, 100).await.unwrap();
    assert_eq!(later, events, "the thawed, replaced actor wrote nothing");
    let seqs: Vec<u64> = later.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=later.len() as u64).collect::<Vec<_>>());
}

#[actix::test]
async fn a_restart_loop_hits_the_intensity_limit_and_fails_the_flow_loudly() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "slow",
        vec![phase("a", "sleep", json!({"ms": 300}), 0)],
    )];
    let runtime = Runtime::start(strict_config(2), store.clone(), handlers(), types)
        .await
        .unwrap();
    let id = runtime.create_flow(request("slow")).await.unwrap().flow.id;
    // Every life of this flow's actor freezes: a restart loop.
    runtime.faults().freeze(id, 100, Duration::from_secs(30));
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Failed);
    let failures = store.failures(id).await.unwrap();
    assert_eq!(
        failures.last().unwrap().error_kind,
        "restart_intensity_exceeded"
    );
    let events = store.flow_events(id, 0, 100).await.unwrap();
    assert_eq!(events.last().unwrap().kind, EventKind::FlowFailed);
}

#[actix::test]
async fn a_create_that_did_not_commit_is_not_acknowledged() {
    let store = Arc::new(MemoryStore::new());
    let runtime = start(
        store.clone(),
        vec![flow_type("one", vec![phase("a", "noop", json!({}), 0)])],
    )
    .await;
    store.set_fail_commits(true);
    assert!(matches!(
        runtime.create_flow(request("one")).await,
        Err(RuntimeError::Unavailable(_))
    ));
    store.set_fail_commits(false);
    let everything = flowd_actors::store::FlowQuery {
        limit: 100,
        ..Default::default()
    };
    let listed = store.list_flows(&everything).await.unwrap();
    assert!(listed.is_empty());
}

#[actix::test]
async fn a_handler_blocking_its_thread_stalls_nothing_else_and_times_out() {
    let store = Arc::new(MemoryStore::new());
    let mut blocking = phase("b", "blocks_thread", json!({}), 0);
    blocking.timeout_s = Some(2);
    let types = vec![
        flow_type("blocking", vec![blocking]),
        flow_type(
            "quick",
            vec![
                phase("a", "sleep", json!({"ms": 20}), 0),
                phase("b", "noop", json!({}), 0),
            ],
        ),
    ];
    let runtime = start(store.clone(), types).await;
    let blocked = runtime
        .create_flow(request("blocking"))
        .await
        .unwrap()
        .flow
        .id;
    let quick: Vec<FlowId> =
        futures_util::future::join_all((0..10).map(|_| runtime.create_flow(request("quick"))))
            .await
            .into_iter()
            .map(|created| created.unwrap().flow.id)
            .collect();
    for id in quick {
        assert_eq!(
            wait_for(&store, id, terminal).await.status,
            FlowStatus::Completed
        );
    }
    let still = store.load_flow(blocked).await.unwrap().unwrap();
    assert_eq!(
        still.status,
        FlowStatus::Running,
        "other flows finished while the handler blocked"
    );
    let flow = wait_for(&store, blocked, terminal).await;
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(
        store.failures(blocked).await.unwrap()[0].error_kind,
        "timeout"
    );
    let woke = BLOCKING_HANDLER_WOKE.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        !woke,
        "failed at its deadline, not when the blocked thread woke"
    );
}

#[actix::test]
async fn a_handler_that_stops_heartbeating_is_stuck_but_a_beating_one_is_not() {
    let store = Arc::new(MemoryStore::new());
    let mut silent = phase("s", "beats_then_hangs", json!({}), 0);
    silent.heartbeat_timeout_s = Some(1);
    let mut busy = phase("w", "beats_while_working", json!({}), 0);
    busy.heartbeat_timeout_s = Some(1);
    let types = vec![
        flow_type("silent", vec![silent]),
        flow_type("busy", vec![busy]),
    ];
    let runtime = start(store.clone(), types).await;
    let silent = runtime
        .create_flow(request("silent"))
        .await
        .unwrap()
        .flow
        .id;
    let busy = runtime.create_flow(request("busy")).await.unwrap().flow.id;
    let flow = wait_for(&store, silent, terminal).await;
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(
        store.failures(silent).await.unwrap()[0].error_kind,
        "heartbeat_timeout"
    );
    let flow = wait_for(&store, busy, terminal).await;
    assert_eq!(
        flow.status,
        FlowStatus::Completed,
        "1.5 s of work with beats every 100 ms is not stuck"
    );
}

#[actix::test]
async fn an_external_task_is_leased_completed_and_its_lease_fenced() {
    use flowd_actors::queue::{QueueError, Report};
    let store = Arc::new(MemoryStore::new());
    let external = phase("crew", "external", json!({ "queue": "q" }), 1);
    let runtime = start(store.clone(), vec![flow_type("ext", vec![external])]).await;
    let id = runtime.create_flow(request("ext")).await.unwrap().flow.id;
    let (tenant, queue, worker) = (
        Tenant::default_tenant(),
        "q".to_owned(),
        Some("w".to_owned()),
    );
    let wait = Duration::from_secs(5);

    // A lease that runs out ends attempt 1; attempt 2 is queued for the next worker.
    let first = runtime
        .poll_task(
            tenant.clone(),
            queue.clone(),
            worker.clone(),
            wait,
            Duration::from_millis(300),
        )
        .await
        .unwrap()
        .expect("a task");
    assert_eq!((first.flow_id, first.attempt), (id, 1));
    let second = runtime
        .poll_task(
            tenant.clone(),
            queue.clone(),
            worker.clone(),
            wait,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .expect("the retry's task");
    assert_eq!(second.attempt, 2);
    let stale = runtime
        .report_task(
            tenant.clone(),
            first.task_id,
            first.lease_id,
            Report::Complete {
                output: json!(1),
                next_phase: flowd_actors::handler::NextPhase::ByDefinition,
            },
        )
        .await;
    assert!(
        matches!(stale, Err(QueueError::StaleLease { .. })),
        "{stale:?}"
    );
    runtime
        .report_task(
            tenant.clone(),
            second.task_id,
            second.lease_id,
            Report::Heartbeat {
                extend: Duration::from_secs(30),
            },
        )
        .await
        .unwrap();
    runtime
        .report_task(
            tenant,
            second.task_id,
            second.lease_id,
            Report::Complete {
                output: json!({ "done": 2 }),
                next_phase: flowd_actors::handler::NextPhase::ByDefinition,
            },
        )
        .await
        .unwrap();
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(flow.phases[0].output, Some(json!({ "done": 2 })));
    let journal = store.failures(id).await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].error_kind, "lease_expired");
}

#[actix::test]
async fn a_fan_out_waits_for_its_children_and_cancel_reaches_them() {
    let store = Arc::new(MemoryStore::new());
    let child = flow_type(
        "child",
        vec![phase("work", "sleep", json!({ "ms": 100 }), 0)],
    );
    let slow_child = flow_type(
        "slow_child",
        vec![phase("work", "sleep", json!({ "ms": 60_000 }), 0)],
    );
    let master = flow_type(
        "master",
        vec![phase(
            "fan",
            "child_flows",
            json!({ "flow_type": "child", "count": 5 }),
            0,
        )],
    );
    let slow_master = flow_type(
        "slow_master",
        vec![phase(
            "fan",
            "child_flows",
            json!({ "flow_type": "slow_child", "count": 3 }),
            0,
        )],
    );
    let runtime = start(store.clone(), vec![child, slow_child, master, slow_master]).await;

    let id = runtime
        .create_flow(request("master"))
        .await
        .unwrap()
        .flow
        .id;
    let flow = wait_for(&store, id, terminal).await;
    assert_eq!(flow.status, FlowStatus::Completed);
    let children = store
        .list_flows(&flowd_actors::store::FlowQuery {
            parent_flow_id: Some(id),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(children.len(), 5);
    assert!(
        children
            .iter()
            .all(|c| c.status == FlowStatus::Completed && c.master_flow_id == id)
    );

    let slow = runtime
        .create_flow(request("slow_master"))
        .await
        .unwrap()
        .flow
        .id;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = store
            .list_flows(&flowd_actors::store::FlowQuery {
                parent_flow_id: Some(slow),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        if started.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "children did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime
        .control(Tenant::default_tenant(), slow, ControlCommand::Cancel)
        .await
        .unwrap();
    let children = store
        .list_flows(&flowd_actors::store::FlowQuery {
            parent_flow_id: Some(slow),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        children.iter().all(|c| c.status == FlowStatus::Cancelled),
        "{children:?}"
    );
}

/// Another node takes the flow over while its phase runs here: the phase's result is fenced
/// off (nothing of it is stored, the fence is journaled and counted), the flow actor stops,
/// and nothing here restarts or resumes it, since it is another node's now.
#[actix::test]
async fn a_flow_taken_over_by_another_node_stops_here_without_writing() {
    let store = Arc::new(MemoryStore::new());
    let types = vec![flow_type(
        "slow",
        vec![
            phase("wait", "sleep", json!({ "ms": 300 }), 0),
            phase("after", "noop", json!({}), 0),
        ],
    )];
    let runtime = start(store.clone(), types).await;
    let id = runtime.create_flow(request("slow")).await.unwrap().flow.id;
    assert_eq!(runtime.live_flows().await.unwrap(), 1);
    store.take_over(id).expect("stored");

    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.live_flows().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the fenced actor never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runtime.metrics().fenced_writes(), 1);
    // Health pings and the stored-flow sweep run meanwhile: the flow stays the other node's.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(runtime.live_flows().await.unwrap(), 0);
    let flow = store.load_flow(id).await.unwrap().expect("stored");
    assert_eq!(flow.status, FlowStatus::Running);
    assert_eq!(flow.current_phase.as_deref(), Some("wait"));
    assert_eq!(
        flow.phases[0].status,
        PhaseStatus::Running,
        "its result was not written"
    );
    let journal = store.failures(id).await.unwrap();
    assert_eq!(
        journal
            .iter()
            .map(|f| f.error_kind.as_str())
            .collect::<Vec<_>>(),
        ["fenced"]
    );
}
