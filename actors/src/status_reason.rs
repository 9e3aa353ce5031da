//! Why a flow is not progressing: a machine-readable reason for every non-terminal flow,
//! derived from what is stored (the flow's phases, its definition, its last failure, the task
//! of an external attempt, its children). Pure: the caller gathers the facts, the clock is not
//! read here, and a missing fact makes the reason coarser, never wrong.
//!
//! Two callers: a read of the flow (the flow JSON, from stored facts) and the flow actor at each
//! transition ([`stamp`], from the facts it holds: no read), whose reason every event of the
//! transition carries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::definition::FlowType;
use crate::events::{EventKind, FlowEvent};
use crate::machine::{DEFAULT_BACKOFF_MS, backoff};
use crate::model::{FailureRecord, FlowState, FlowStatus, PhaseStatus};
use crate::task::{TaskRecord, TaskStatus};

/// The reason a non-terminal flow is where it is; `kind` names the case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusReason {
    /// Created, its first phase not started yet.
    Starting,
    /// Held by a pause; `resume` continues it.
    Paused {
        /// When the flow was paused (its last write).
        since: DateTime<Utc>,
    },
    /// A phase's handler is working on it.
    Running {
        phase: String,
        attempt: u32,
        /// The handler kind of the phase (`sleep`, `command`, `http`, …).
        handler: String,
        since: Option<DateTime<Utc>>,
    },
    /// An `external` attempt sits on `queue` and no worker has leased it.
    WaitingForWorker {
        phase: String,
        queue: String,
        since: DateTime<Utc>,
    },
    /// A worker holds the `external` attempt's lease.
    LeasedByWorker {
        phase: String,
        queue: String,
        worker_id: Option<String>,
        lease_expires_at: Option<DateTime<Utc>>,
    },
    /// A fan-out phase waits for its children.
    WaitingForChildren {
        phase: String,
        done: u64,
        total: u64,
    },
    /// A phase failed and is retried after a backoff.
    RetryBackoff {
        phase: String,
        /// The attempt that failed.
        attempt: u32,
        next_attempt_at: Option<DateTime<Utc>>,
        /// The failure kind of that attempt (`timeout`, `handler_error`, …), when known.
        after: Option<String>,
    },
    /// Between two phases: the next one is about to start.
    Scheduled { phase: String },
    /// The health actor found the flow's actor silent (a missed ping) and started a new one
    /// from the stored state; it resumes at `phase` (until the flow's next transition).
    RestartedByHealth {
        /// The phase the new actor resumes, if any.
        phase: Option<String>,
        /// When the restart was journaled.
        since: DateTime<Utc>,
        /// What the health actor saw, e.g. `no answer to ping within 5s`.
        detail: String,
    },
}

/// The failure-journal kind (and [`EventKind::FlowRestarted`]'s error) of a restart after a
/// missed ping.
pub const MISSED_PING: &str = "missed_ping";

/// What the caller found out besides the flow itself; every field may be left empty.
#[derive(Clone, Debug, Default)]
pub struct ReasonFacts<'a> {
    /// The definition version the flow runs.
    pub definition: Option<&'a FlowType>,
    /// The task of the current phase's current attempt, for `external` phases.
    pub task: Option<&'a TaskRecord>,
    /// The failure kind of the current phase's last failed attempt.
    pub last_failure_kind: Option<&'a str>,
    /// `(done, total)` of the flow's children, for fan-out phases.
    pub children: Option<(u64, u64)>,
}

