//! Messages of a flow actor.

use actix::Message;

use crate::error::RuntimeError;
use crate::handler::PhaseResult;
use crate::ids::FlowId;
use crate::model::{FlowState, FlowStatus};

/// An attempt's handler task ended; sent by that task to its flow's mailbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PhaseFinished {
    pub phase: String,
    pub attempt: u32,
    /// Whether the phase's fallback handler ran it (so an unavailable fallback is a failure).
    pub fallback: bool,
    pub result: PhaseResult,
}

/// A running attempt reports how much of its phase is done (0.0–1.0).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PhaseProgress {
    pub phase: String,
    pub attempt: u32,
    pub fraction: f64,
}

pub use crate::machine::ControlCommand;

/// Applies a lifecycle request; answered with the flow once the transition has committed.
#[derive(Message)]
#[rtype(result = "Result<FlowState, RuntimeError>")]
pub struct Control(pub ControlCommand);

/// Are you alive? A flow actor answers from its mailbox, so a blocked mailbox shows as silence.
#[derive(Message)]
#[rtype(result = "Pong")]
pub struct Ping;

/// A flow actor's answer to [`Ping`].
#[derive(Clone, Debug, PartialEq)]
pub struct Pong {
    pub flow_id: FlowId,
    pub status: FlowStatus,
    /// The phase whose handler is running, and its attempt.
    pub in_flight: Option<(String, u32)>,
    /// Unix ms of the running handler's last heartbeat.
    pub last_heartbeat_ms: Option<i64>,
}

/// Stops the actor without marking the flow finished: its stored state stays as it is.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFlow;

/// A flow actor stopped; a fault or an outage triggers a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlowStopped {
    pub flow_id: FlowId,
    pub generation: u64,
    pub cause: StopCause,
}

/// Why a flow actor stopped. Only faults of the flow itself count toward its restart intensity:
/// a database outage must never fail a healthy flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The flow reached a terminal status.
    Finished,
    /// A newer life of the flow's actor owns it; this one was fenced off and has nothing to do.
    Replaced,
    /// A transition could not be committed: the database is unavailable.
    StoreUnavailable(String),
    /// Anything else: a crash, a stop without a reason.
    Fault(String),
    /// The health actor found it silent (a missed ping) and had it stopped: a fault whose
    /// restart is journaled (`missed_ping`) and shown as the flow's status reason.
    Silent(String),
}
