//! Messages of the queue actor: what `external` phases and remote workers send it.

use std::time::Duration;

use actix::Message;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::handler::{NextPhase, PhaseResult};
use crate::ids::{FlowId, Tenant};
use crate::task::{TaskId, TaskRecord, TaskStatus};

/// Puts an attempt's task on its queue, or re-attaches to the task an earlier life of the same
/// attempt queued (after a restart). The outcome arrives on the returned receiver.
#[derive(Message)]
#[rtype(result = "Result<Attached, QueueError>")]
pub struct Submit {
    /// The task as stored (found by `(flow_id, phase, attempt)`) or a fresh one to insert.
    pub task: TaskRecord,
    /// Whether `task` is already stored.
    pub stored: bool,
    /// Without a worker polling its queue for this long, the task is withdrawn and the
    /// attempt ends as `handler_unavailable`, so the phase's fallback can run it.
    pub unavailable_after: Option<Duration>,
}

/// A live attachment of an attempt to its task.
#[derive(Debug)]
pub struct Attached {
    pub task_id: TaskId,
    /// Identifies this attachment, so that a late [`Detach`] from an earlier one is ignored.
    pub token: u64,
    pub outcome: oneshot::Receiver<PhaseResult>,
}

/// The attempt stopped waiting for its task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub task_id: TaskId,
    pub token: u64,
    /// True when the attempt is over (cancelled, timed out): the task leaves its queue and a
    /// worker's late result is refused. False when only its actor stopped (a restart): the task
    /// stays as it is for the same attempt to re-attach to.
    pub withdraw: bool,
}

/// A worker asks for the oldest queued task of `queue`, waiting up to `wait` for one.
#[derive(Message)]
#[rtype(result = "Result<Option<Lease>, QueueError>")]
pub struct Poll {
    pub tenant: Tenant,
    pub queue: String,
    pub worker_id: Option<String>,
    pub wait: Duration,
    pub lease: Duration,
}

/// A task handed to a worker: results must quote `lease_id` before `expires_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub task_id: TaskId,
    pub lease_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub flow_id: FlowId,
    pub phase: String,
    pub attempt: u32,
    /// The phase context (flow input, params, earlier outputs, idempotency key).
    pub payload: Value,
}

/// What a worker reports about its leased task.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Still working: extend the lease by `extend`.
    Heartbeat { extend: Duration },
    /// Done: the phase's output, and where the flow goes next.
    Complete {
        output: Value,
        next_phase: NextPhase,
    },
    /// Failed: retried by the phase's policy when `retryable`.
    Fail { error: String, retryable: bool },
}

/// A worker's report on one task, under one lease.
#[derive(Message)]
#[rtype(result = "Result<TaskRecord, QueueError>")]
pub struct ReportTask {
    pub tenant: Tenant,
    pub task_id: TaskId,
    pub lease_id: Uuid,
    pub report: Report,
}

/// Why the queue refused a request. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueError {
    /// No such task for this tenant.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The lease quoted is not the task's current one: it expired, or the task moved on.
    #[error("stale lease: task {task_id} is {status}{detail}")]
    StaleLease {
        task_id: TaskId,
        status: TaskStatus,
        detail: &'static str,
    },
    /// The database could not take the write; the request may be retried.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

/// How many tasks wait on queues and how many are leased, for metrics and benchmarks.
#[derive(Message)]
#[rtype(result = "QueueStats")]
pub struct GetQueueStats;

/// The queue actor's current load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub queued: usize,
    pub leased: usize,
    /// Workers waiting in a long poll.
    pub waiting_workers: usize,
}

/// One tenant's queues as they stand, for the dashboard's queues page.
#[derive(Message)]
#[rtype(result = "Vec<QueueDetail>")]
pub struct GetQueueDetails(pub Tenant);

/// One queue of one tenant: its depth, its oldest task, its leases and who polls it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueDetail {
    pub queue: String,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Tasks a worker holds a lease on.
    pub leased: usize,
    /// When the oldest waiting task was queued.
    pub oldest_queued_at: Option<DateTime<Utc>>,
    /// The soonest lease expiry among the leased tasks.
    pub next_lease_expiry: Option<DateTime<Utc>>,
    /// Workers waiting in a long poll now.
    pub waiting_workers: usize,
    /// Distinct workers holding leases now.
    pub leasing_workers: Vec<String>,
    /// Seconds since a worker last polled this queue on this server; null if never.
    pub last_poll_s_ago: Option<f64>,
}

/// Cluster mode: another node changed the row of a task (`Some`), or it may have while nobody
/// listened (`None`): the rows of the tasks waited for here are read again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TasksNotified(pub Option<TaskId>);
