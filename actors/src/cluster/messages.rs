//! Messages of the node actor.

use actix::Message;

use super::ClusterError;

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
}