/// The reason for `flow`, or `None` when it is terminal.
pub fn status_reason(flow: &FlowState, facts: &ReasonFacts<'_>) -> Option<StatusReason> {
    match flow.status {
        FlowStatus::Completed | FlowStatus::Failed | FlowStatus::Cancelled => return None,
        FlowStatus::Initialized => return Some(StatusReason::Starting),
        FlowStatus::Paused => {
            return Some(StatusReason::Paused {
                since: flow.updated_at,
            });
        }
        FlowStatus::Running => {}
    }
    let Some((_, phase)) = flow.current() else {
        return Some(StatusReason::Starting);
    };
    let definition = facts.definition.and_then(|d| d.phase(&phase.name));
    let handler = definition.map_or("", |d| d.handler.as_str());
    match phase.status {
        PhaseStatus::Pending | PhaseStatus::Succeeded | PhaseStatus::Skipped => {
            Some(StatusReason::Scheduled {
                phase: phase.name.clone(),
            })
        }
        PhaseStatus::Failed => {
            let base = definition
                .and_then(|d| d.retry_backoff_ms)
                .unwrap_or(DEFAULT_BACKOFF_MS);
            let next_attempt_at = phase.finished_at.and_then(|at| {
                chrono::Duration::from_std(backoff(base, phase.attempt))
                    .ok()
                    .map(|delay| at + delay)
            });
            Some(StatusReason::RetryBackoff {
                phase: phase.name.clone(),
                attempt: phase.attempt,
                next_attempt_at: definition.and(next_attempt_at),
                after: facts.last_failure_kind.map(str::to_owned),
            })
        }
        PhaseStatus::Running => {
            let task = facts
                .task
                .filter(|t| t.phase == phase.name && t.attempt == phase.attempt);
            if let Some(task) = task {
                match task.status {
                    TaskStatus::Queued => {
                        return Some(StatusReason::WaitingForWorker {
                            phase: phase.name.clone(),
                            queue: task.queue.clone(),
                            since: task.created_at,
                        });
                    }
                    TaskStatus::Leased => {
                        return Some(StatusReason::LeasedByWorker {
                            phase: phase.name.clone(),
                            queue: task.queue.clone(),
                            worker_id: task.worker_id.clone(),
                            lease_expires_at: task.lease_expires_at,
                        });
                    }
                    _ => {}
                }
            }
            if handler == "child_flows"
                && let Some((done, total)) = facts.children
            {
                return Some(StatusReason::WaitingForChildren {
                    phase: phase.name.clone(),
                    done,
                    total,
                });
            }
            Some(StatusReason::Running {
                phase: phase.name.clone(),
                attempt: phase.attempt,
                handler: handler.to_owned(),
                since: phase.started_at,
            })
        }
    }
}

/// The reason as the flow actor knows it right after a transition, from the flow, its definition
/// and the transition's own journal row; no read. An `external` attempt that has just started
/// waits for a worker; a fan-out phase reads `running` (its children are not counted here).
pub fn at_transition(
    flow: &FlowState,
    definition: &FlowType,
    failure: Option<&FailureRecord>,
    last_kind: Option<EventKind>,
) -> Option<StatusReason> {
    let current = flow.current().map(|(_, p)| p);
    if let (Some(failure), Some(phase)) = (failure, current)
        && failure.error_kind == MISSED_PING
    {
        return Some(StatusReason::RestartedByHealth {
            phase: Some(phase.name.clone()),
            since: failure.at,
            detail: failure.message.clone(),
        });
    }
    let last_failure_kind = failure
        .filter(|f| current.is_some_and(|p| f.phase.as_deref() == Some(p.name.as_str())))
        .map(|f| f.error_kind.as_str());
    let facts = ReasonFacts {
        definition: Some(definition),
        last_failure_kind,
        ..ReasonFacts::default()
    };
    let reason = status_reason(flow, &facts)?;
    let phase_definition = current.and_then(|p| definition.phase(&p.name));
    match (reason, phase_definition) {
        // The fallback runs this attempt: it is not waiting on the primary's queue.
        (
            StatusReason::Running {
                phase,
                attempt,
                since,
                ..
            },
            Some(d),
        ) if last_kind == Some(EventKind::PhaseFallback) => Some(StatusReason::Running {
            phase,
            attempt,
            handler: d.fallback.clone().unwrap_or_default(),
            since,
        }),
        (
            StatusReason::Running {
                phase,
                since: Some(since),
                ..
            },
            Some(d),
        ) if d.handler == "external" => {
            match d.params.get("queue").and_then(serde_json::Value::as_str) {
                Some(queue) => Some(StatusReason::WaitingForWorker {
                    phase,
                    queue: queue.to_owned(),
                    since,
                }),
                None => status_reason(flow, &facts),
            }
        }
        (reason, _) => Some(reason),
    }
}

