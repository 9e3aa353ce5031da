//! External tasks: a phase attempt handed to remote workers through a named queue. The row is
//! durable so a server restart loses no task, no lease and no completion.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::ids::{FlowId, Tenant};
use crate::model::UnknownStatus;

/// A task's id, handed to the worker that leases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A fresh, time-ordered id: queues hand out the oldest task first.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Where a task is. `queued → leased → completed | failed`, `leased → expired` (the attempt
/// failed; the phase's retry puts a new task on the queue), `queued | leased → withdrawn` (the
/// flow was cancelled, the attempt timed out, or the phase fell back to another handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Leased,
    Completed,
    Failed,
    Expired,
    Withdrawn,
}

impl TaskStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
        }
    }

    /// Finished tasks take no more heartbeats or results.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Leased)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "leased" => Self::Leased,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            "withdrawn" => Self::Withdrawn,
            other => return Err(UnknownStatus(other.to_owned())),
        })
    }
}

/// One task as stored: one attempt of one `external` phase. `(flow_id, phase, attempt)` is
/// unique, so a flow that re-runs an interrupted attempt finds its task instead of adding one.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    pub id: TaskId,
    pub queue: String,
    pub flow_id: FlowId,
    pub master_flow_id: FlowId,
    pub phase: String,
    pub attempt: u32,
    pub client_account_id: String,
    pub engagement_id: String,
    /// What a worker receives: the phase context as JSON.
    pub payload: Value,
    pub status: TaskStatus,
    /// The current lease; results must quote it, so a worker whose lease expired is refused.
    pub lease_id: Option<Uuid>,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// `completed`: `{"output": …, "next_phase": …}`; `failed`: `{"error": …, "retryable": …}`.
    pub result: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TaskRecord {
    /// The tenant whose workers may lease it.
    pub fn tenant(&self) -> Tenant {
        Tenant {
            client_account_id: self.client_account_id.clone(),
            engagement_id: self.engagement_id.clone(),
        }
    }
}
