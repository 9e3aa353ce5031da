//! Row structs, and their conversion to and from the domain types at the store boundary.
//!
//! Read rows are diesel `Selectable`s checked against both backends. Write rows borrow from the
//! batch being committed and hold every value already converted (checked integer conversions),
//! so that nothing inside the transaction can fail except the database itself.

use std::str::FromStr;
use std::sync::Arc;

use diesel::prelude::*;
use flowd_actors::definition::FlowType;
use flowd_actors::events::{EventKind, FlowEvent};
use flowd_actors::ids::FlowId;
use flowd_actors::model::{FailureRecord, FlowState, FlowStatus, PhaseState, PhaseStatus};
use flowd_actors::status_reason::SharedReason;
use flowd_actors::store::{FlowUpdate, StoreError};
use flowd_actors::task::{TaskId, TaskOutcome, TaskRecord, TaskStatus};

use super::schema::{
    DbJson, DbJsonRef, DbTime, DbUuid, events, failures, flow_types, flows, phase_runs, tasks,
};

/// A stored integer that does not fit its domain type: the row was edited or written by a bug.
fn corrupt(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {value} is out of range"))
}

/// A domain value that does not fit its column: the write is refused rather than truncated.
fn out_of_range(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Conflict(format!("{what}: {value} does not fit its database column"))
}

/// `u32` domain value to an `INT` column.
pub fn to_i32(what: &str, value: u32) -> Result<i32, StoreError> {
    i32::try_from(value).map_err(|_| out_of_range(what, value))
}

/// `u64` domain value to a `BIGINT` column.
pub fn to_i64(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| out_of_range(what, value))
}

/// `usize` position to an `INT` column.
pub fn position_to_i32(value: usize) -> Result<i32, StoreError> {
    i32::try_from(value).map_err(|_| out_of_range("phase position", value))
}

fn to_u32(what: &str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(what, value))
}

fn to_u64(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(what, value))
}

fn parse_status<T: FromStr>(what: &str, text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what}: unknown value `{text}`")))
}

/// A `flows` row as read.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = flows, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct FlowRow {
    pub id: DbUuid,
    pub flow_type: String,
    pub flow_type_version: i32,
    pub status: String,
    pub current_phase: Option<String>,
    pub next_phase: Option<String>,
    pub progress_percentage: f64,
    pub input: DbJson,
    pub parent_flow_id: Option<DbUuid>,
    pub master_flow_id: DbUuid,
    pub client_account_id: String,
    pub engagement_id: String,
    pub created_by: Option<String>,
    pub idempotency_key: Option<String>,
    pub last_seq: i64,
    pub created_at: DbTime,
    pub updated_at: DbTime,
    pub owner_node: Option<String>,
    pub owner_epoch: i64,
}

impl FlowRow {
    /// The domain flow, given its phases in position order.
    pub fn into_state(self, phases: Vec<PhaseState>) -> Result<FlowState, StoreError> {
        Ok(FlowState {
            id: FlowId(self.id.0),
            flow_type: self.flow_type,
            flow_type_version: to_u32("flows.flow_type_version", self.flow_type_version)?,
            status: parse_status::<FlowStatus>("flows.status", &self.status)?,
            current_phase: self.current_phase,
            next_phase: self.next_phase,
            progress_percentage: self.progress_percentage,
            phases,
            input: Arc::new(self.input.0),
            parent_flow_id: self.parent_flow_id.map(|id| FlowId(id.0)),
            master_flow_id: FlowId(self.master_flow_id.0),
            client_account_id: self.client_account_id,
            engagement_id: self.engagement_id,
            created_by: self.created_by,
            created_at: self.created_at.0,
            updated_at: self.updated_at.0,
            last_seq: to_u64("flows.last_seq", self.last_seq)?,
            idempotency_key: self.idempotency_key,
            owner_node: self.owner_node,
            owner_epoch: to_u64("flows.owner_epoch", self.owner_epoch)?,
        })
    }
}

/// A `phase_runs` row as read.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = phase_runs, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct PhaseRow {
    pub flow_id: DbUuid,
    pub position: i32,
    pub name: String,
    pub status: String,
    pub attempt: i32,
    pub started_at: Option<DbTime>,
    pub finished_at: Option<DbTime>,
    pub output: Option<DbJson>,
    pub error: Option<String>,
}

