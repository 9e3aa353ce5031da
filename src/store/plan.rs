//! The commit plan: a batch of writes turned into rows, grouped by table, before either backend
//! writes them. Reads never pass through here.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use flowd_actors::ids::FlowId;
use flowd_actors::model::FailureRecord;
use flowd_actors::store::{StoreError, Write, fenced_failure};

use super::models::{
    EventWrite, FailureWrite, FlowChange, NewFlow, NewFlowType, PhaseWrite, TaskWrite,
};
use super::schema::DbTime;

/// A batch turned into rows, grouped by statement. Later writes to the same flow row, phase
/// row or task replace earlier ones: each write carries the whole row, so only the last one
/// matters, and one multi-row statement may not touch a row twice.
///
/// Tables are written in a fixed order (flow types, flows, phases, events, failures, tasks), not
/// in batch order. That is sound because no two tables depend on each other's rows except
/// through flows, which come first; tasks come last, so a task is always applied after the
/// transitions of its batch (its flow row exists by then), and among themselves task writes keep
/// the batch order (the last write of an id wins).
pub(super) struct Plan<'a> {
    pub(super) flow_types: Vec<NewFlowType<'a>>,
    pub(super) new_flows: Vec<NewFlow<'a>>,
    pub(super) flow_changes: Vec<FlowChange<'a>>,
    pub(super) phases: Vec<PhaseWrite<'a>>,
    pub(super) events: Vec<EventWrite<'a>>,
    pub(super) failures: Vec<FailureWrite<'a>>,
    pub(super) tasks: Vec<TaskWrite<'a>>,
}

impl<'a> Plan<'a> {
    /// `owner`: the node that writes the batch, on a store shared by a cluster (PostgreSQL):
    /// created flows are its own, updates are fenced by it. `None` on a single-node store.
    pub(super) fn of(batch: &'a [Write], owner: Option<&'a str>) -> Result<Self, StoreError> {
        let now = DbTime(flowd_actors::model::now());
        let mut plan = Plan {
            flow_types: Vec::new(),
            new_flows: Vec::new(),
            flow_changes: Vec::new(),
            phases: Vec::new(),
            events: Vec::new(),
            failures: Vec::new(),
            tasks: Vec::new(),
        };
        let mut changes = Latest::default();
        let mut phases = Latest::default();
        // Empty until a batch carries a task: batches of transitions pay nothing for tasks.
        let mut tasks = Latest::default();
        for write in batch {
            match write {
                Write::FlowType(flow_type) => plan
                    .flow_types
                    .push(NewFlowType::from_domain(flow_type, now)?),
                Write::Task(task) => {
                    tasks.put(&mut plan.tasks, task.id, TaskWrite::from_domain(task)?);
                }
                Write::Transition(t) => {
                    if let Some(created) = &t.create {
                        // The created row already is the state after the transition.
                        plan.new_flows.push(NewFlow::from_domain(created, owner)?);
                        for (position, phase) in created.phases.iter().enumerate() {
                            let row = PhaseWrite::from_domain(created.id, position, phase)?;
                            phases.put(&mut plan.phases, (created.id, position), row);
                        }
                    } else {
                        let change = FlowChange::from_domain(t.flow_id, &t.flow, owner)?;
                        changes.put(&mut plan.flow_changes, t.flow_id, change);
                        for (position, phase) in &t.phases {
                            let row = PhaseWrite::from_domain(t.flow_id, *position, phase)?;
                            phases.put(&mut plan.phases, (t.flow_id, *position), row);
                        }
                    }
                    for event in &t.events {
                        // No foreign key backs this up: a transition's rows name its own flow,
                        // whose insert or update (checked to match a row) is in the same batch.
                        if event.flow_id != t.flow_id {
                            return Err(StoreError::Conflict(format!(
                                "event {} of flow {} in a transition of flow {}",
                                event.seq, event.flow_id, t.flow_id
                            )));
                        }
                        plan.events.push(EventWrite::from_domain(event)?);
                    }
                    if let Some(failure) = &t.failure {
                        plan.failures.push(FailureWrite::from_domain(failure)?);
                    }
                }
            }
        }
        Ok(plan)
    }
}

impl Plan<'_> {
    /// The journal rows of the fenced `flows` ([`fenced_failure`]): which node lost which flow
    /// under which epoch.
    pub(super) fn fenced_journal(&self, flows: &HashSet<uuid::Uuid>) -> Vec<FailureRecord> {
        self.flow_changes
            .iter()
            .filter(|change| flows.contains(&change.id.0))
            .map(|change| {
                let master = self
                    .events
                    .iter()
                    .find(|event| event.flow_id.0 == change.id.0)
                    .map_or(change.id.0, |event| event.master_flow_id.0);
                fenced_failure(
                    FlowId(change.id.0),
                    FlowId(master),
                    change.update.current_phase.clone(),
                    change.owner_node,
                    change.update.owner_epoch,
                )
            })
            .collect()
    }

    /// Drops the phase, event and failure rows of `flows`: transitions fenced off by their
    /// flow's owner, which must commit nothing (their flow rows were not updated).
    pub(super) fn leave_out(&mut self, flows: &HashSet<uuid::Uuid>) {
        self.phases.retain(|row| !flows.contains(&row.flow_id.0));
        self.events.retain(|row| !flows.contains(&row.flow_id.0));
        self.failures.retain(|row| !flows.contains(&row.flow_id.0));
    }
}

/// Where each key's row stands in its list, so that a later write of the same row replaces the
/// earlier one in place (keeping the first one's position).
struct Latest<K>(HashMap<K, usize>);

impl<K> Default for Latest<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Hash + Eq> Latest<K> {
    fn put<R>(&mut self, rows: &mut Vec<R>, key: K, row: R) {
        match self.0.get(&key) {
            Some(&i) => rows[i] = row,
            None => {
                self.0.insert(key, rows.len());
                rows.push(row);
            }
        }
    }
}
