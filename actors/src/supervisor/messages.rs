//! Messages of the supervisor.

use std::time::Duration;

use actix::{Addr, Message};

use crate::error::RuntimeError;
/// Facts a flow actor reports to its supervisor; declared beside the flow actor, which sends them.
pub use crate::flow::messages::{FlowStopped, StopCause};
use crate::flow::{ControlCommand, FlowActor};
use crate::ids::{FlowId, Tenant};
use crate::model::{FlowState, NewFlow};

/// Creates a flow and starts its actor. Answered once the flow is committed as `running`.
#[derive(Message)]
#[rtype(result = "Result<CreatedFlow, RuntimeError>")]
pub struct CreateFlow(pub NewFlow);

/// The answer to [`CreateFlow`].
#[derive(Clone, Debug)]
pub struct CreatedFlow {
    pub flow: FlowState,
    /// False when an idempotency key matched an existing flow.
    pub created: bool,
}

/// Starts an actor for every stored non-terminal flow that has none. Answers how many started.
#[derive(Message)]
#[rtype(result = "Result<usize, RuntimeError>")]
pub struct RecoverFlows {
    /// `None` at boot: every non-terminal flow. For the periodic sweep, only flows whose row
    /// has not been written for this long: a flow that could be orphaned, never a busy one.
    pub quiet_for: Option<Duration>,
    /// Flows this node has just claimed from a dead node (cluster takeover): exactly these,
    /// resumed as at boot; a live actor of an earlier ownership is replaced.
    pub claimed: Option<Vec<FlowId>>,
}

impl RecoverFlows {
    /// Boot recovery: resume every stored non-terminal flow (this node's own, in a cluster).
    pub fn all() -> Self {
        Self {
            quiet_for: None,
            claimed: None,
        }
    }

    /// The stored-flow sweep: adopt non-terminal flows left quiet for `quiet_for`.
    pub fn quiet_for(quiet_for: Duration) -> Self {
        Self {
            quiet_for: Some(quiet_for),
            claimed: None,
        }
    }

    /// Takeover: resume the flows this node claimed, exactly as boot recovery does.
    pub fn claimed(ids: Vec<FlowId>) -> Self {
        Self {
            quiet_for: None,
            claimed: Some(ids),
        }
    }
}

/// After a silence longer than the node timeout (the process was paused, or starved), other
/// nodes may have taken flows over: stop the actors of flows this node no longer owns. Their
/// writes would be fenced anyway; this stops their work sooner. Answers how many stopped.
#[derive(Message)]
#[rtype(result = "Result<usize, RuntimeError>")]
pub struct ReconcileOwnership;

/// A lifecycle request for one flow of one tenant.
#[derive(Message)]
#[rtype(result = "Result<FlowState, RuntimeError>")]
pub struct ControlFlow {
    pub flow_id: FlowId,
    pub tenant: Tenant,
    pub command: ControlCommand,
}

/// Routes controls of flows other nodes own through `remote` from now on (cluster mode on
/// PostgreSQL); without it every control is applied here, as on a single node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseRemoteControls(pub crate::controls::RemoteControls);

/// The live flow actors with their generations, for the health actor's pings.
#[derive(Message)]
#[rtype(result = "Vec<LiveFlow>")]
pub struct LiveFlows;

/// One live flow actor: which life of the flow it is, and its address.
#[derive(Clone, Debug)]
pub struct LiveFlow {
    pub flow_id: FlowId,
    pub generation: u64,
    pub addr: Addr<FlowActor>,
}

/// Stops a flow's actor (it did not answer) and starts it again from stored state, within the
/// restart intensity limit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartFlow {
    pub flow_id: FlowId,
    /// The life that did not answer: a restart request about any other life is void (it
    /// stopped on its own, or was already replaced).
    pub generation: u64,
    pub reason: String,
}