impl PhaseRow {
    /// The domain phase; the caller groups phases by `flow_id`.
    pub fn into_state(self) -> Result<PhaseState, StoreError> {
        Ok(PhaseState {
            name: self.name,
            status: parse_status::<PhaseStatus>("phase_runs.status", &self.status)?,
            attempt: to_u32("phase_runs.attempt", self.attempt)?,
            started_at: self.started_at.map(|t| t.0),
            finished_at: self.finished_at.map(|t| t.0),
            output: self.output.map(|j| j.0),
            error: self.error,
        })
    }
}

/// An `events` row as read.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct EventRow {
    pub id: i64,
    pub flow_id: DbUuid,
    pub seq: i64,
    pub master_flow_id: DbUuid,
    pub client_account_id: String,
    pub engagement_id: String,
    pub flow_type: String,
    pub kind: String,
    pub status: String,
    pub current_phase: Option<String>,
    pub next_phase: Option<String>,
    pub progress_percentage: f64,
    pub error: Option<String>,
    pub at: DbTime,
    /// The flow's status reason as JSON text.
    pub status_reason: Option<String>,
}

impl EventRow {
    /// The domain event.
    pub fn into_event(self) -> Result<FlowEvent, StoreError> {
        let kind = EventKind::parse(&self.kind).ok_or_else(|| {
            StoreError::Corrupt(format!("events.kind: unknown value `{}`", self.kind))
        })?;
        Ok(FlowEvent {
            id: self.id,
            seq: to_u64("events.seq", self.seq)?,
            flow_id: FlowId(self.flow_id.0),
            master_flow_id: FlowId(self.master_flow_id.0),
            kind,
            status: parse_status::<FlowStatus>("events.status", &self.status)?,
            current_phase: self.current_phase,
            next_phase: self.next_phase,
            progress_percentage: self.progress_percentage,
            error: self.error,
            at: self.at.0,
            status_reason: self
                .status_reason
                .map(|json| {
                    SharedReason::from_json(json)
                        .map(Arc::new)
                        .map_err(|e| StoreError::Corrupt(format!("events.status_reason: {e}")))
                })
                .transpose()?,
            client_account_id: self.client_account_id,
            engagement_id: self.engagement_id,
            flow_type: self.flow_type,
        })
    }
}

/// A `failures` row as read.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = failures, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct FailureRow {
    pub id: i64,
    pub flow_id: DbUuid,
    pub master_flow_id: DbUuid,
    pub phase: Option<String>,
    pub attempt: i32,
    pub error_kind: String,
    pub message: String,
    pub diagnostic: DbJson,
    pub at: DbTime,
}

impl FailureRow {
    /// The domain journal entry.
    pub fn into_record(self) -> Result<FailureRecord, StoreError> {
        Ok(FailureRecord {
            id: self.id,
            flow_id: FlowId(self.flow_id.0),
            master_flow_id: FlowId(self.master_flow_id.0),
            phase: self.phase,
            attempt: to_u32("failures.attempt", self.attempt)?,
            error_kind: self.error_kind,
            message: self.message,
            diagnostic: self.diagnostic.0,
            at: self.at.0,
        })
    }
}

/// A `flow_types` row as read.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = flow_types, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct FlowTypeRow {
    pub name: String,
    pub version: i32,
    pub definition: DbJson,
    pub created_at: DbTime,
}

impl FlowTypeRow {
    /// The domain flow type; the key columns win over whatever the stored JSON says.
    pub fn into_flow_type(self) -> Result<FlowType, StoreError> {
        let mut flow_type: FlowType = serde_json::from_value(self.definition.0).map_err(|e| {
            StoreError::Corrupt(format!(
                "flow_types.definition of {} v{}: {e}",
                self.name, self.version
            ))
        })?;
        flow_type.version = to_u32("flow_types.version", self.version)?;
        flow_type.name = self.name;
        Ok(flow_type)
    }
}

/// A flow type to insert; the definition is stored as the flow type's own JSON.
#[derive(Debug)]
pub struct NewFlowType<'a> {
    pub name: &'a str,
    pub version: i32,
    pub definition: DbJson,
    /// When the commit that first stores it was planned.
    pub created_at: DbTime,
}

