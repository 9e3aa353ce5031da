//! One conformance suite for every store: the in-memory store (which the actors' own tests
//! run on), SQLite always (a temp file), and PostgreSQL when the tests were built with
//! `FLOWD_TEST_POSTGRES_URL` set (cfg `flowd_postgres_tests`; each test gets its own throw-away
//! database). Without it the PostgreSQL tests are not built at all. A case that only a diesel
//! store can have (a cloned handle sharing one pool) runs on SQLite and PostgreSQL alone.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Duration;
#[cfg(flowd_postgres_tests)]
use diesel_async::RunQueryDsl;
use flowd::store::DbStore;
use flowd::testing::{Backend, TestDatabase};
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::events::{EventKind, FlowEvent};
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::memory_store::MemoryStore;
use flowd_actors::model::{FailureRecord, FlowState, FlowStatus, NewFlow, PhaseStatus, now};
use flowd_actors::store::{FlowQuery, FlowStore, FlowUpdate, StoreError, TransitionWrite, Write};
use flowd_actors::task::{TaskId, TaskRecord, TaskStatus};
use serde_json::json;

/// A diesel store on a fresh database; the database goes when this does, after the store.
struct TestDb {
    store: DbStore,
    database: TestDatabase,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let database = TestDatabase::new(Backend::Sqlite);
        // A nested folder checks that connect creates the parent directory.
        let url = format!("sqlite://{}/nested/flowd.db", database.dir().display());
        let store = DbStore::connect(&url, 4).await.expect("connect sqlite");
        assert_eq!(store.backend_name(), "sqlite");
        TestDb { store, database }
    }

    #[cfg(flowd_postgres_tests)]
    async fn postgres() -> TestDb {
        let database = TestDatabase::new(Backend::Postgres);
        let store = DbStore::connect(&database.url, 4)
            .await
            .expect("connect postgres");
        assert_eq!(store.backend_name(), "postgres");
        TestDb { store, database }
    }

    /// Closes the store's connections before the database is dropped.
    fn finish(self) {
        let TestDb { store, database } = self;
        drop(store);
        drop(database);
    }
}

/// The cases on SQLite, and on PostgreSQL when built for it, in the two modules named.
macro_rules! on_diesel_stores {
    ($sqlite:ident, $postgres:ident: $($name:ident),* $(,)?) => {
        mod $sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    super::$name(&db.store).await;
                    db.finish();
                }
            )*
        }

        #[cfg(flowd_postgres_tests)]
        mod $postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::postgres().await;
                    super::$name(&db.store).await;
                    db.finish();
                }
            )*
        }
    };
}

/// Every case on every store: memory, SQLite, and PostgreSQL when built for it.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = super::MemoryStore::new();
                    super::$name(&store).await;
                }
            )*
        }

        on_diesel_stores!(sqlite, postgres: $($name),*);
    };
}

conformance!(
    create_round_trips_every_field,
    update_changes_flow_and_phase_rows,
    events_come_back_in_order_after_a_cursor,
    failures_are_journaled_oldest_first,
    idempotency_key_finds_the_flow_within_its_tenant,
    listing_filters_and_pages_newest_first,
    active_flows_exclude_terminal_ones,
    flow_types_round_trip_and_ignore_duplicates,
    a_failing_batch_commits_nothing,
    a_large_batch_commits_every_row_in_order,
    max_event_id_tracks_the_highest_id,
    empty_batch_and_ping,
    tasks_round_trip_by_id_and_by_attempt,
    task_writes_move_status_lease_and_result,
    a_task_attempt_is_queued_once,
    tree_events_cover_the_whole_tree_in_id_order,
    events_after_reads_every_tenant_in_id_order,
);

// The ownership fence of cluster mode: PostgreSQL, and the memory store that mirrors it for
// the actors' tests. SQLite is single-node and has no fence.
mod memory_fence {
    #[tokio::test]
    async fn a_fenced_write_commits_nothing_and_the_others_commit() {
        let store = super::MemoryStore::new();
        super::a_fenced_write_commits_nothing_and_the_others_commit(&store, async |id| {
            store.take_over(id).expect("stored");
        })
        .await;
    }
}

#[cfg(flowd_postgres_tests)]
mod postgres_fence {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    #[tokio::test]
    async fn a_fenced_write_commits_nothing_and_the_others_commit() {
        let db = super::TestDb::postgres().await;
        let url = db.database.url.clone();
        super::a_fenced_write_commits_nothing_and_the_others_commit(&db.store, async |id| {
            // What another node's claim does to the row.
            let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
            let claimed = diesel::sql_query(
                "UPDATE flows SET owner_node = 'another-node', owner_epoch = owner_epoch + 1 \
                 WHERE id = $1",
            )
            .bind::<diesel::sql_types::Uuid, _>(id.0)
            .execute(&mut conn)
            .await
            .expect("claim");
            assert_eq!(claimed, 1);
        })
        .await;
        db.finish();
    }
}

// Cases about the diesel stores' handle itself, which the memory store does not have.
on_diesel_stores!(sqlite_db, postgres_db: a_cloned_store_shares_the_database);

// ---------------------------------------------------------------------------------------------

static NEXT_EVENT_ID: AtomicI64 = AtomicI64::new(1);

fn phase(name: &str) -> PhaseDefinition {
    PhaseDefinition::new(name, "noop")
}

fn flow_type(name: &str, version: u32) -> FlowType {
    FlowType {
        name: name.into(),
        version,
        phases: vec![phase("import"), phase("analyze"), phase("report")],
    }
}

fn tenant(account: &str) -> Tenant {
    Tenant {
        client_account_id: account.into(),
        engagement_id: "eng-1".into(),
    }
}

fn new_flow(
    definition: &FlowType,
    tenant: &Tenant,
    parent: Option<&FlowState>,
    key: Option<&str>,
) -> FlowState {
    FlowState::new_initialized(
        definition,
        NewFlow {
            flow_type: definition.name.clone(),
            input: json!({"source": "cmdb", "n": 3, "nested": {"list": [1, 2.5, "x", null, true]}}),
            parent_flow_id: parent.map(|p| p.id),
            master_flow_id: parent.map(|p| p.master_flow_id),
            tenant: tenant.clone(),
            created_by: Some("alice".into()),
            idempotency_key: key.map(str::to_owned),
        },
    )
}

/// Advances the flow's `seq` and returns the event for it, with a fresh global id.
fn event(flow: &mut FlowState, kind: EventKind, error: Option<&str>) -> FlowEvent {
    flow.last_seq += 1;
    let mut event = FlowEvent::of(flow, kind, error.map(str::to_owned));
    event.id = NEXT_EVENT_ID.fetch_add(1, Ordering::Relaxed);
    event
}

