//! An in-memory [`FlowStore`] for actor tests and examples that need no database. It honours
//! the same contract as the diesel stores, and passes the same conformance suite
//! (`tests/store_conformance.rs`): a batch applies whole or not at all, and what their tables'
//! keys refuse it refuses too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;

use crate::definition::FlowType;
use crate::events::FlowEvent;
use crate::ids::{FlowId, Tenant};
use crate::model::{FailureRecord, FlowState, FlowStatus};
use crate::store::{CommitReceipt, FlowQuery, FlowStore, StoreError, Write, fenced_failure};
use crate::task::{TaskId, TaskRecord};

#[derive(Default, Clone)]
struct Tables {
    flow_types: BTreeMap<(String, u32), FlowType>,
    flows: BTreeMap<FlowId, FlowState>,
    events: BTreeMap<i64, FlowEvent>,
    /// `(flow_id, seq)` of every event: the events table's unique key besides the id.
    event_seqs: HashSet<(FlowId, u64)>,
    failures: Vec<FailureRecord>,
    idempotency: HashMap<(Tenant, String), FlowId>,
    tasks: BTreeMap<TaskId, TaskRecord>,
    /// `(flow_id, phase, attempt)` to the task: the unique key of the tasks table.
    task_keys: HashMap<(FlowId, String, u32), TaskId>,
}

/// Keeps everything in a mutex-guarded map; commits by copy-on-write so a failed batch leaves no trace.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    /// When set, every commit fails: lets tests exercise a database that went away.
    fail_commits: Mutex<bool>,
    /// Numbers committed events itself, after the highest stored id, as PostgreSQL does in a
    /// cluster ([`MemoryStore::numbering_events`]).
    numbers_events: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that numbers the events of each commit itself, in commit order and
    /// without a gap, ignoring the writer's ids, as the PostgreSQL store does: for tests of
    /// the ids a writer publishes.
    pub fn numbering_events() -> Self {
        Self {
            numbers_events: true,
            ..Self::default()
        }
    }

    /// Makes every later commit fail (or succeed again), to test persistence errors.
    pub fn set_fail_commits(&self, fail: bool) {
        *self.fail_commits.lock() = fail;
    }

    /// Another node takes `id` over, as a claim does: its epoch is bumped, so every later
    /// write under the old epoch is fenced off. For tests of the fence.
    pub fn take_over(&self, id: FlowId) -> Option<u64> {
        let mut tables = self.tables.lock();
        let flow = tables.flows.get_mut(&id)?;
        flow.owner_epoch += 1;
        flow.owner_node = Some("another-node".into());
        Some(flow.owner_epoch)
    }

    /// Applies `batch`; returns the positions of the transitions fenced off (their flow's
    /// stored epoch is not theirs), which write nothing.
    fn apply(
        tables: &mut Tables,
        batch: &[Write],
        numbers_events: bool,
    ) -> Result<Vec<usize>, StoreError> {
        let mut fenced = Vec::new();
        for (position, write) in batch.iter().enumerate() {
            match write {
                Write::FlowType(definition) => {
                    tables
                        .flow_types
                        .entry((definition.name.clone(), definition.version))
                        .or_insert_with(|| definition.clone());
                }
                Write::Task(task) => Self::put_task(tables, task)?,
                Write::Transition(t) => {
                    if let Some(created) = &t.create {
                        if tables.flows.contains_key(&t.flow_id) {
                            return Err(StoreError::Conflict(format!("flow {} exists", t.flow_id)));
                        }
                        if let Some(key) = &created.idempotency_key {
                            let slot = (created.tenant(), key.clone());
                            if tables.idempotency.contains_key(&slot) {
                                return Err(StoreError::Conflict(format!(
                                    "idempotency key {key} is taken"
                                )));
                            }
                            tables.idempotency.insert(slot, t.flow_id);
                        }
                        tables.flows.insert(t.flow_id, (**created).clone());
                    } else if tables
                        .flows
                        .get(&t.flow_id)
                        .is_some_and(|stored| stored.owner_epoch != t.flow.owner_epoch)
                    {
                        fenced.push(position);
                        let master = t.events.first().map_or(t.flow_id, |e| e.master_flow_id);
                        let mut failure = fenced_failure(
                            t.flow_id,
                            master,
                            t.flow.current_phase.clone(),
                            None,
                            t.flow.owner_epoch,
                        );
                        failure.id = tables.failures.len() as i64 + 1;
                        tables.failures.push(failure);
                        continue;
                    }
                    let flow = tables
                        .flows
                        .get_mut(&t.flow_id)
                        .ok_or_else(|| StoreError::Conflict(format!("no flow {}", t.flow_id)))?;
                    flow.status = t.flow.status;
                    flow.current_phase = t.flow.current_phase.clone();
                    flow.next_phase = t.flow.next_phase.clone();
                    flow.progress_percentage = t.flow.progress_percentage;
                    flow.last_seq = t.flow.last_seq;
                    flow.updated_at = t.flow.updated_at;
                    for (index, phase) in &t.phases {
                        if let Some(row) = flow.phases.get_mut(*index) {
                            *row = phase.clone();
                        }
                    }
                    for event in &t.events {
                        // A transition carries its own flow's events only, each seq once.
                        if event.flow_id != t.flow_id {
                            return Err(StoreError::Conflict(format!(
                                "event of flow {} in a transition of flow {}",
                                event.flow_id, t.flow_id
                            )));
                        }
                        if !tables.event_seqs.insert((event.flow_id, event.seq)) {
                            return Err(StoreError::Conflict(format!(
                                "flow {} already has event seq {}",
                                event.flow_id, event.seq
                            )));
                        }
                        let mut event = event.clone();
                        if numbers_events {
                            event.id = tables.events.last_key_value().map_or(1, |(id, _)| id + 1);
                        }
                        if tables.events.insert(event.id, event.clone()).is_some() {
                            return Err(StoreError::Conflict(format!(
                                "event id {} exists",
                                event.id
                            )));
                        }
                    }
                    if let Some(failure) = &t.failure {
                        let mut failure = failure.clone();
                        failure.id = tables.failures.len() as i64 + 1;
                        tables.failures.push(failure);
                    }
                }
            }
        }
        Ok(fenced)
    }

    /// Inserts a task, or overwrites the columns a lease, heartbeat or result changes, like the
    /// diesel stores' upsert.
    fn put_task(tables: &mut Tables, task: &TaskRecord) -> Result<(), StoreError> {
        if let Some(stored) = tables.tasks.get_mut(&task.id) {
            stored.status = task.status;
            stored.lease_id = task.lease_id;
            stored.worker_id = task.worker_id.clone();
            stored.lease_expires_at = task.lease_expires_at;
            stored.result = task.result.clone();
            stored.updated_at = task.updated_at;
            return Ok(());
        }
        let key = (task.flow_id, task.phase.clone(), task.attempt);
        if tables.task_keys.contains_key(&key) {
            return Err(StoreError::Conflict(format!(
                "flow {} already has a task for attempt {} of phase {}",
                task.flow_id, task.attempt, task.phase
            )));
        }
        tables.task_keys.insert(key, task.id);
        tables.tasks.insert(task.id, task.clone());
        Ok(())
    }
}