impl<'a> NewFlowType<'a> {
    /// Converts and serializes a flow type for insertion at `now`.
    pub fn from_domain(flow_type: &'a FlowType, now: DbTime) -> Result<Self, StoreError> {
        let definition = serde_json::to_value(flow_type).map_err(|e| {
            StoreError::Conflict(format!(
                "flow type {} is not serializable: {e}",
                flow_type.name
            ))
        })?;
        Ok(Self {
            name: &flow_type.name,
            version: to_i32("flow type version", flow_type.version)?,
            definition: DbJson(definition),
            created_at: now,
        })
    }
}

/// A flow row to insert.
#[derive(Debug)]
pub struct NewFlow<'a> {
    pub flow: &'a FlowState,
    pub id: DbUuid,
    pub flow_type_version: i32,
    pub input: DbJsonRef<'a>,
    pub parent_flow_id: Option<DbUuid>,
    pub master_flow_id: DbUuid,
    pub last_seq: i64,
    pub created_at: DbTime,
    pub updated_at: DbTime,
    /// The node that creates the flow owns it (`None` on a single-node store).
    pub owner_node: Option<&'a str>,
    pub owner_epoch: i64,
}

impl<'a> NewFlow<'a> {
    /// Checks the flow's integers against their columns; `owner` is the creating node.
    pub fn from_domain(flow: &'a FlowState, owner: Option<&'a str>) -> Result<Self, StoreError> {
        Ok(Self {
            owner_node: owner,
            owner_epoch: to_i64("owner_epoch", flow.owner_epoch)?,
            flow,
            id: DbUuid(flow.id.0),
            flow_type_version: to_i32("flow_type_version", flow.flow_type_version)?,
            input: DbJsonRef(&flow.input),
            parent_flow_id: flow.parent_flow_id.map(|p| DbUuid(p.0)),
            master_flow_id: DbUuid(flow.master_flow_id.0),
            last_seq: to_i64("last_seq", flow.last_seq)?,
            created_at: DbTime(flow.created_at),
            updated_at: DbTime(flow.updated_at),
        })
    }
}

/// The changed columns of an existing flow row.
#[derive(Debug)]
pub struct FlowChange<'a> {
    pub id: DbUuid,
    pub update: &'a FlowUpdate,
    pub last_seq: i64,
    pub updated_at: DbTime,
    /// The fence, not changed columns: the writing node and its epoch.
    pub owner_node: Option<&'a str>,
    pub owner_epoch: i64,
}

impl<'a> FlowChange<'a> {
    /// Checks the update's integers against their columns; `owner` is the writing node.
    pub fn from_domain(
        id: FlowId,
        update: &'a FlowUpdate,
        owner: Option<&'a str>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            id: DbUuid(id.0),
            update,
            last_seq: to_i64("last_seq", update.last_seq)?,
            updated_at: DbTime(update.updated_at),
            owner_node: owner,
            owner_epoch: to_i64("owner_epoch", update.owner_epoch)?,
        })
    }
}

/// A phase row to insert or overwrite.
#[derive(Debug)]
pub struct PhaseWrite<'a> {
    pub flow_id: DbUuid,
    pub position: i32,
    pub attempt: i32,
    pub phase: &'a PhaseState,
    pub started_at: Option<DbTime>,
    pub finished_at: Option<DbTime>,
    pub output: Option<DbJsonRef<'a>>,
}

impl<'a> PhaseWrite<'a> {
    /// Checks the phase's integers against their columns.
    pub fn from_domain(
        flow_id: FlowId,
        position: usize,
        phase: &'a PhaseState,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            flow_id: DbUuid(flow_id.0),
            position: position_to_i32(position)?,
            attempt: to_i32("phase attempt", phase.attempt)?,
            phase,
            started_at: phase.started_at.map(DbTime),
            finished_at: phase.finished_at.map(DbTime),
            output: phase.output.as_ref().map(DbJsonRef),
        })
    }
}

/// An event row to insert.
#[derive(Debug)]
pub struct EventWrite<'a> {
    pub event: &'a FlowEvent,
    pub flow_id: DbUuid,
    pub seq: i64,
    pub master_flow_id: DbUuid,
    pub at: DbTime,
    /// The event's status reason as JSON text, serialized once for its whole transition.
    pub status_reason: Option<&'a str>,
}