/// The first write of a flow, with its `flow_initialized` event; returns the stored state.
fn create(flow: &mut FlowState) -> (Write, FlowEvent) {
    let event = event(flow, EventKind::FlowInitialized, None);
    let write = Write::Transition(TransitionWrite {
        flow_id: flow.id,
        create: Some(Box::new(flow.clone())),
        flow: FlowUpdate::of(flow),
        phases: Vec::new(),
        events: vec![event.clone()],
        failure: None,
    });
    (write, event)
}

/// A transition of an existing flow that rewrote `positions`.
fn transition(
    flow: &FlowState,
    positions: &[usize],
    events: Vec<FlowEvent>,
    failure: Option<FailureRecord>,
) -> Write {
    Write::Transition(TransitionWrite {
        flow_id: flow.id,
        create: None,
        flow: FlowUpdate::of(flow),
        phases: positions
            .iter()
            .map(|&i| (i, flow.phases[i].clone()))
            .collect(),
        events,
        failure,
    })
}

/// Starts phase `index` of `flow`: flow running, phase running with one more attempt.
fn start_phase(flow: &mut FlowState, index: usize) -> Write {
    let at = now();
    flow.status = FlowStatus::Running;
    flow.current_phase = Some(flow.phases[index].name.clone());
    flow.next_phase = flow.phases.get(index + 1).map(|p| p.name.clone());
    flow.updated_at = at;
    let phase = &mut flow.phases[index];
    phase.status = PhaseStatus::Running;
    phase.attempt += 1;
    phase.started_at = Some(at);
    let e = event(flow, EventKind::PhaseStarted, None);
    transition(flow, &[index], vec![e], None)
}

/// A queued task for one attempt of one phase of `flow`, every optional column empty.
fn task(flow: &FlowState, phase: &str, attempt: u32) -> TaskRecord {
    let at = now();
    TaskRecord {
        id: TaskId::new(),
        queue: "scanners".into(),
        flow_id: flow.id,
        master_flow_id: flow.master_flow_id,
        phase: phase.into(),
        attempt,
        client_account_id: flow.client_account_id.clone(),
        engagement_id: flow.engagement_id.clone(),
        payload: json!({"input": {"hosts": ["a", "b"]}, "attempt": attempt, "none": null}),
        status: TaskStatus::Queued,
        lease_id: None,
        worker_id: None,
        lease_expires_at: None,
        result: None,
        created_at: at,
        updated_at: at,
    }
}

async fn load_task(store: &dyn FlowStore, id: TaskId) -> TaskRecord {
    store
        .load_task(id)
        .await
        .expect("load_task")
        .expect("task exists")
}

async fn commit(store: &dyn FlowStore, batch: &[Write]) {
    store.commit(batch).await.expect("commit");
}

/// Commits `batch` and gives its events the ids the store assigned, when it numbers them
/// itself (PostgreSQL: in commit order across a cluster), as the persistence actor does.
async fn commit_numbered(store: &dyn FlowStore, batch: &mut [Write]) {
    let receipt = store.commit_receipted(batch, false).await.expect("commit");
    let Some(mut next) = receipt.first_event_id else {
        return;
    };
    for (position, write) in batch.iter_mut().enumerate() {
        if let Write::Transition(t) = write
            && !receipt.is_fenced(position)
        {
            for event in &mut t.events {
                event.id = next;
                next += 1;
            }
        }
    }
}

/// The first event of a transition.
fn first_event(write: &Write) -> FlowEvent {
    match write {
        Write::Transition(t) => t.events[0].clone(),
        Write::FlowType(_) | Write::Task(_) => unreachable!("a transition"),
    }
}

/// The stored flow, its owner left out when it is the store's own node: a flow in memory
/// does not know which node stored it, and is compared with what is read back.
async fn load(store: &dyn FlowStore, id: FlowId) -> FlowState {
    let flow = store
        .load_flow(id)
        .await
        .expect("load_flow")
        .expect("flow exists");
    own(store, flow)
}

/// `flow` as read, without its owner when that is the store's own node (see [`load`]).
fn own(store: &dyn FlowStore, mut flow: FlowState) -> FlowState {
    assert!(
        store.owns(&flow),
        "stored flows are owned by their store's node"
    );
    flow.owner_node = None;
    flow
}

// ---------------------------------------------------------------------------------------------