impl FlowStore for MemoryStore {
    fn commit<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.commit_receipted(batch, false);
        async move { result.await.map(drop) }.boxed()
    }

    fn commit_receipted<'a>(
        &'a self,
        batch: &'a [Write],
        _synced: bool,
    ) -> BoxFuture<'a, Result<CommitReceipt, StoreError>> {
        let result = if *self.fail_commits.lock() {
            Err(StoreError::Unavailable("commits are switched off".into()))
        } else {
            let mut tables = self.tables.lock();
            let mut next = tables.clone();
            let first_event_id = self
                .numbers_events
                .then(|| tables.events.last_key_value().map_or(1, |(id, _)| id + 1));
            Self::apply(&mut next, batch, self.numbers_events).map(|fenced| {
                *tables = next;
                CommitReceipt {
                    fenced,
                    first_event_id,
                }
            })
        };
        async move { result }.boxed()
    }

    fn load_flow_types(&self) -> BoxFuture<'_, Result<Vec<FlowType>, StoreError>> {
        let types = self.tables.lock().flow_types.values().cloned().collect();
        async move { Ok(types) }.boxed()
    }

    fn load_active_flows(&self) -> BoxFuture<'_, Result<Vec<FlowState>, StoreError>> {
        let flows = self
            .tables
            .lock()
            .flows
            .values()
            .filter(|f| !f.status.is_terminal() && f.owner_node.is_none())
            .cloned()
            .collect();
        async move { Ok(flows) }.boxed()
    }

    fn stale_active_flows(
        &self,
        updated_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowId>, StoreError>> {
        let ids = self
            .tables
            .lock()
            .flows
            .values()
            .filter(|f| {
                !f.status.is_terminal() && f.updated_at < updated_before && f.owner_node.is_none()
            })
            .map(|f| f.id)
            .take(limit as usize)
            .collect();
        async move { Ok(ids) }.boxed()
    }

    fn not_owned<'a>(
        &'a self,
        ids: &'a [FlowId],
    ) -> BoxFuture<'a, Result<Vec<FlowId>, StoreError>> {
        let tables = self.tables.lock();
        let lost = ids
            .iter()
            .filter(|id| tables.flows.get(id).is_some_and(|f| f.owner_node.is_some()))
            .copied()
            .collect();
        async move { Ok(lost) }.boxed()
    }

    /// This process owns every flow nobody took over ([`MemoryStore::take_over`]).
    fn owns(&self, flow: &FlowState) -> bool {
        flow.owner_node.is_none()
    }

    fn load_flow(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowState>, StoreError>> {
        let flow = self.tables.lock().flows.get(&id).cloned();
        async move { Ok(flow) }.boxed()
    }

    fn find_by_idempotency_key<'a>(
        &'a self,
        tenant: &'a Tenant,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowState>, StoreError>> {
        let tables = self.tables.lock();
        let flow = tables
            .idempotency
            .get(&(tenant.clone(), key.to_owned()))
            .and_then(|id| tables.flows.get(id))
            .cloned();
        async move { Ok(flow) }.boxed()
    }

    fn list_flows<'a>(
        &'a self,
        query: &'a FlowQuery,
    ) -> BoxFuture<'a, Result<Vec<FlowState>, StoreError>> {
        let flows = self
            .tables
            .lock()
            .flows
            .values()
            .rev()
            .filter(|f| query.tenant.as_ref().is_none_or(|t| *t == f.tenant()))
            .filter(|f| query.status.is_none_or(|s| s == f.status))
            .filter(|f| query.flow_type.as_ref().is_none_or(|t| *t == f.flow_type))
            .filter(|f| {
                query
                    .parent_flow_id
                    .is_none_or(|p| Some(p) == f.parent_flow_id)
            })
            .filter(|f| query.before.is_none_or(|b| f.id < b))
            .take(query.limit as usize)
            .cloned()
            .collect();
        async move { Ok(flows) }.boxed()
    }

    fn flow_events(
        &self,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        let mut events: Vec<_> = self
            .tables
            .lock()
            .events
            .values()
            .filter(|e| e.flow_id == flow_id && e.seq > after)
            .cloned()
            .collect();
        events.sort_by_key(|e| e.seq);
        events.truncate(limit as usize);
        async move { Ok(events) }.boxed()
    }

    fn tree_events(
        &self,
        master_flow_id: FlowId,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        let events = self
            .tables
            .lock()
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| e.master_flow_id == master_flow_id)
            .take(limit as usize)
            .cloned()
            .collect();
        async move { Ok(events) }.boxed()
    }

    fn load_task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>> {
        let task = self.tables.lock().tasks.get(&id).cloned();
        async move { Ok(task) }.boxed()
    }

    fn find_task<'a>(
        &'a self,
        flow_id: FlowId,
        phase: &'a str,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        let tables = self.tables.lock();
        let task = tables
            .task_keys
            .get(&(flow_id, phase.to_owned(), attempt))
            .and_then(|id| tables.tasks.get(id))
            .cloned();
        async move { Ok(task) }.boxed()
    }

    fn tenant_events<'a>(
        &'a self,
        tenant: &'a Tenant,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FlowEvent>, StoreError>> {
        let events = self
            .tables
            .lock()
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| {
                e.client_account_id == tenant.client_account_id
                    && e.engagement_id == tenant.engagement_id
            })
            .take(limit as usize)
            .cloned()
            .collect();
        async move { Ok(events) }.boxed()
    }

    fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        let events = self
            .tables
            .lock()
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, e)| e)
            .take(limit as usize)
            .cloned()
            .collect();
        async move { Ok(events) }.boxed()
    }

    fn failures(&self, flow_id: FlowId) -> BoxFuture<'_, Result<Vec<FailureRecord>, StoreError>> {
        let failures = self
            .tables
            .lock()
            .failures
            .iter()
            .filter(|f| f.flow_id == flow_id)
            .cloned()
            .collect();
        async move { Ok(failures) }.boxed()
    }

    fn max_event_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        let max = self
            .tables
            .lock()
            .events
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0);
        async move { Ok(max) }.boxed()
    }

    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(FlowStatus, u64)>, StoreError>> {
        let mut counts: BTreeMap<&'static str, (FlowStatus, u64)> = BTreeMap::new();
        for flow in self.tables.lock().flows.values() {
            counts
                .entry(flow.status.as_str())
                .or_insert((flow.status, 0))
                .1 += 1;
        }
        let counts = counts.into_values().collect();
        async move { Ok(counts) }.boxed()
    }

    fn count_by_status_of<'a>(
        &'a self,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<Vec<(FlowStatus, u64)>, StoreError>> {
        let mut counts: BTreeMap<&'static str, (FlowStatus, u64)> = BTreeMap::new();
        for flow in self.tables.lock().flows.values() {
            if flow.client_account_id == tenant.client_account_id
                && flow.engagement_id == tenant.engagement_id
            {
                counts
                    .entry(flow.status.as_str())
                    .or_insert((flow.status, 0))
                    .1 += 1;
            }
        }
        let counts = counts.into_values().collect();
        async move { Ok(counts) }.boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::PhaseDefinition;
    use crate::events::EventKind;
    use crate::model::{NewFlow, now};
    use crate::store::{FlowUpdate, TransitionWrite};
    use crate::task::TaskStatus;
    use serde_json::json;

    fn flow(parent: Option<&FlowState>) -> FlowState {
        let definition = FlowType {
            name: "discovery".into(),
            version: 1,
            phases: vec![PhaseDefinition::new("scan", "external")],
        };
        FlowState::new_initialized(
            &definition,
            NewFlow {
                flow_type: definition.name.clone(),
                input: json!({}),
                parent_flow_id: parent.map(|p| p.id),
                master_flow_id: parent.map(|p| p.master_flow_id),
                tenant: Tenant {
                    client_account_id: "acme".into(),
                    engagement_id: "eng-1".into(),
                },
                created_by: None,
                idempotency_key: None,
            },
        )
    }

    fn create(flow: &FlowState, event_id: i64) -> Write {
        let mut event = FlowEvent::of(flow, EventKind::FlowInitialized, None);
        event.id = event_id;
        Write::Transition(TransitionWrite {
            flow_id: flow.id,
            create: Some(Box::new(flow.clone())),
            flow: FlowUpdate::of(flow),
            phases: Vec::new(),
            events: vec![event],
            failure: None,
        })
    }

    fn task(flow: &FlowState, attempt: u32) -> TaskRecord {
        TaskRecord {
            id: TaskId::new(),
            queue: "scanners".into(),
            flow_id: flow.id,
            master_flow_id: flow.master_flow_id,
            phase: "scan".into(),
            attempt,
            client_account_id: flow.client_account_id.clone(),
            engagement_id: flow.engagement_id.clone(),
            payload: json!({"attempt": attempt}),
            status: TaskStatus::Queued,
            lease_id: None,
            worker_id: None,
            lease_expires_at: None,
            result: None,
            created_at: now(),
            updated_at: now(),
        }
    }

    fn commit(store: &MemoryStore, batch: &[Write]) -> Result<(), StoreError> {
        store.commit(batch).now_or_never().expect("ready")
    }

    #[test]
    fn tasks_upsert_by_id_and_keep_their_attempt_unique() {
        let store = MemoryStore::new();
        let f = flow(None);
        let mut t = task(&f, 1);
        commit(&store, &[Write::Task(Box::new(t.clone()))]).expect("insert");

        let mut moved = t.clone();
        moved.queue = "elsewhere".into();
        moved.status = TaskStatus::Completed;
        moved.result = Some(crate::task::TaskOutcome::succeeded(json!(1)));
        commit(&store, &[Write::Task(Box::new(moved))]).expect("update");
        t.status = TaskStatus::Completed;
        t.result = Some(crate::task::TaskOutcome::succeeded(json!(1)));
        let loaded = store.load_task(t.id).now_or_never().expect("ready");
        assert_eq!(loaded.expect("load"), Some(t.clone()));

        let other = task(&f, 2);
        let duplicate = task(&f, 1);
        let err = commit(
            &store,
            &[
                Write::Task(Box::new(other.clone())),
                Write::Task(Box::new(duplicate)),
            ],
        )
        .expect_err("same attempt");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let found = store.find_task(f.id, "scan", 2).now_or_never();
        assert_eq!(found.expect("ready").expect("find"), None);
        let found = store.find_task(f.id, "scan", 1).now_or_never();
        assert_eq!(found.expect("ready").expect("find"), Some(t));
    }

    #[test]
    fn tree_events_follow_the_master() {
        let store = MemoryStore::new();
        let master = flow(None);
        let child = flow(Some(&master));
        let stranger = flow(None);
        commit(
            &store,
            &[create(&master, 1), create(&stranger, 2), create(&child, 3)],
        )
        .expect("create");
        let ids = |after, limit| {
            let events = store.tree_events(master.id, after, limit).now_or_never();
            let events = events.expect("ready").expect("tree events");
            events.into_iter().map(|e| e.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(0, 10), vec![1, 3]);
        assert_eq!(ids(1, 10), vec![3]);
        assert_eq!(ids(0, 1), vec![1]);
        assert!(ids(i64::MAX, 10).is_empty());
    }
}
