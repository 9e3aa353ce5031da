//! An in-memory [`FlowStore`] for actor tests and examples that need no database. It honours
//! the same contract as the diesel stores: a batch applies whole or not at all.

use std::collections::{BTreeMap, HashMap};

use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;

use crate::definition::FlowType;
use crate::events::FlowEvent;
use crate::ids::{FlowId, Tenant};
use crate::model::{FailureRecord, FlowState, FlowStatus};
use crate::store::{FlowQuery, FlowStore, StoreError, Write};
use crate::task::{TaskId, TaskRecord};

#[derive(Default, Clone)]
struct Tables {
    flow_types: BTreeMap<(String, u32), FlowType>,
    flows: BTreeMap<FlowId, FlowState>,
    events: BTreeMap<i64, FlowEvent>,
    failures: Vec<FailureRecord>,
    idempotency: HashMap<(Tenant, String), FlowId>,
    tasks: BTreeMap<TaskId, TaskRecord>,
}

/// Keeps everything in a mutex-guarded map; commits by copy-on-write so a failed batch leaves no trace.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    /// When set, every commit fails: lets tests exercise a database that went away.
    fail_commits: Mutex<bool>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later commit fail (or succeed again), to test persistence errors.
    pub fn set_fail_commits(&self, fail: bool) {
        *self.fail_commits.lock() = fail;
    }

    fn apply(tables: &mut Tables, batch: &[Write]) -> Result<(), StoreError> {
        for write in batch {
            match write {
                Write::FlowType(definition) => {
                    tables
                        .flow_types
                        .entry((definition.name.clone(), definition.version))
                        .or_insert_with(|| definition.clone());
                }
                Write::Task(task) => {
                    let taken = tables.tasks.values().any(|other| {
                        other.id != task.id
                            && other.flow_id == task.flow_id
                            && other.phase == task.phase
                            && other.attempt == task.attempt
                    });
                    if taken {
                        return Err(StoreError::Conflict(format!(
                            "a task for {} {} attempt {} exists",
                            task.flow_id, task.phase, task.attempt
                        )));
                    }
                    tables.tasks.insert(task.id, (**task).clone());
                }
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
        Ok(())
    }
}

impl FlowStore for MemoryStore {
    fn commit<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = if *self.fail_commits.lock() {
            Err(StoreError::Unavailable("commits are switched off".into()))
        } else {
            let mut tables = self.tables.lock();
            let mut next = tables.clone();
            Self::apply(&mut next, batch).map(|()| *tables = next)
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
            .filter(|f| !f.status.is_terminal())
            .cloned()
            .collect();
        async move { Ok(flows) }.boxed()
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
            .range(after + 1..)
            .map(|(_, event)| event)
            .filter(|event| event.master_flow_id == master_flow_id)
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
        let task = self
            .tables
            .lock()
            .tasks
            .values()
            .find(|t| t.flow_id == flow_id && t.phase == phase && t.attempt == attempt)
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
            .range(after + 1..)
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

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }
}