async fn create_round_trips_every_field(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let acme = tenant("acme");
    let mut parent = new_flow(&definition, &acme, None, Some("key-1"));
    // Exercise every nullable phase column with a value, and an odd timestamp.
    parent.phases[2].output = Some(json!({"rows": 10, "ok": true}));
    parent.phases[2].error = Some("earlier error".into());
    parent.phases[2].attempt = 7;
    parent.phases[2].started_at = Some(parent.created_at - Duration::microseconds(999_999));
    parent.phases[2].finished_at = Some(parent.created_at + Duration::microseconds(1));
    parent.progress_percentage = 12.345_678_9;
    let mut child = new_flow(&definition, &acme, Some(&parent), None);
    child.created_by = None;

    let (w1, _) = create(&mut parent);
    let (w2, _) = create(&mut child);
    commit(store, &[w1, w2]).await;

    let loaded = load(store, parent.id).await;
    assert_eq!(loaded, parent);
    assert_eq!(loaded.last_seq, 1);
    assert_eq!(loaded.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(loaded.created_at.timestamp_subsec_nanos() % 1000, 0);
    let loaded_child = load(store, child.id).await;
    assert_eq!(loaded_child, child);
    assert_eq!(loaded_child.parent_flow_id, Some(parent.id));
    assert_eq!(loaded_child.master_flow_id, parent.id);
    assert_eq!(loaded_child.phases.len(), 3);

    assert!(
        store
            .load_flow(FlowId::new())
            .await
            .expect("load")
            .is_none()
    );
}

async fn update_changes_flow_and_phase_rows(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut flow = new_flow(&definition, &tenant("acme"), None, None);
    let mut other = new_flow(&definition, &tenant("acme"), None, None);
    let (c1, _) = create(&mut flow);
    let (c2, _) = create(&mut other);
    commit(store, &[c1, c2]).await;

    // Two transitions of the same flow in one batch: the later one wins, as if applied in turn.
    let w1 = start_phase(&mut flow, 0);
    flow.phases[0].status = PhaseStatus::Succeeded;
    flow.phases[0].finished_at = Some(now());
    flow.phases[0].output = Some(json!({"imported": 42}));
    flow.progress_percentage = 100.0 / 3.0;
    let e = event(&mut flow, EventKind::PhaseSucceeded, None);
    let w2 = transition(&flow, &[0], vec![e], None);
    let w3 = start_phase(&mut flow, 1);
    let w4 = start_phase(&mut other, 0);
    commit(store, &[w1, w2, w3, w4]).await;

    let loaded = load(store, flow.id).await;
    assert_eq!(loaded, flow);
    assert_eq!(loaded.status, FlowStatus::Running);
    assert_eq!(loaded.current_phase.as_deref(), Some("analyze"));
    assert_eq!(loaded.next_phase.as_deref(), Some("report"));
    assert_eq!(loaded.last_seq, 4);
    assert_eq!(loaded.phases[0].output, Some(json!({"imported": 42})));
    assert_eq!(loaded.phases[1].attempt, 1);
    assert_eq!(load(store, other.id).await, other);

    // Finishing clears the nullable columns again.
    flow.status = FlowStatus::Completed;
    flow.current_phase = None;
    flow.next_phase = None;
    flow.phases[1].output = None;
    flow.phases[1].started_at = None;
    let e = event(&mut flow, EventKind::FlowCompleted, None);
    commit(store, &[transition(&flow, &[1], vec![e], None)]).await;
    assert_eq!(load(store, flow.id).await, flow);

    // Listings by status (served by the status indexes) follow every status change.
    let by_status = |status| FlowQuery {
        tenant: Some(tenant("acme")),
        status: Some(status),
        limit: 10,
        ..FlowQuery::default()
    };
    let ids = async |status| -> Vec<FlowId> {
        let flows = store.list_flows(&by_status(status)).await.expect("list");
        flows.iter().map(|f| f.id).collect()
    };
    assert_eq!(ids(FlowStatus::Completed).await, vec![flow.id]);
    assert_eq!(ids(FlowStatus::Running).await, vec![other.id]);
    assert!(ids(FlowStatus::Initialized).await.is_empty());
}

/// What a node of a cluster reads of the events other nodes committed: every tenant's, in id
/// order, after a cursor, a page at a time.
async fn events_after_reads_every_tenant_in_id_order(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut a = new_flow(&definition, &tenant("acme"), None, None);
    let mut c = new_flow(&definition, &tenant("globex"), None, None);
    let (ca, _) = create(&mut a);
    let (cc, _) = create(&mut c);
    // The ids as committed: PostgreSQL numbers events in the commit itself.
    let mut creates = [ca, cc];
    commit_numbered(store, &mut creates).await;
    let mut starts = [start_phase(&mut c, 0), start_phase(&mut a, 0)];
    commit_numbered(store, &mut starts).await;
    let mut written: Vec<FlowEvent> = creates.iter().chain(&starts).map(first_event).collect();
    written.sort_by_key(|e| e.id);

    let all = store.events_after(0, 100).await.expect("events after 0");
    assert_eq!(
        all, written,
        "every tenant's events, in id order, as written"
    );
    let first = written[0].id;
    assert_eq!(
        store.events_after(first, 2).await.expect("a page"),
        written[1..3].to_vec(),
        "after the cursor, at most the limit"
    );
    let last = written[3].id;
    assert!(
        store
            .events_after(last, 100)
            .await
            .expect("none")
            .is_empty()
    );
}

async fn events_come_back_in_order_after_a_cursor(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut a = new_flow(&definition, &tenant("acme"), None, None);
    let mut b = new_flow(&definition, &tenant("acme"), None, None);
    let mut c = new_flow(&definition, &tenant("globex"), None, None);
    let mut created = [create(&mut a).0, create(&mut b).0, create(&mut c).0];
    commit_numbered(store, &mut created).await;
    let [ea1, eb1, ec1] = created.each_ref().map(first_event);

    let wa2 = start_phase(&mut a, 0);
    let wb2 = start_phase(&mut b, 0);
    let wc2 = start_phase(&mut c, 0);
    let ea3 = event(&mut a, EventKind::FlowPaused, Some("operator"));
    let wa3 = transition(&a, &[], vec![ea3], None);
    let mut moved = [wa2, wb2, wc2, wa3];
    commit_numbered(store, &mut moved).await;
    let [ea2, eb2, _, ea3] = moved.each_ref().map(first_event);

    let all_a = store.flow_events(a.id, 0, 100).await.expect("flow events");
    assert_eq!(all_a, vec![ea1.clone(), ea2.clone(), ea3.clone()]);
    assert_eq!(
        all_a.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(all_a[2].error.as_deref(), Some("operator"));
    assert_eq!(
        store.flow_events(a.id, 1, 100).await.expect("after 1"),
        vec![ea2.clone(), ea3.clone()]
    );
    assert_eq!(
        store.flow_events(a.id, 1, 1).await.expect("limit"),
        vec![ea2.clone()]
    );
    assert!(
        store
            .flow_events(a.id, 3, 100)
            .await
            .expect("after last")
            .is_empty()
    );
    assert!(
        store
            .flow_events(a.id, u64::MAX, 100)
            .await
            .expect("huge after")
            .is_empty()
    );

    let acme = store
        .tenant_events(&tenant("acme"), 0, 100)
        .await
        .expect("tenant events");
    assert_eq!(
        acme,
        vec![
            ea1.clone(),
            eb1.clone(),
            ea2.clone(),
            eb2.clone(),
            ea3.clone()
        ]
    );
    assert!(acme.windows(2).all(|w| w[0].id < w[1].id));
    let after = store
        .tenant_events(&tenant("acme"), eb1.id, 2)
        .await
        .expect("tenant after");
    assert_eq!(after, vec![ea2, eb2]);
    let globex = store
        .tenant_events(&tenant("globex"), 0, 100)
        .await
        .expect("globex");
    assert_eq!(globex.len(), 2);
    assert_eq!(globex[0], ec1);
    assert!(
        globex
            .iter()
            .all(|e| e.client_account_id == "globex" && e.flow_type == "discovery")
    );
}

async fn failures_are_journaled_oldest_first(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut flow = new_flow(&definition, &tenant("acme"), None, None);
    let mut other = new_flow(&definition, &tenant("acme"), None, None);
    let (c1, _) = create(&mut flow);
    let (c2, _) = create(&mut other);
    commit(store, &[c1, c2]).await;

    let failure = |flow: &FlowState, attempt: u32, message: &str| FailureRecord {
        id: 0,
        flow_id: flow.id,
        master_flow_id: flow.master_flow_id,
        phase: Some("import".into()),
        attempt,
        error_kind: "handler_error".into(),
        message: message.into(),
        diagnostic: json!({"stderr": "boom", "exit": 2}),
        at: now(),
    };
    let f1 = failure(&flow, 1, "first");
    let f2 = failure(&flow, 2, "second");
    let mut f3 = failure(&other, 1, "other");
    f3.phase = None;
    let e1 = event(&mut flow, EventKind::PhaseFailed, Some("first"));
    let w1 = transition(&flow, &[], vec![e1], Some(f1.clone()));
    let e3 = event(&mut other, EventKind::FlowFailed, Some("other"));
    let w3 = transition(&other, &[], vec![e3], Some(f3.clone()));
    commit(store, &[w1, w3]).await;
    let e2 = event(&mut flow, EventKind::PhaseFailed, Some("second"));
    commit(store, &[transition(&flow, &[], vec![e2], Some(f2.clone()))]).await;

    let journal = store.failures(flow.id).await.expect("failures");
    assert_eq!(journal.len(), 2);
    assert!(journal[0].id > 0 && journal[0].id < journal[1].id);
    for (stored, written) in journal.iter().zip([&f1, &f2]) {
        assert_eq!(
            FailureRecord {
                id: 0,
                ..stored.clone()
            },
            *written
        );
    }
    let journal = store.failures(other.id).await.expect("failures");
    assert_eq!(journal.len(), 1);
    assert_eq!(
        FailureRecord {
            id: 0,
            ..journal[0].clone()
        },
        f3
    );
    assert!(
        store
            .failures(FlowId::new())
            .await
            .expect("none")
            .is_empty()
    );
}

async fn idempotency_key_finds_the_flow_within_its_tenant(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut flow = new_flow(&definition, &tenant("acme"), None, Some("retry-me"));
    let mut same_key_elsewhere = new_flow(&definition, &tenant("globex"), None, Some("retry-me"));
    let mut keyless = new_flow(&definition, &tenant("acme"), None, None);
    let mut keyless2 = new_flow(&definition, &tenant("acme"), None, None);
    let writes = [
        create(&mut flow).0,
        create(&mut same_key_elsewhere).0,
        create(&mut keyless).0,
        create(&mut keyless2).0,
    ];
    commit(store, &writes).await;

    let found = store
        .find_by_idempotency_key(&tenant("acme"), "retry-me")
        .await
        .expect("find");
    assert_eq!(found.map(|f| own(store, f)), Some(flow.clone()));
    let found = store
        .find_by_idempotency_key(&tenant("globex"), "retry-me")
        .await
        .expect("find");
    assert_eq!(found.map(|f| f.id), Some(same_key_elsewhere.id));
    assert!(
        store
            .find_by_idempotency_key(&tenant("acme"), "other")
            .await
            .expect("find")
            .is_none()
    );
    assert!(
        store
            .find_by_idempotency_key(&tenant("initech"), "retry-me")
            .await
            .expect("find")
            .is_none()
    );

    // A racing second create with the same key is refused.
    let mut duplicate = new_flow(&definition, &tenant("acme"), None, Some("retry-me"));
    let err = store
        .commit(&[create(&mut duplicate).0])
        .await
        .expect_err("duplicate key");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.load_flow(duplicate.id).await.expect("load").is_none());
}

async fn listing_filters_and_pages_newest_first(store: &dyn FlowStore) {
    let discovery = flow_type("discovery", 1);
    let collection = flow_type("collection", 2);
    let acme = tenant("acme");
    let mut flows = Vec::new();
    let mut writes = Vec::new();
    let mut root = new_flow(&discovery, &acme, None, None);
    writes.push(create(&mut root).0);
    for i in 0..6 {
        let definition = if i % 2 == 0 { &discovery } else { &collection };
        let mut flow = new_flow(definition, &acme, Some(&root), None);
        if i % 3 == 0 {
            flow.status = FlowStatus::Completed;
        }
        writes.push(create(&mut flow).0);
        flows.push(flow);
    }
    let mut foreign = new_flow(&discovery, &tenant("globex"), None, None);
    writes.push(create(&mut foreign).0);
    commit(store, &writes).await;

    let ids = |list: &[FlowState]| list.iter().map(|f| f.id).collect::<Vec<_>>();
    let mut expected: Vec<FlowState> = flows.iter().cloned().chain([root.clone()]).collect();
    expected.sort_by_key(|f| std::cmp::Reverse(f.id));

    let query = FlowQuery {
        tenant: Some(acme.clone()),
        limit: 100,
        ..FlowQuery::default()
    };
    let all = store.list_flows(&query).await.expect("list");
    let all: Vec<FlowState> = all.into_iter().map(|f| own(store, f)).collect();
    assert_eq!(all, expected);
    assert!(all.iter().all(|f| f.phases.len() == 3));

    // Keyset pages of 3: newest first, no overlap, nothing missed.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_flows(&FlowQuery {
                before,
                limit: 3,
                ..query.clone()
            })
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        before = page.last().map(|f| f.id);
        paged.extend(page);
    }
    assert_eq!(ids(&paged), ids(&expected));

    let completed = store
        .list_flows(&FlowQuery {
            status: Some(FlowStatus::Completed),
            ..query.clone()
        })
        .await
        .expect("by status");
    assert_eq!(completed.len(), 2);
    assert!(completed.iter().all(|f| f.status == FlowStatus::Completed));

    let by_type = store
        .list_flows(&FlowQuery {
            flow_type: Some("collection".into()),
            ..query.clone()
        })
        .await
        .expect("by type");
    assert_eq!(by_type.len(), 3);
    assert!(
        by_type
            .iter()
            .all(|f| f.flow_type == "collection" && f.flow_type_version == 2)
    );

    let children = store
        .list_flows(&FlowQuery {
            parent_flow_id: Some(root.id),
            ..query.clone()
        })
        .await
        .expect("by parent");
    assert_eq!(children.len(), 6);

    let everyone = store
        .list_flows(&FlowQuery {
            limit: 100,
            ..FlowQuery::default()
        })
        .await
        .expect("all tenants");
    assert_eq!(everyone.len(), 8);
    let globex = store
        .list_flows(&FlowQuery {
            tenant: Some(tenant("globex")),
            limit: 100,
            ..FlowQuery::default()
        })
        .await
        .expect("globex");
    let globex: Vec<FlowState> = globex.into_iter().map(|f| own(store, f)).collect();
    assert_eq!(globex, vec![foreign]);
}