impl<'a> EventWrite<'a> {
    /// Checks the event's integers against their columns.
    pub fn from_domain(event: &'a FlowEvent) -> Result<Self, StoreError> {
        Ok(Self {
            event,
            flow_id: DbUuid(event.flow_id.0),
            seq: to_i64("event seq", event.seq)?,
            master_flow_id: DbUuid(event.master_flow_id.0),
            at: DbTime(event.at),
            status_reason: event.status_reason.as_deref().map(SharedReason::json),
        })
    }
}

/// A failure-journal row to insert; the database assigns its id.
#[derive(Debug)]
pub struct FailureWrite<'a> {
    pub failure: &'a FailureRecord,
    pub flow_id: DbUuid,
    pub master_flow_id: DbUuid,
    pub attempt: i32,
    pub diagnostic: DbJsonRef<'a>,
    pub at: DbTime,
}

impl<'a> FailureWrite<'a> {
    /// Checks the record's integers against their columns.
    pub fn from_domain(failure: &'a FailureRecord) -> Result<Self, StoreError> {
        Ok(Self {
            failure,
            flow_id: DbUuid(failure.flow_id.0),
            master_flow_id: DbUuid(failure.master_flow_id.0),
            attempt: to_i32("failure attempt", failure.attempt)?,
            diagnostic: DbJsonRef(&failure.diagnostic),
            at: DbTime(failure.at),
        })
    }
}

/// A `tasks` row as read (by name too: the shared task statements return `t.*`).
#[derive(Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = tasks, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct TaskRow {
    pub id: DbUuid,
    pub queue: String,
    pub flow_id: DbUuid,
    pub master_flow_id: DbUuid,
    pub phase: String,
    pub attempt: i32,
    pub client_account_id: String,
    pub engagement_id: String,
    pub payload: DbJson,
    pub status: String,
    pub lease_id: Option<DbUuid>,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DbTime>,
    pub result: Option<DbJson>,
    pub created_at: DbTime,
    pub updated_at: DbTime,
}

impl TaskRow {
    /// The domain task.
    pub fn into_record(self) -> Result<TaskRecord, StoreError> {
        Ok(TaskRecord {
            id: TaskId(self.id.0),
            queue: self.queue,
            flow_id: FlowId(self.flow_id.0),
            master_flow_id: FlowId(self.master_flow_id.0),
            phase: self.phase,
            attempt: to_u32("tasks.attempt", self.attempt)?,
            client_account_id: self.client_account_id,
            engagement_id: self.engagement_id,
            payload: self.payload.0,
            status: parse_status::<TaskStatus>("tasks.status", &self.status)?,
            lease_id: self.lease_id.map(|id| id.0),
            worker_id: self.worker_id,
            lease_expires_at: self.lease_expires_at.map(|t| t.0),
            result: self
                .result
                .map(|j| {
                    TaskOutcome::from_stored(j.0).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "tasks.result of task {}: not an outcome",
                            self.id.0
                        ))
                    })
                })
                .transpose()?,
            created_at: self.created_at.0,
            updated_at: self.updated_at.0,
        })
    }
}

/// A task row to insert, or whose status, lease and result to overwrite; every value is
/// already converted to its column type.
#[derive(Debug)]
pub struct TaskWrite<'a> {
    pub task: &'a TaskRecord,
    pub id: DbUuid,
    pub flow_id: DbUuid,
    pub master_flow_id: DbUuid,
    pub attempt: i32,
    pub payload: DbJsonRef<'a>,
    pub lease_id: Option<DbUuid>,
    pub lease_expires_at: Option<DbTime>,
    /// The outcome in its stored form.
    pub result: Option<DbJson>,
    pub created_at: DbTime,
    pub updated_at: DbTime,
}

impl<'a> TaskWrite<'a> {
    /// Checks the task's integers against their columns.
    pub fn from_domain(task: &'a TaskRecord) -> Result<Self, StoreError> {
        Ok(Self {
            task,
            id: DbUuid(task.id.0),
            flow_id: DbUuid(task.flow_id.0),
            master_flow_id: DbUuid(task.master_flow_id.0),
            attempt: to_i32("task attempt", task.attempt)?,
            payload: DbJsonRef(&task.payload),
            lease_id: task.lease_id.map(DbUuid),
            lease_expires_at: task.lease_expires_at.map(DbTime),
            result: task.result.as_ref().map(|o| DbJson(o.to_stored())),
            created_at: DbTime(task.created_at),
            updated_at: DbTime(task.updated_at),
        })
    }
}
