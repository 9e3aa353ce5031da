//! The pipelined group commit: with a store whose commits need a sync, a batch with nothing
//! queued behind it commits and syncs in one trip; otherwise the next batch commits while the
//! last one's sync is in flight. Nothing is acked before the sync covering it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;

use super::*;
use crate::definition::{FlowType, PhaseDefinition};
use crate::events::FlowEvent;
use crate::ids::Tenant;
use crate::memory_store::MemoryStore;
use crate::model::{FailureRecord, FlowState, FlowStatus};
use crate::store::FlowQuery;
use crate::task::{TaskId, TaskRecord};

/// A memory store whose syncs wait for a permit, counting commits and syncs.
struct GatedSync {
    inner: MemoryStore,
    permits: Semaphore,
    commits: AtomicU64,
    syncs: AtomicU64,
    /// Commits that synced on the way ([`FlowStore::commit_synced`]).
    synced_commits: AtomicU64,
    /// The next this many commits apply, then report the connection lost (their reply).
    lost_replies: AtomicU64,
}

impl GatedSync {
    fn new(permits: usize) -> Self {
        Self {
            inner: MemoryStore::new(),
            permits: Semaphore::new(permits),
            commits: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            synced_commits: AtomicU64::new(0),
            lost_replies: AtomicU64::new(0),
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

impl FlowStore for GatedSync {
    fn commit<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.commit(batch).await?;
            self.commits.fetch_add(1, Ordering::SeqCst);
            let lost = self
                .lost_replies
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if lost.is_ok() {
                return Err(StoreError::Unavailable("connection closed".into()));
            }
            Ok(())
        })
    }
    fn commits_need_sync(&self) -> bool {
        true
    }
    fn commit_synced<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.commit(batch).await?;
            self.permits.acquire().await.expect("open").forget();
            self.synced_commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
    fn sync_commits(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.permits.acquire().await.expect("open").forget();
            self.syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
    fn load_flow_types(&self) -> BoxFuture<'_, Result<Vec<FlowType>>> {
        self.inner.load_flow_types()
    }
    fn load_active_flows(&self) -> BoxFuture<'_, Result<Vec<FlowState>>> {
        self.inner.load_active_flows()
    }
    fn stale_active_flows(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowId>>> {
        self.inner.stale_active_flows(before, limit)
    }
    fn load_flow(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowState>>> {
        self.inner.load_flow(id)
    }
    fn find_by_idempotency_key<'a>(
        &'a self,
        tenant: &'a Tenant,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowState>>> {
        self.inner.find_by_idempotency_key(tenant, key)
    }
    fn list_flows<'a>(&'a self, query: &'a FlowQuery) -> BoxFuture<'a, Result<Vec<FlowState>>> {
        self.inner.list_flows(query)
    }
    fn flow_events(
        &self,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>>> {
        self.inner.flow_events(flow_id, after, limit)
    }
    fn tree_events(
        &self,
        master: FlowId,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>>> {
        self.inner.tree_events(master, after, limit)
    }
    fn load_task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>>> {
        self.inner.load_task(id)
    }
    fn find_task<'a>(
        &'a self,
        flow_id: FlowId,
        phase: &'a str,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>>> {
        self.inner.find_task(flow_id, phase, attempt)
    }
    fn tenant_events<'a>(
        &'a self,
        tenant: &'a Tenant,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FlowEvent>>> {
        self.inner.tenant_events(tenant, after, limit)
    }
    fn failures(&self, flow_id: FlowId) -> BoxFuture<'_, Result<Vec<FailureRecord>>> {
        self.inner.failures(flow_id)
    }
    fn max_event_id(&self) -> BoxFuture<'_, Result<i64>> {
        self.inner.max_event_id()
    }
    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(FlowStatus, u64)>>> {
        self.inner.count_by_status()
    }
    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.ping()
    }
}

fn flow_type(version: u32) -> Write {
    Write::FlowType(FlowType {
        name: "discovery".into(),
        version,
        phases: vec![PhaseDefinition::new("import", "noop")],
    })
}

/// Waits until `done` holds, checking every 5 ms for up to 5 s.
async fn until(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in 5 s");
}

