//! Flow events: what the event history stores and what the fan-out streams to subscribers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::ids::FlowId;
use crate::model::{FlowState, FlowStatus};

/// What happened. Together with `status` this tells a watcher everything it needs to redraw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    FlowInitialized,
    FlowStarted,
    PhaseStarted,
    PhaseSucceeded,
    PhaseFailed,
    FlowPaused,
    FlowResumed,
    FlowCompleted,
    FlowFailed,
    FlowCancelled,
    FlowRetried,
    /// A running phase reports partial progress (a fan-out phase, as its children advance).
    PhaseProgress,
    /// A phase's primary handler was unavailable; its fallback runs the attempt.
    PhaseFallback,
}

impl EventKind {
    /// The contract's name for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlowInitialized => "flow_initialized",
            Self::FlowStarted => "flow_started",
            Self::PhaseStarted => "phase_started",
            Self::PhaseSucceeded => "phase_succeeded",
            Self::PhaseFailed => "phase_failed",
            Self::FlowPaused => "flow_paused",
            Self::FlowResumed => "flow_resumed",
            Self::FlowCompleted => "flow_completed",
            Self::FlowFailed => "flow_failed",
            Self::FlowCancelled => "flow_cancelled",
            Self::FlowRetried => "flow_retried",
            Self::PhaseProgress => "phase_progress",
            Self::PhaseFallback => "phase_fallback",
        }
    }

    /// Parses a stored kind.
    pub fn parse(s: &str) -> Option<Self> {
        ALL_KINDS.iter().copied().find(|k| k.as_str() == s)
    }
}

const ALL_KINDS: [EventKind; 13] = [
    EventKind::FlowInitialized,
    EventKind::FlowStarted,
    EventKind::PhaseStarted,
    EventKind::PhaseSucceeded,
    EventKind::PhaseFailed,
    EventKind::FlowPaused,
    EventKind::FlowResumed,
    EventKind::FlowCompleted,
    EventKind::FlowFailed,
    EventKind::FlowCancelled,
    EventKind::FlowRetried,
    EventKind::PhaseProgress,
    EventKind::PhaseFallback,
];

/// One committed transition of one flow. `seq` is gap-free per flow; `id` rises across all flows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowEvent {
    /// Assigned by the persistence actor when the event is committed.
    pub id: i64,
    pub seq: u64,
    pub flow_id: FlowId,
    pub master_flow_id: FlowId,
    pub kind: EventKind,
    pub status: FlowStatus,
    pub current_phase: Option<String>,
    pub next_phase: Option<String>,
    pub progress_percentage: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    /// Scope for tenant streams; not part of the event JSON.
    #[serde(skip)]
    pub client_account_id: String,
    #[serde(skip)]
    pub engagement_id: String,
    /// For `flow_type=` stream filters; not part of the event JSON.
    #[serde(skip)]
    pub flow_type: String,
}

impl FlowEvent {
    /// The event for a transition that has just been applied to `flow` (whose `last_seq` it takes).
    pub fn of(flow: &FlowState, kind: EventKind, error: Option<String>) -> Self {
        Self {
            id: 0,
            seq: flow.last_seq,
            flow_id: flow.id,
            master_flow_id: flow.master_flow_id,
            kind,
            status: flow.status,
            current_phase: flow.current_phase.clone(),
            next_phase: flow.next_phase.clone(),
            progress_percentage: flow.progress_percentage,
            error,
            at: flow.updated_at,
            client_account_id: flow.client_account_id.clone(),
            engagement_id: flow.engagement_id.clone(),
            flow_type: flow.flow_type.clone(),
        }
    }
}

/// A committed event as the fan-out carries it: serialized to its JSON once, on first use,
/// however many subscribers send it on.
#[derive(Debug)]
pub struct CommittedEvent {
    event: FlowEvent,
    json: std::sync::OnceLock<String>,
}

impl CommittedEvent {
    /// Wraps a committed event.
    pub fn new(event: FlowEvent) -> Self {
        Self {
            event,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The event's contract JSON, computed by the first subscriber that asks.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(&self.event).unwrap_or_default())
    }
}

impl std::ops::Deref for CommittedEvent {
    type Target = FlowEvent;

    fn deref(&self) -> &FlowEvent {
        &self.event
    }
}

/// Fan-out of committed events. Publishing never waits for subscribers: one that falls behind
/// the bounded buffer learns how many it missed and catches up from the database.
#[derive(Clone)]
pub struct EventFanout {
    sender: broadcast::Sender<Arc<CommittedEvent>>,
}

impl EventFanout {
    /// A fan-out whose subscribers may fall `capacity` events behind before they lag.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(16));
        Self { sender }
    }

    /// Sends committed events to every live subscriber, in commit order.
    pub fn publish(&self, events: impl IntoIterator<Item = FlowEvent>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for event in events {
            // An error only means every subscriber left meanwhile.
            let _ = self.sender.send(Arc::new(CommittedEvent::new(event)));
        }
    }

    /// A receiver of every event committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommittedEvent>> {
        self.sender.subscribe()
    }

    /// Live subscribers, for metrics.
    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }
}
