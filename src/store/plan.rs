//! The commit plan: a batch of writes turned into rows, grouped by table, before either backend
//! writes them. Reads never pass through here.

use std::collections::HashMap;

use flowd_actors::ids::FlowId;
use flowd_actors::store::{StoreError, Write};
use flowd_actors::task::TaskId;

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
    pub(super) now: DbTime,
}

impl<'a> Plan<'a> {
    pub(super) fn of(batch: &'a [Write]) -> Result<Self, StoreError> {
        let mut plan = Plan {
            flow_types: Vec::new(),
            new_flows: Vec::new(),
            flow_changes: Vec::new(),
            phases: Vec::new(),
            events: Vec::new(),
            failures: Vec::new(),
            tasks: Vec::new(),
            now: DbTime(flowd_actors::model::now()),
        };
        let mut change_index: HashMap<FlowId, usize> = HashMap::new();
        let mut phase_index: HashMap<(FlowId, usize), usize> = HashMap::new();
        // Empty until a batch carries a task: batches of transitions pay nothing for tasks.
        let mut task_index: HashMap<TaskId, usize> = HashMap::new();
        let mut put_phase =
            |plan: &mut Plan<'a>, write: PhaseWrite<'a>, key: (FlowId, usize)| match phase_index
                .get(&key)
            {
                Some(&i) => plan.phases[i] = write,
                None => {
                    phase_index.insert(key, plan.phases.len());
                    plan.phases.push(write);
                }
            };
        for write in batch {
            match write {
                Write::FlowType(flow_type) => {
                    plan.flow_types.push(NewFlowType::from_domain(flow_type)?)
                }
                Write::Task(task) => {
                    let row = TaskWrite::from_domain(task)?;
                    match task_index.get(&task.id) {
                        Some(&i) => plan.tasks[i] = row,
                        None => {
                            task_index.insert(task.id, plan.tasks.len());
                            plan.tasks.push(row);
                        }
                    }
                }
                Write::Transition(t) => {
                    if let Some(created) = &t.create {
                        // The created row already is the state after the transition.
                        plan.new_flows.push(NewFlow::from_domain(created)?);
                        for (position, phase) in created.phases.iter().enumerate() {
                            let row = PhaseWrite::from_domain(created.id, position, phase)?;
                            put_phase(&mut plan, row, (created.id, position));
                        }
                    } else {
                        let change = FlowChange::from_domain(t.flow_id, &t.flow)?;
                        match change_index.get(&t.flow_id) {
                            Some(&i) => plan.flow_changes[i] = change,
                            None => {
                                change_index.insert(t.flow_id, plan.flow_changes.len());
                                plan.flow_changes.push(change);
                            }
                        }
                        for (position, phase) in &t.phases {
                            let row = PhaseWrite::from_domain(t.flow_id, *position, phase)?;
                            put_phase(&mut plan, row, (t.flow_id, *position));
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