#[actix::test]
async fn a_lone_batch_syncs_in_its_commit_and_a_busy_writer_commits_during_the_sync() {
    let store = Arc::new(GatedSync::new(0));
    // One write a batch, so that a batch can have another queued behind it.
    let writer = PersistenceActor::new(
        store.clone(),
        EventFanout::new(64),
        0,
        1,
        Arc::new(RuntimeMetrics::default()),
    )
    .start();

    // Nothing behind it: committed and synced in one trip, acked only once that sync is done.
    let first = tokio::spawn(writer.send(Persist::unfenced(flow_type(1))));
    until(|| store.commits.load(Ordering::SeqCst) == 1).await;
    let second = tokio::spawn(writer.send(Persist::unfenced(flow_type(2))));
    let third = tokio::spawn(writer.send(Persist::unfenced(flow_type(3))));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!first.is_finished(), "acked before its sync");
    assert_eq!(
        store.commits.load(Ordering::SeqCst),
        1,
        "the writer waits for an inline sync"
    );
    store.permits.add_permits(1);
    first
        .await
        .expect("join")
        .expect("mailbox")
        .expect("first acked");
    assert_eq!(store.synced_commits.load(Ordering::SeqCst), 1);

    // The second had the third behind it: its sync runs beside the third's commit.
    until(|| store.commits.load(Ordering::SeqCst) == 3).await;
    assert_eq!(store.syncs.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !second.is_finished() && !third.is_finished(),
        "acked before a sync"
    );

    // That sync began before the third commit: it answers the second write only.
    store.permits.add_permits(1);
    second
        .await
        .expect("join")
        .expect("mailbox")
        .expect("second acked");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !third.is_finished(),
        "acked by a sync that began before its commit"
    );

    store.permits.add_permits(1);
    third
        .await
        .expect("join")
        .expect("mailbox")
        .expect("third acked");
    assert_eq!(store.syncs.load(Ordering::SeqCst), 2);
    assert_eq!(store.synced_commits.load(Ordering::SeqCst), 1);
    let stats = writer.send(GetStats).await.expect("stats");
    assert_eq!((stats.writes, stats.syncs), (3, 2));
}

#[actix::test]
async fn a_batch_committed_whose_reply_was_lost_is_answered_as_committed_once() {
    let store = Arc::new(GatedSync::new(Semaphore::MAX_PERMITS));
    let fanout = EventFanout::new(64);
    let mut published = fanout.subscribe();
    let writer = PersistenceActor::new(
        store.clone(),
        fanout,
        0,
        1000,
        Arc::new(RuntimeMetrics::default()),
    )
    .start();
    let mut flows = Vec::new();
    for _ in 0..3 {
        let (flow, create) = created_flow();
        // A create whose reply is lost: its retry finds the flow row stored.
        store.lost_replies.store(1, Ordering::SeqCst);
        writer
            .send(Persist::unfenced(create))
            .await
            .expect("mailbox")
            .expect("a create whose reply was lost is committed");
        flows.push(flow);
    }
    // One batch of three transitions, committed, its reply lost: the retry conflicts with
    // what it committed itself.
    store.lost_replies.store(1, Ordering::SeqCst);
    let sends: Vec<_> = flows
        .iter_mut()
        .map(|flow| writer.send(Persist::unfenced(started(flow))))
        .collect();
    for answer in futures_util::future::join_all(sends).await {
        answer.expect("mailbox").expect("committed, not refused");
    }
    let stats = writer.send(GetStats).await.expect("stats");
    assert_eq!(stats.refused_writes, 0);
    for flow in &flows {
        let stored = store
            .load_flow(flow.id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored.status, FlowStatus::Running);
        let events = store.flow_events(flow.id, 0, 10).await.expect("events");
        assert_eq!(events.len(), 1, "stored once");
    }
    let mut seen = Vec::new();
    while let Ok(event) = published.try_recv() {
        seen.push(event.flow_id);
    }
    assert_eq!(seen.len(), 3, "each event published once: {seen:?}");
}