async fn active_flows_exclude_terminal_ones(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let statuses = [
        FlowStatus::Initialized,
        FlowStatus::Running,
        FlowStatus::Paused,
        FlowStatus::Completed,
        FlowStatus::Failed,
        FlowStatus::Cancelled,
    ];
    let mut flows = Vec::new();
    let mut writes = Vec::new();
    for status in statuses {
        let mut flow = new_flow(&definition, &tenant("acme"), None, None);
        flow.status = status;
        flow.phases[0].status = PhaseStatus::Succeeded;
        writes.push(create(&mut flow).0);
        flows.push(flow);
    }
    commit(store, &writes).await;

    let active = store.load_active_flows().await.expect("active");
    let mut active: Vec<FlowState> = active.into_iter().map(|f| own(store, f)).collect();
    active.sort_by_key(|f| f.id);
    let expected: Vec<FlowState> = flows
        .iter()
        .filter(|f| !f.status.is_terminal())
        .cloned()
        .collect();
    assert_eq!(active, expected);
    assert!(
        active
            .iter()
            .all(|f| f.phases.len() == 3 && f.phases[0].status == PhaseStatus::Succeeded)
    );
}

async fn flow_types_round_trip_and_ignore_duplicates(store: &dyn FlowStore) {
    assert!(store.load_flow_types().await.expect("none yet").is_empty());
    let v1 = flow_type("discovery", 1);
    let mut v2 = flow_type("discovery", 2);
    v2.phases[1].params = json!({"ms": 50});
    v2.phases[1].timeout_s = Some(30);
    v2.phases[1].retries = 2;
    v2.phases[1].retry_backoff_ms = Some(100);
    v2.phases[1].weight = 3;
    v2.phases[0].next_phase = Some("report".into());
    let other = flow_type("collection", 1);
    commit(
        store,
        &[Write::FlowType(v1.clone()), Write::FlowType(v2.clone())],
    )
    .await;

    let mut changed_v1 = v1.clone();
    changed_v1.phases.pop();
    // The same (name, version) again, even within one batch, changes nothing.
    commit(
        store,
        &[
            Write::FlowType(changed_v1.clone()),
            Write::FlowType(other.clone()),
            Write::FlowType(changed_v1),
        ],
    )
    .await;

    let mut stored = store.load_flow_types().await.expect("flow types");
    stored.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    assert_eq!(stored, vec![other, v1, v2]);
}