/// A transition's status reason with its JSON text, serialized once when the transition is
/// stamped and then shared by every event of the transition: its stored rows and every stream
/// frame reuse the text instead of serializing the reason again per event.
#[derive(Clone, Debug)]
pub struct SharedReason {
    reason: StatusReason,
    json: Box<RawValue>,
}

impl SharedReason {
    /// Serializes `reason` once.
    pub fn new(reason: StatusReason) -> Self {
        // A reason is plain data (strings, integers, times): it always serializes.
        let json =
            serde_json::value::to_raw_value(&reason).unwrap_or_else(|_| RawValue::NULL.to_owned());
        Self { reason, json }
    }

    /// A stored reason's JSON text, checked and kept as it is (no re-serialization).
    pub fn from_json(json: String) -> Result<Self, serde_json::Error> {
        let reason = serde_json::from_str(&json)?;
        let json = RawValue::from_string(json)?;
        Ok(Self { reason, json })
    }

    /// The reason as JSON text, as stored and as sent in frames.
    pub fn json(&self) -> &str {
        self.json.get()
    }
}

impl std::ops::Deref for SharedReason {
    type Target = StatusReason;

    fn deref(&self) -> &StatusReason {
        &self.reason
    }
}

impl PartialEq for SharedReason {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason
    }
}

impl Serialize for SharedReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json (to a string or to a `Value`) takes the text as it is; events are only
        // ever serialized by serde_json.
        self.json.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        StatusReason::deserialize(deserializer).map(Self::new)
    }
}

