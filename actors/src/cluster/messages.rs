//! Messages of the node actor.

use actix::{Message, Recipient};

use super::ClusterError;
use crate::supervisor::{ReconcileOwnership, RecoverFlows};

/// The runtime is running: claimed flows go to its supervisor, which resumes them as at boot,
/// and after a long silence it stops the actors of flows taken over meanwhile. Claim rounds
/// start with the first one, at once: a restarted node takes over at boot what its dead
/// predecessor on this host left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachRuntime {
    pub recover: Recipient<RecoverFlows>,
    pub reconcile: Recipient<ReconcileOwnership>,
}

/// Marks this node stopped in the `nodes` table and stops its heartbeats: a graceful shutdown.
/// Answered after the row is written (or the write failed).
#[derive(Message)]
#[rtype(result = "Result<(), ClusterError>")]
pub struct StopNode;

/// Counters for metrics and tests.
#[derive(Message)]
#[rtype(result = "NodeStats")]
pub struct GetNodeStats;

/// What the node actor has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Heartbeats written.
    pub heartbeats: u64,
    /// Heartbeat periods that passed without one written: the write failed, was still in
    /// flight at the next tick, or the timer itself fired late (a paused process, a starved
    /// thread).
    pub missed_heartbeats: u64,
    /// The longest gap between two written heartbeats, in milliseconds.
    pub longest_silence_ms: u64,
    /// Another process registered this node id: this one stopped heartbeating.
    pub displaced: bool,
    /// Claim rounds that took over at least one flow of a dead node.
    pub claim_rounds: u64,
    /// Flows this node took over from dead nodes.
    pub claimed_flows: u64,
    /// Times this node, back from a silence past the node timeout, stopped the actors of
    /// flows other nodes had taken over.
    pub reconciliations: u64,
}