async fn a_failing_batch_commits_nothing(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut existing = new_flow(&definition, &tenant("acme"), None, None);
    commit(store, &[create(&mut existing).0]).await;
    let max_before = store.max_event_id().await.expect("max");

    // Two creates of the same flow id, after good writes of every kind.
    let mut fresh = new_flow(&definition, &tenant("acme"), None, None);
    let mut twin = fresh.clone();
    let good_update = start_phase(&mut existing, 0);
    let batch = [
        Write::FlowType(flow_type("never", 1)),
        good_update,
        create(&mut fresh).0,
        create(&mut twin).0,
    ];
    let err = store.commit(&batch).await.expect_err("duplicate flow id");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert!(store.load_flow(fresh.id).await.expect("load").is_none());
    assert_eq!(
        load(store, existing.id).await.status,
        FlowStatus::Initialized
    );
    assert!(store.load_flow_types().await.expect("types").is_empty());
    assert_eq!(store.max_event_id().await.expect("max"), max_before);
    assert_eq!(
        store
            .flow_events(existing.id, 0, 100)
            .await
            .expect("events")
            .len(),
        1
    );

    // An update of a flow that was never created is refused as a whole, too.
    let mut ghost = new_flow(&definition, &tenant("acme"), None, None);
    let ghost_update = start_phase(&mut ghost, 0);
    let mut fresh2 = new_flow(&definition, &tenant("acme"), None, None);
    let err = store
        .commit(&[create(&mut fresh2).0, ghost_update])
        .await
        .expect_err("unknown flow");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.load_flow(fresh2.id).await.expect("load").is_none());

    // A duplicate halfway through a multi-row event statement: the rows before it are undone too.
    let mut busy = new_flow(&definition, &tenant("acme"), None, None);
    commit(store, &[create(&mut busy).0]).await;
    let stored = load(store, busy.id).await;
    let mut events: Vec<FlowEvent> = (0..40)
        .map(|_| event(&mut busy, EventKind::PhaseProgress, None))
        .collect();
    events[20].seq = events[3].seq;
    let err = store
        .commit(&[transition(&busy, &[0], events, None)])
        .await
        .expect_err("duplicate seq");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(load(store, busy.id).await, stored);
    let kept = store.flow_events(busy.id, 0, 100).await.expect("events");
    assert_eq!(kept.len(), 1);

    // An event of another flow in a transition is refused: no foreign key would catch it.
    let mut stray = new_flow(&definition, &tenant("acme"), None, None);
    let stray_event = event(&mut stray, EventKind::FlowStarted, None);
    let mut carrier = load(store, existing.id).await;
    let own = event(&mut carrier, EventKind::PhaseProgress, None);
    let err = store
        .commit(&[transition(&carrier, &[], vec![own, stray_event], None)])
        .await
        .expect_err("event of another flow");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        store
            .flow_events(stray.id, 0, 10)
            .await
            .expect("events")
            .is_empty()
    );
    assert_eq!(load(store, carrier.id).await.last_seq, 1);

    // The store is still usable afterwards.
    let mut after = new_flow(&definition, &tenant("acme"), None, None);
    commit(store, &[create(&mut after).0]).await;
    assert_eq!(load(store, after.id).await, after);
}

/// A batch as large as a busy persistence actor gathers: every row of every table lands, each
/// with its own values, and events keep their order.
async fn a_large_batch_commits_every_row_in_order(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut flows: Vec<FlowState> = (0..600)
        .map(|i| {
            let mut flow = new_flow(&definition, &tenant(&format!("t{}", i % 3)), None, None);
            flow.progress_percentage = f64::from(i);
            flow
        })
        .collect();
    let creates: Vec<Write> = flows.iter_mut().map(|f| create(f).0).collect();
    commit(store, &creates).await;
    let mut updates: Vec<Write> = flows.iter_mut().map(|f| start_phase(f, 0)).collect();
    commit_numbered(store, &mut updates).await;

    for flow in [&flows[0], &flows[299], &flows[599]] {
        assert_eq!(&load(store, flow.id).await, flow);
    }
    let events = store
        .tenant_events(&tenant("t1"), 0, 1000)
        .await
        .expect("tenant events");
    assert_eq!(events.len(), 400, "two events for each of t1's 200 flows");
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let Some(Write::Transition(last)) = updates.last() else {
        unreachable!("transitions")
    };
    assert_eq!(
        store.max_event_id().await.expect("max"),
        last.events[0].id,
        "the batch's last event is the highest"
    );
}

async fn max_event_id_tracks_the_highest_id(store: &dyn FlowStore) {
    assert_eq!(store.max_event_id().await.expect("empty"), 0);
    let definition = flow_type("discovery", 1);
    let mut flow = new_flow(&definition, &tenant("acme"), None, None);
    let mut first = [create(&mut flow).0];
    commit_numbered(store, &mut first).await;
    assert_eq!(
        store.max_event_id().await.expect("one"),
        first_event(&first[0]).id
    );
    let mut second = [start_phase(&mut flow, 0)];
    commit_numbered(store, &mut second).await;
    assert_eq!(
        store.max_event_id().await.expect("two"),
        first_event(&second[0]).id
    );
}

async fn empty_batch_and_ping(store: &dyn FlowStore) {
    store.ping().await.expect("ping");
    commit(store, &[]).await;
    assert_eq!(store.max_event_id().await.expect("max"), 0);
}