/// A stored flow of a one-phase type, and its create write (owned under epoch 1).
fn created_flow() -> (FlowState, Write) {
    let definition = match flow_type(1) {
        Write::FlowType(definition) => definition,
        _ => unreachable!("flow_type builds a flow type"),
    };
    let flow = FlowState::new_initialized(
        &definition,
        crate::model::NewFlow {
            flow_type: definition.name.clone(),
            input: serde_json::json!({}),
            parent_flow_id: None,
            master_flow_id: None,
            tenant: Tenant {
                client_account_id: "acme".into(),
                engagement_id: "e1".into(),
            },
            created_by: None,
            idempotency_key: None,
        },
    );
    let write = Write::Transition(crate::store::TransitionWrite {
        flow_id: flow.id,
        create: Some(Box::new(flow.clone())),
        flow: crate::store::FlowUpdate::of(&flow),
        phases: Vec::new(),
        events: Vec::new(),
        failure: None,
    });
    (flow, write)
}

/// The next transition of `flow` (it starts running), with one event.
fn started(flow: &mut FlowState) -> Write {
    flow.status = FlowStatus::Running;
    flow.last_seq += 1;
    let event = FlowEvent::of(flow, crate::events::EventKind::FlowStarted, None);
    Write::Transition(crate::store::TransitionWrite {
        flow_id: flow.id,
        create: None,
        flow: crate::store::FlowUpdate::of(flow),
        phases: Vec::new(),
        events: vec![event],
        failure: None,
    })
}

/// A writer of one big batch: every write queued before the first commit joins it.
async fn writer_of(
    store: Arc<MemoryStore>,
    fanout: EventFanout,
    metrics: Arc<RuntimeMetrics>,
) -> Addr<PersistenceActor> {
    PersistenceActor::new(store, fanout, 0, 1000, metrics).start()
}

#[actix::test]
async fn a_write_fenced_by_a_takeover_fails_alone_and_its_neighbours_commit() {
    let store = Arc::new(MemoryStore::numbering_events());
    let fanout = EventFanout::new(64);
    let mut published = fanout.subscribe();
    let metrics = Arc::new(RuntimeMetrics::default());
    let writer = writer_of(store.clone(), fanout.clone(), metrics.clone()).await;
    let mut flows = Vec::new();
    for generation in 1..=5u64 {
        let (flow, create) = created_flow();
        writer
            .send(Persist::unfenced(create))
            .await
            .expect("mailbox")
            .expect("created");
        writer.do_send(Fence {
            flow_id: flow.id,
            writer: Some(generation),
        });
        flows.push((flow, generation));
    }
    // Another node claims the third flow: its epoch moves on.
    let lost = flows[2].0.id;
    assert_eq!(store.take_over(lost), Some(2));

    let sends: Vec<_> = flows
        .iter_mut()
        .map(|(flow, generation)| {
            writer.send(Persist {
                write: started(flow),
                writer: Some(*generation),
            })
        })
        .collect();
    let answers = futures_util::future::join_all(sends).await;
    for ((flow, _), answer) in flows.iter().zip(answers) {
        let answer = answer.expect("mailbox");
        if flow.id == lost {
            assert!(matches!(answer, Err(PersistError::Fenced)), "{answer:?}");
        } else {
            answer.expect("committed");
        }
    }
    let stats = writer.send(GetStats).await.expect("stats");
    assert_eq!((stats.fenced_writes, stats.refused_writes), (1, 0));
    assert_eq!(
        stats.writes, 9,
        "5 creates and the 4 transitions not fenced"
    );
    assert_eq!(metrics.fenced_writes(), 1);

    // Nothing of the fenced write is stored; the others are.
    for (flow, _) in &flows {
        let stored = store
            .load_flow(flow.id)
            .await
            .expect("read")
            .expect("stored");
        let expected = if flow.id == lost {
            FlowStatus::Initialized
        } else {
            FlowStatus::Running
        };
        assert_eq!(stored.status, expected);
    }
    // Published under the store's ids, in commit order, without the fenced one's event and
    // without a gap.
    let mut ids = Vec::new();
    while let Ok(event) = published.try_recv() {
        assert_ne!(event.flow_id, lost);
        ids.push(event.id);
    }
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(store.max_event_id().await.expect("max"), 4);

    // The fenced actor's fence is gone: a later write of that generation is refused at once.
    let again = writer
        .send(Persist {
            write: started(&mut flows[2].0),
            writer: Some(3),
        })
        .await
        .expect("mailbox");
    assert!(matches!(again, Err(PersistError::Fenced)), "{again:?}");
}
