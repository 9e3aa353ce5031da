//! External tasks: a phase attempt handed to remote workers through a named queue. The row is
//! durable so a server restart loses no task, no lease and no completion.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::handler::NextPhase;
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
    /// What the worker reported: set once the task is `completed` or `failed`.
    pub result: Option<TaskOutcome>,
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

/// How a worker ended its task, as it reported it: parsed and checked once where the report
/// arrives, then carried typed to the attempt waiting for it. Stored as JSON (see
/// [`TaskOutcome::to_stored`]) so that an attempt re-attaching after a restart finds it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskOutcome {
    /// The phase's output, and where the flow goes next.
    Succeeded {
        output: Value,
        next_phase: NextPhase,
    },
    /// The worker gave up; the phase's retry policy applies only when `retryable`.
    Failed { message: String, retryable: bool },
}

impl TaskOutcome {
    /// A success that lets the definition pick the next phase.
    pub fn succeeded(output: Value) -> Self {
        Self::Succeeded {
            output,
            next_phase: NextPhase::ByDefinition,
        }
    }

    /// The stored form: `{"output": …, "next_phase": …}` (`next_phase` absent when the definition
    /// decides, null to finish) or `{"error": …, "retryable": …}`. Rows written before the
    /// outcome was typed have the same shape.
    pub fn to_stored(&self) -> Value {
        match self {
            Self::Succeeded { output, next_phase } => {
                let mut stored = serde_json::Map::new();
                stored.insert("output".into(), output.clone());
                match next_phase {
                    NextPhase::ByDefinition => {}
                    NextPhase::Finish => {
                        stored.insert("next_phase".into(), Value::Null);
                    }
                    NextPhase::Named(name) => {
                        stored.insert("next_phase".into(), Value::String(name.clone()));
                    }
                }
                Value::Object(stored)
            }
            Self::Failed { message, retryable } => {
                serde_json::json!({ "error": message, "retryable": retryable })
            }
        }
    }

    /// Reads the stored form back; `None` when it is not an object of either shape. Missing
    /// fields take the defaults a worker's report has (no output: null; no `retryable`: true).
    pub fn from_stored(stored: Value) -> Option<Self> {
        let Value::Object(mut stored) = stored else {
            return None;
        };
        if let Some(error) = stored.remove("error") {
            let retryable = match stored.remove("retryable") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(retryable)) => retryable,
                Some(_) => return None,
            };
            let message = match error {
                Value::String(message) => message,
                _ => "the worker reported a failure".to_owned(),
            };
            return Some(Self::Failed { message, retryable });
        }
        let next_phase = match stored.remove("next_phase") {
            None => NextPhase::ByDefinition,
            Some(Value::Null) => NextPhase::Finish,
            Some(Value::String(name)) => NextPhase::Named(name),
            Some(_) => return None,
        };
        let output = stored.remove("output").unwrap_or(Value::Null);
        Some(Self::Succeeded { output, next_phase })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn outcomes_keep_their_stored_shape() {
        let cases = [
            (
                TaskOutcome::succeeded(json!({"n": 1})),
                json!({"output": {"n": 1}}),
            ),
            (
                TaskOutcome::Succeeded {
                    output: json!(2),
                    next_phase: NextPhase::Finish,
                },
                json!({"output": 2, "next_phase": null}),
            ),
            (
                TaskOutcome::Succeeded {
                    output: json!(null),
                    next_phase: NextPhase::Named("b".into()),
                },
                json!({"output": null, "next_phase": "b"}),
            ),
            (
                TaskOutcome::Failed {
                    message: "boom".into(),
                    retryable: false,
                },
                json!({"error": "boom", "retryable": false}),
            ),
        ];
        for (outcome, stored) in cases {
            assert_eq!(outcome.to_stored(), stored);
            assert_eq!(TaskOutcome::from_stored(stored), Some(outcome));
        }
    }

    #[test]
    fn stored_outcomes_take_the_report_defaults() {
        assert_eq!(
            TaskOutcome::from_stored(json!({"error": "x"})),
            Some(TaskOutcome::Failed {
                message: "x".into(),
                retryable: true
            })
        );
        assert_eq!(
            TaskOutcome::from_stored(json!({})),
            Some(TaskOutcome::succeeded(Value::Null))
        );
        for corrupt in [
            json!("done"),
            json!({"output": 1, "next_phase": 3}),
            json!({"error": "x", "retryable": "no"}),
        ] {
            assert_eq!(TaskOutcome::from_stored(corrupt.clone()), None, "{corrupt}");
        }
    }
}