/// A transition of a flow that another node took over (its epoch moved on) commits nothing,
/// not its flow row, phase rows, events or failure (a `fenced` journal row says so instead),
/// and fails alone: every other write of
/// its batch commits, in the same transaction, and the receipt names the fenced one.
async fn a_fenced_write_commits_nothing_and_the_others_commit(
    store: &dyn FlowStore,
    take_over: impl AsyncFnOnce(FlowId),
) {
    let definition = flow_type("discovery", 1);
    let mut flows: Vec<FlowState> = (0..1000)
        .map(|_| new_flow(&definition, &tenant("acme"), None, None))
        .collect();
    let creates: Vec<Write> = flows.iter_mut().map(|f| create(f).0).collect();
    commit(store, &creates).await;
    let lost = flows[500].id;
    take_over(lost).await;
    let before = store.load_flow(lost).await.expect("load").expect("stored");
    assert!(!store.owns(&before), "taken over by another node");

    let mut updates: Vec<Write> = flows.iter_mut().map(|f| start_phase(f, 0)).collect();
    // The lost flow's transition also journals a failure: it must not be written either.
    if let Write::Transition(t) = &mut updates[500] {
        t.failure = Some(FailureRecord {
            id: 0,
            flow_id: lost,
            master_flow_id: lost,
            phase: Some("import".into()),
            attempt: 1,
            error_kind: "handler_error".into(),
            message: "late".into(),
            diagnostic: json!({}),
            at: now(),
        });
    }
    let receipt = store
        .commit_receipted(&updates, false)
        .await
        .expect("the batch commits");
    assert_eq!(receipt.fenced, vec![500]);

    let after = store.load_flow(lost).await.expect("load").expect("stored");
    assert_eq!(after, before, "nothing of the fenced transition is stored");
    let events = store.flow_events(lost, 0, 10).await.expect("events");
    assert_eq!(events.len(), 1, "only its creation event: {events:?}");
    // Journaled instead: this node lost the flow; the late failure itself is not written.
    let journal = store.failures(lost).await.expect("failures");
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0].error_kind, "fenced");
    assert_eq!(journal[0].phase.as_deref(), Some("import"));
    for flow in [&flows[0], &flows[499], &flows[501], &flows[999]] {
        assert_eq!(&load(store, flow.id).await, flow);
        assert_eq!(
            store
                .flow_events(flow.id, 0, 10)
                .await
                .expect("events")
                .len(),
            2
        );
    }
    let all = store
        .tenant_events(&tenant("acme"), 0, 5000)
        .await
        .expect("tenant events");
    assert_eq!(all.len(), 1999, "every event but the fenced one's");
}

/// A clone of a `DbStore` (one per HTTP worker) is a handle on the same pool and database.
async fn a_cloned_store_shares_the_database(store: &DbStore) {
    let clone = store.clone();
    clone.ping().await.expect("ping clone");
    let mut flow = new_flow(&flow_type("discovery", 1), &tenant("acme"), None, None);
    commit(&clone, &[create(&mut flow).0]).await;
    assert_eq!(load(store, flow.id).await, flow);
    assert_eq!(
        clone.max_event_id().await.expect("max"),
        store.max_event_id().await.expect("max")
    );
}

// ---------------------------------------------------------------------------------------------

async fn tasks_round_trip_by_id_and_by_attempt(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut flow = new_flow(&definition, &tenant("acme"), None, None);
    let (created, _) = create(&mut flow);
    let queued = task(&flow, "import", 1);
    // Every nullable column set, and timestamps with odd microseconds.
    let mut leased = task(&flow, "analyze", 3);
    leased.status = TaskStatus::Leased;
    leased.lease_id = Some(uuid::Uuid::new_v4());
    leased.worker_id = Some("worker-7".into());
    leased.lease_expires_at = Some(leased.created_at + Duration::microseconds(30_000_001));
    leased.result = Some(flowd_actors::task::TaskOutcome::succeeded(
        json!({"partial": [1, 2.5, "x"]}),
    ));
    leased.created_at -= Duration::microseconds(999_999);
    // The tasks come after the transition that created their flow, in one batch.
    commit(
        store,
        &[
            created,
            Write::Task(Box::new(queued.clone())),
            Write::Task(Box::new(leased.clone())),
        ],
    )
    .await;

    for stored in [&queued, &leased] {
        assert_eq!(load_task(store, stored.id).await, *stored);
        let found = store
            .find_task(stored.flow_id, &stored.phase, stored.attempt)
            .await
            .expect("find_task");
        assert_eq!(found.as_ref(), Some(stored));
    }
    assert!(
        store
            .load_task(TaskId::new())
            .await
            .expect("load")
            .is_none()
    );
    for (flow_id, phase, attempt) in [
        (flow.id, "import", 2),
        (flow.id, "report", 1),
        (flow.id, "import", u32::MAX),
        (FlowId::new(), "import", 1),
    ] {
        let found = store
            .find_task(flow_id, phase, attempt)
            .await
            .expect("find_task");
        assert!(found.is_none(), "{phase} {attempt}");
    }
}

async fn task_writes_move_status_lease_and_result(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut flow = new_flow(&definition, &tenant("acme"), None, None);
    let (created, _) = create(&mut flow);
    let mut t = task(&flow, "import", 1);
    commit(store, &[created, Write::Task(Box::new(t.clone()))]).await;

    // Leased: the lease columns are set.
    t.status = TaskStatus::Leased;
    t.lease_id = Some(uuid::Uuid::new_v4());
    t.worker_id = Some("worker-1".into());
    t.lease_expires_at = Some(now() + Duration::seconds(30));
    t.updated_at = now();
    let start = start_phase(&mut flow, 0);
    commit(store, &[start, Write::Task(Box::new(t.clone()))]).await;
    assert_eq!(load_task(store, t.id).await, t);
    assert_eq!(load(store, flow.id).await, flow);

    // A heartbeat and the result in one batch: the later write of the same task wins.
    let mut heartbeat = t.clone();
    heartbeat.lease_expires_at = Some(now() + Duration::seconds(60));
    heartbeat.updated_at = now();
    t.status = TaskStatus::Completed;
    t.lease_id = None;
    t.worker_id = None;
    t.lease_expires_at = None;
    t.result = Some(flowd_actors::task::TaskOutcome::Succeeded {
        output: json!({"rows": 3}),
        next_phase: flowd_actors::handler::NextPhase::Finish,
    });
    t.updated_at = now() + Duration::microseconds(1);
    commit(
        store,
        &[
            Write::Task(Box::new(heartbeat)),
            Write::Task(Box::new(t.clone())),
        ],
    )
    .await;
    assert_eq!(load_task(store, t.id).await, t);

    // What the task is stays as first written; only its progress is overwritten.
    let mut rewritten = t.clone();
    rewritten.queue = "elsewhere".into();
    rewritten.payload = json!({"changed": true});
    rewritten.created_at = now();
    rewritten.status = TaskStatus::Failed;
    rewritten.result = Some(flowd_actors::task::TaskOutcome::Failed {
        message: "late".into(),
        retryable: false,
    });
    commit(store, &[Write::Task(Box::new(rewritten.clone()))]).await;
    let stored = load_task(store, t.id).await;
    assert_eq!(stored.queue, t.queue);
    assert_eq!(stored.payload, t.payload);
    assert_eq!(stored.created_at, t.created_at);
    assert_eq!(stored.status, TaskStatus::Failed);
    assert_eq!(stored.result, rewritten.result);
    let found = store
        .find_task(flow.id, "import", 1)
        .await
        .expect("find_task");
    assert_eq!(found, Some(stored));
}