/// Gives every event of one transition the reason the transition left `flow` with (`None`
/// once terminal): called by whoever commits the transition, before it is written.
pub fn stamp(
    events: &mut [FlowEvent],
    flow: &FlowState,
    definition: &FlowType,
    failure: Option<&FailureRecord>,
) {
    let Some(last) = events.last() else {
        return;
    };
    let Some(reason) = at_transition(flow, definition, failure, Some(last.kind)) else {
        return;
    };
    let reason = std::sync::Arc::new(SharedReason::new(reason));
    for event in events {
        event.status_reason = Some(reason.clone());
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::definition::PhaseDefinition;
    use crate::ids::Tenant;
    use crate::model::NewFlow;
    use crate::task::TaskId;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    fn definition() -> FlowType {
        FlowType {
            name: "t".into(),
            version: 1,
            phases: vec![
                PhaseDefinition {
                    retry_backoff_ms: Some(2000),
                    retries: 3,
                    params: json!({"queue": "crews"}),
                    ..PhaseDefinition::new("crew", "external")
                },
                PhaseDefinition::new("fan", "child_flows"),
            ],
        }
    }

    fn flow(definition: &FlowType) -> FlowState {
        let mut flow = FlowState::new_initialized(
            definition,
            NewFlow {
                flow_type: "t".into(),
                input: json!({}),
                parent_flow_id: None,
                master_flow_id: None,
                tenant: Tenant::default_tenant(),
                created_by: None,
                idempotency_key: None,
            },
        );
        flow.status = FlowStatus::Running;
        flow.updated_at = at(0);
        flow
    }

    fn task(flow: &FlowState, status: TaskStatus) -> TaskRecord {
        TaskRecord {
            id: TaskId::new(),
            queue: "crews".into(),
            flow_id: flow.id,
            master_flow_id: flow.master_flow_id,
            phase: "crew".into(),
            attempt: 1,
            client_account_id: flow.client_account_id.clone(),
            engagement_id: flow.engagement_id.clone(),
            payload: json!({}),
            status,
            lease_id: Some(Uuid::nil()),
            worker_id: Some("w1".into()),
            lease_expires_at: Some(at(30)),
            result: None,
            created_at: at(1),
            updated_at: at(1),
        }
    }

    #[test]
    fn terminal_flows_have_no_reason_and_paused_ones_say_so() {
        let definition = definition();
        let mut flow = flow(&definition);
        for status in [
            FlowStatus::Completed,
            FlowStatus::Failed,
            FlowStatus::Cancelled,
        ] {
            flow.status = status;
            assert_eq!(status_reason(&flow, &ReasonFacts::default()), None);
        }
        flow.status = FlowStatus::Paused;
        assert_eq!(
            status_reason(&flow, &ReasonFacts::default()),
            Some(StatusReason::Paused { since: at(0) })
        );
        let json = serde_json::to_value(StatusReason::Paused { since: at(0) }).unwrap();
        assert_eq!(json["kind"], "paused");
    }

    #[test]
    fn a_queued_external_attempt_waits_for_a_worker_and_a_leased_one_names_it() {
        let definition = definition();
        let mut flow = flow(&definition);
        flow.phases[0].status = PhaseStatus::Running;
        flow.phases[0].attempt = 1;
        flow.phases[0].started_at = Some(at(1));
        let queued = task(&flow, TaskStatus::Queued);
        let facts = ReasonFacts {
            definition: Some(&definition),
            task: Some(&queued),
            ..ReasonFacts::default()
        };
        let reason = status_reason(&flow, &facts).unwrap();
        assert_eq!(
            serde_json::to_value(&reason).unwrap(),
            json!({"kind": "waiting_for_worker", "phase": "crew", "queue": "crews", "since": at(1)})
        );
        let leased = task(&flow, TaskStatus::Leased);
        let facts = ReasonFacts {
            task: Some(&leased),
            ..facts
        };
        assert!(matches!(
            status_reason(&flow, &facts),
            Some(StatusReason::LeasedByWorker { worker_id: Some(w), .. }) if w == "w1"
        ));
        // A task of an earlier attempt says nothing about this one.
        flow.phases[0].attempt = 2;
        assert!(matches!(
            status_reason(&flow, &facts),
            Some(StatusReason::Running { handler, .. }) if handler == "external"
        ));
    }

    #[test]
    fn a_failed_phase_of_a_running_flow_is_in_backoff_until_its_next_attempt() {
        let definition = definition();
        let mut flow = flow(&definition);
        flow.phases[0].status = PhaseStatus::Failed;
        flow.phases[0].attempt = 2;
        flow.phases[0].finished_at = Some(at(10));
        let facts = ReasonFacts {
            definition: Some(&definition),
            last_failure_kind: Some("timeout"),
            ..ReasonFacts::default()
        };
        assert_eq!(
            status_reason(&flow, &facts),
            Some(StatusReason::RetryBackoff {
                phase: "crew".into(),
                attempt: 2,
                next_attempt_at: Some(at(14)),
                after: Some("timeout".into()),
            })
        );
    }

    #[test]
    fn a_fan_out_phase_counts_its_children() {
        let definition = definition();
        let mut flow = flow(&definition);
        flow.phases[0].status = PhaseStatus::Succeeded;
        flow.current_phase = Some("fan".into());
        assert_eq!(
            status_reason(&flow, &ReasonFacts::default()),
            Some(StatusReason::Scheduled {
                phase: "fan".into()
            })
        );
        flow.phases[1].status = PhaseStatus::Running;
        flow.phases[1].attempt = 1;
        let facts = ReasonFacts {
            definition: Some(&definition),
            children: Some((3, 10)),
            ..ReasonFacts::default()
        };
        assert_eq!(
            status_reason(&flow, &facts),
            Some(StatusReason::WaitingForChildren {
                phase: "fan".into(),
                done: 3,
                total: 10,
            })
        );
    }

    fn journal(flow: &FlowState, kind: &str, message: &str, seconds: i64) -> FailureRecord {
        FailureRecord {
            id: 0,
            flow_id: flow.id,
            master_flow_id: flow.master_flow_id,
            phase: Some("crew".into()),
            attempt: 1,
            error_kind: kind.into(),
            message: message.into(),
            diagnostic: json!({}),
            at: at(seconds),
        }
    }

    #[test]
    fn a_transition_stamps_every_event_with_what_the_actor_knows() {
        let definition = definition();
        let mut flow = flow(&definition);
        flow.phases[0].status = PhaseStatus::Running;
        flow.phases[0].attempt = 1;
        flow.phases[0].started_at = Some(at(1));
        let mut events = vec![
            FlowEvent::of(&flow, EventKind::FlowStarted, None),
            FlowEvent::of(&flow, EventKind::PhaseStarted, None),
        ];
        stamp(&mut events, &flow, &definition, None);
        for event in &events {
            assert_eq!(
                event.reason(),
                Some(&StatusReason::WaitingForWorker {
                    phase: "crew".into(),
                    queue: "crews".into(),
                    since: at(1),
                })
            );
        }
        // A restart after a missed ping is the reason, whatever the phase is doing.
        let restart = journal(&flow, MISSED_PING, "no answer to ping within 5s", 9);
        assert_eq!(
            at_transition(&flow, &definition, Some(&restart), None),
            Some(StatusReason::RestartedByHealth {
                phase: Some("crew".into()),
                since: at(9),
                detail: "no answer to ping within 5s".into(),
            })
        );
        // Terminal: nothing to stamp.
        flow.status = FlowStatus::Completed;
        let mut events = vec![FlowEvent::of(&flow, EventKind::FlowCompleted, None)];
        stamp(&mut events, &flow, &definition, None);
        assert_eq!(events[0].status_reason, None);
        assert!(
            serde_json::to_value(&events[0])
                .unwrap()
                .get("status_reason")
                .is_none(),
            "absent, not null"
        );
    }

    #[test]
    fn a_failed_attempt_names_its_kind_and_a_fallback_is_not_waiting_on_the_queue() {
        let mut definition = definition();
        definition.phases[0].fallback = Some("noop".into());
        let mut flow = flow(&definition);
        flow.phases[0].status = PhaseStatus::Failed;
        flow.phases[0].attempt = 1;
        flow.phases[0].finished_at = Some(at(10));
        let failure = journal(&flow, "timeout", "no result", 10);
        assert!(matches!(
            at_transition(&flow, &definition, Some(&failure), None),
            Some(StatusReason::RetryBackoff { after: Some(kind), .. }) if kind == "timeout"
        ));
        flow.phases[0].status = PhaseStatus::Running;
        flow.phases[0].started_at = Some(at(11));
        assert!(matches!(
            at_transition(&flow, &definition, None, Some(EventKind::PhaseFallback)),
            Some(StatusReason::Running { handler, .. }) if handler == "noop"
        ));
    }

    #[test]
    fn a_shared_reason_is_serialized_once_and_read_back_as_stored() {
        let reason = StatusReason::Paused { since: at(3) };
        let shared = SharedReason::new(reason.clone());
        // The text is the reason's own JSON, and an event embeds it as it is.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(shared.json()).unwrap(),
            serde_json::to_value(&reason).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&shared).unwrap(),
            serde_json::to_value(&reason).unwrap()
        );
        // A stored text is kept byte for byte and parsed once.
        let stored = r#"{"kind":"starting"}"#.to_owned();
        let read = SharedReason::from_json(stored.clone()).unwrap();
        assert_eq!(read.json(), stored);
        assert_eq!(*read, StatusReason::Starting);
        assert_eq!(read, SharedReason::new(StatusReason::Starting));
        // Text that is not a reason is refused, not kept.
        assert!(SharedReason::from_json(r#"{"kind":"sleeping"}"#.to_owned()).is_err());
        assert!(SharedReason::from_json("not json".to_owned()).is_err());
    }
}