async fn a_task_attempt_is_queued_once(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let mut flow = new_flow(&definition, &tenant("acme"), None, None);
    let (created, _) = create(&mut flow);
    let first = task(&flow, "import", 1);
    commit(store, &[created, Write::Task(Box::new(first.clone()))]).await;

    // Another id for the same (flow, phase, attempt), after good writes: the batch is refused
    // as a whole.
    let mut other = new_flow(&definition, &tenant("acme"), None, None);
    let (other_created, _) = create(&mut other);
    let other_task = task(&other, "import", 1);
    let mut leased_first = first.clone();
    leased_first.status = TaskStatus::Leased;
    leased_first.lease_id = Some(uuid::Uuid::new_v4());
    let mut duplicate = task(&flow, "import", 1);
    duplicate.payload = json!({"duplicate": true});
    let err = store
        .commit(&[
            other_created,
            Write::Task(Box::new(other_task.clone())),
            Write::Task(Box::new(leased_first)),
            Write::Task(Box::new(duplicate.clone())),
        ])
        .await
        .expect_err("duplicate attempt");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.load_flow(other.id).await.expect("load").is_none());
    assert!(
        store
            .load_task(other_task.id)
            .await
            .expect("load")
            .is_none()
    );
    assert!(store.load_task(duplicate.id).await.expect("load").is_none());
    assert_eq!(load_task(store, first.id).await, first);

    // Two new tasks for one attempt within one batch are refused too.
    let a = task(&flow, "analyze", 1);
    let b = task(&flow, "analyze", 1);
    let err = store
        .commit(&[Write::Task(Box::new(a.clone())), Write::Task(Box::new(b))])
        .await
        .expect_err("duplicate attempt in one batch");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.load_task(a.id).await.expect("load").is_none());

    // The next attempt is a new task; the store is still usable.
    let second = task(&flow, "import", 2);
    commit(store, &[Write::Task(Box::new(second.clone()))]).await;
    assert_eq!(
        store.find_task(flow.id, "import", 2).await.expect("find"),
        Some(second)
    );
    assert_eq!(
        store.find_task(flow.id, "import", 1).await.expect("find"),
        Some(first)
    );
}

async fn tree_events_cover_the_whole_tree_in_id_order(store: &dyn FlowStore) {
    let definition = flow_type("discovery", 1);
    let acme = tenant("acme");
    let mut master = new_flow(&definition, &acme, None, None);
    let mut child = new_flow(&definition, &acme, Some(&master), None);
    let mut grandchild = new_flow(&definition, &acme, Some(&child), None);
    let mut stranger = new_flow(&definition, &acme, None, None);
    let mut strangers_child = new_flow(&definition, &acme, Some(&stranger), None);
    assert_eq!(grandchild.master_flow_id, master.id);

    let mut tree = Vec::new();
    let mut rounds: Vec<(Vec<Write>, Vec<bool>)> = Vec::new();
    let (mut writes, mut ours) = (Vec::new(), Vec::new());
    for (flow, mine) in [
        (&mut master, true),
        (&mut stranger, false),
        (&mut child, true),
        (&mut strangers_child, false),
        (&mut grandchild, true),
    ] {
        writes.push(create(flow).0);
        ours.push(mine);
    }
    rounds.push((writes, ours));
    // Progress interleaved across both trees, children before their master.
    let (mut writes, mut ours) = (Vec::new(), Vec::new());
    for (flow, mine) in [
        (&mut grandchild, true),
        (&mut strangers_child, false),
        (&mut child, true),
        (&mut master, true),
        (&mut stranger, false),
    ] {
        writes.push(start_phase(flow, 0));
        ours.push(mine);
    }
    rounds.push((writes, ours));
    for (mut writes, ours) in rounds {
        commit_numbered(store, &mut writes).await;
        for (write, mine) in writes.iter().zip(ours) {
            if mine {
                tree.push(first_event(write));
            }
        }
    }
    assert!(tree.windows(2).all(|w| w[0].id < w[1].id));

    let all = store.tree_events(master.id, 0, 100).await.expect("tree");
    assert_eq!(all, tree);
    assert!(all.iter().all(|e| e.master_flow_id == master.id));
    let after = store
        .tree_events(master.id, tree[2].id, 100)
        .await
        .expect("after");
    assert_eq!(after, tree[3..].to_vec());
    let page = store
        .tree_events(master.id, tree[1].id, 2)
        .await
        .expect("page");
    assert_eq!(page, tree[2..4].to_vec());
    assert!(
        store
            .tree_events(master.id, tree[5].id, 100)
            .await
            .expect("after last")
            .is_empty()
    );
    assert!(
        store
            .tree_events(master.id, i64::MAX, 100)
            .await
            .expect("huge after")
            .is_empty()
    );

    let theirs = store.tree_events(stranger.id, 0, 100).await.expect("other");
    assert_eq!(theirs.len(), 4);
    assert!(
        theirs
            .iter()
            .all(|e| e.flow_id == stranger.id || e.flow_id == strangers_child.id)
    );
    assert!(
        store
            .tree_events(FlowId::new(), 0, 100)
            .await
            .expect("no tree")
            .is_empty()
    );
}

/// The commit connection's statements are prepared once and keep their first plan. Planned on an
/// almost empty `flows`, a many-row update by id would hash-join a sequential scan of the whole
/// table, and keep doing so as the table grows; the writer's planner settings rule that out.
#[cfg(flowd_postgres_tests)]
#[tokio::test]
async fn postgres_writer_updates_flows_by_key_on_a_small_table() {
    let db = TestDb::postgres().await;
    let definition = flow_type("planned", 1);
    for _ in 0..3 {
        let mut flow = new_flow(&definition, &tenant("acme"), None, None);
        let (write, _) = create(&mut flow);
        commit(&db.store, &[write]).await;
    }

    let writer = flowd::store::postgres::writer(&db.database.url).expect("writer pool");
    let mut conn = writer.get().await.expect("writer connection");
    diesel::sql_query(
        "CREATE FUNCTION plan_of(statement TEXT) RETURNS SETOF TEXT LANGUAGE plpgsql \
         AS $$ BEGIN RETURN QUERY EXECUTE 'EXPLAIN ' || statement; END $$",
    )
    .execute(&mut conn)
    .await
    .expect("create plan_of");
    // The writer's statement shape: one array per column, unnested into rows.
    let ids: Vec<String> = (0..256)
        .map(|i| format!("'00000000-0000-0000-0000-{i:012}'"))
        .collect();
    let update = format!(
        "UPDATE flows SET status = v.status FROM unnest(ARRAY[{}]::uuid[], \
         array_fill('running'::text, ARRAY[256])) AS v (id, status) WHERE flows.id = v.id",
        ids.join(", ")
    );
    let plan: Vec<PlanLine> = diesel::sql_query("SELECT plan_of($1) AS line")
        .bind::<diesel::sql_types::Text, _>(&update)
        .load(&mut conn)
        .await
        .expect("explain");
    let plan: Vec<&str> = plan.iter().map(|l| l.line.as_str()).collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan using flows_pkey")),
        "{plan:#?}"
    );
    assert!(!plan.iter().any(|l| l.contains("Seq Scan")), "{plan:#?}");
    drop(conn);
    drop(writer);
    db.finish();
}

/// One line of `EXPLAIN`'s output.
#[cfg(flowd_postgres_tests)]
#[derive(diesel::QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    line: String,
}

/// SQLite's schema upgrades, on blocking connections (diesel's own `RunQueryDsl`).
mod sqlite_upgrade {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, RunQueryDsl, SqliteConnection};
    use flowd::store::DbStore;
    use flowd_actors::store::FlowStore;

    use super::{commit, create, flow_type, load, new_flow, start_phase, tenant};

    /// A SQLite database written before the `plan_checks_flow_rows` migration keeps every row
    /// through it, and its `events` and `phase_runs` lose their foreign keys.
    #[tokio::test]
    async fn sqlite_migration_drops_foreign_keys_and_keeps_rows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("flowd.db");
        let url = format!("sqlite://{}", path.display());
        let definition = flow_type("discovery", 1);
        let mut flow = new_flow(&definition, &tenant("acme"), None, None);
        {
            let store = DbStore::connect(&url, 2).await.expect("connect");
            let (created, _) = create(&mut flow);
            let started = start_phase(&mut flow, 0);
            commit(&store, &[created, started]).await;
        }

        // Back to the schema before the migration, with the rows the store wrote: it and every
        // later migration are undone, newest first, and forgotten.
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut undone: Vec<String> = std::fs::read_dir(folder)
            .expect("migrations")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.as_str() >= "2026-11-23-000000_plan_checks_flow_rows")
            .collect();
        undone.sort();
        undone.reverse();
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        // The closed store's checkpoint thread may still be finishing its last checkpoint.
        conn.batch_execute("PRAGMA busy_timeout = 5000")
            .expect("busy timeout");
        for migration in &undone {
            let down = std::fs::read_to_string(format!("{folder}/{migration}/down.sql"))
                .expect("down.sql");
            conn.batch_execute(&down).expect("down");
            let version: String = migration
                .split('_')
                .next()
                .unwrap_or_default()
                .replace('-', "");
            let forgotten = diesel::sql_query(format!(
                "DELETE FROM __diesel_schema_migrations WHERE version = '{version}'"
            ))
            .execute(&mut conn)
            .expect("forget the migration");
            assert_eq!(forgotten, 1, "{migration}");
        }
        assert_eq!(foreign_keys(&mut conn, "events"), 1);
        assert_eq!(foreign_keys(&mut conn, "phase_runs"), 1);
        drop(conn);

        let store = DbStore::connect(&url, 2).await.expect("migrate");
        assert_eq!(load(&store, flow.id).await, flow);
        let events = store.flow_events(flow.id, 0, 10).await.expect("events");
        assert_eq!(events.len() as u64, flow.last_seq);
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        assert_eq!(foreign_keys(&mut conn, "events"), 0);
        assert_eq!(foreign_keys(&mut conn, "phase_runs"), 0);
        let indexes: Vec<Name> = diesel::sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name",
        )
        .load(&mut conn)
        .expect("indexes");
        let indexes: Vec<&str> = indexes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            indexes,
            [
                "events_master_id",
                "events_tenant_id",
                "sqlite_autoindex_events_1"
            ]
        );

        // And the store writes on.
        let next = start_phase(&mut flow, 1);
        commit(&store, &[next]).await;
        assert_eq!(load(&store, flow.id).await, flow);
    }

    /// How many foreign keys `table` of a SQLite database has.
    fn foreign_keys(conn: &mut SqliteConnection, table: &str) -> i64 {
        let count: Count =
            diesel::sql_query("SELECT count(*) AS n FROM pragma_foreign_key_list(?)")
                .bind::<diesel::sql_types::Text, _>(table)
                .get_result(conn)
                .expect("pragma_foreign_key_list");
        count.n
    }

    /// A `count(*)`.
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// A schema object's name.
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
}

/// Two nodes committing at once on one database: their events are numbered from one counter,
/// so the ids of all their batches are disjoint and together gap-free, and each batch
/// announces its last id on `flowd_events` at commit, in commit (= id) order.
#[cfg(flowd_postgres_tests)]
#[tokio::test]
async fn postgres_event_ids_are_gap_free_across_nodes_and_announced_per_batch() {
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    use futures_util::StreamExt;

    let db = TestDb::postgres().await;
    let a = db.store.clone().with_node("a");
    let b = DbStore::connect(&db.database.url, 2)
        .await
        .expect("second node")
        .with_node("b");
    let mut listener = AsyncPgConnection::establish(&db.database.url)
        .await
        .expect("listener");
    diesel::sql_query("LISTEN flowd_events")
        .execute(&mut listener)
        .await
        .expect("listen");

    let definition = flow_type("discovery", 1);
    let node = async |store: &DbStore, size: usize| {
        let mut ranges = Vec::new();
        for _ in 0..20 {
            let mut flows: Vec<FlowState> = (0..size)
                .map(|_| new_flow(&definition, &tenant("acme"), None, None))
                .collect();
            let batch: Vec<Write> = flows.iter_mut().map(|f| create(f).0).collect();
            let receipt = store.commit_receipted(&batch, false).await.expect("commit");
            let first = receipt.first_event_id.expect("numbered by the store");
            ranges.push((first, first + size as i64 - 1));
        }
        ranges
    };
    let (mut ranges, from_b) = tokio::join!(node(&a, 3), node(&b, 5));
    ranges.extend(from_b);
    ranges.sort_unstable();
    assert_eq!(ranges.as_slice().first().map(|r| r.0), Some(1));
    assert!(
        ranges.windows(2).all(|w| w[1].0 == w[0].1 + 1),
        "disjoint and gap-free: {ranges:?}"
    );
    let last = ranges.as_slice().last().expect("ranges").1;
    assert_eq!(last, 20 * 3 + 20 * 5);
    assert_eq!(a.max_event_id().await.expect("max"), last);

    let mut announced = Vec::new();
    let mut notifications = std::pin::pin!(listener.notifications_stream());
    while announced.len() < ranges.len() {
        let notification =
            tokio::time::timeout(std::time::Duration::from_secs(5), notifications.next())
                .await
                .expect("a notification per batch")
                .expect("stream open")
                .expect("notification");
        assert_eq!(notification.channel, "flowd_events");
        announced.push(notification.payload.parse::<i64>().expect("an id"));
    }
    let batch_ends: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    assert_eq!(announced, batch_ends, "one per batch, in commit order");
    drop(b);
    db.finish();
}
