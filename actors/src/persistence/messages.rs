//! Messages of the persistence actor.

use actix::Message;

use crate::error::PersistError;
use crate::ids::FlowId;
use crate::store::Write;

/// Commits one write. Answered only after the transaction holding it committed (or failed).
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct Persist {
    pub write: Write,
    /// The writing flow actor's generation, checked against the flow's fence; `None` for the
    /// supervisor and the registry, which are never stale.
    pub writer: Option<u64>,
}

impl Persist {
    /// A write from the supervisor or the registry.
    pub fn unfenced(write: Write) -> Self {
        Self {
            write,
            writer: None,
        }
    }
}

/// Sets which life of a flow's actor may write: `Some(generation)` for a fresh actor, `None`
/// while it has none. Writes from any other life are refused, so an actor that was replaced
/// (e.g. it froze and woke up later) can never write over its successor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fence {
    pub flow_id: FlowId,
    pub writer: Option<u64>,
}

/// The flow is terminal: forget its fence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub FlowId);

/// Counters for metrics and benchmarks.
#[derive(Message)]
#[rtype(result = "PersistenceStats")]
pub struct GetStats;

/// What the persistence actor has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PersistenceStats {
    pub batches: u64,
    pub writes: u64,
    pub events: u64,
    /// Batches that met an unavailable database and waited it out before committing.
    pub failed_batches: u64,
    /// Writes the database refused for their content; each failed alone, its batch committed.
    pub refused_writes: u64,
    /// Transitions fenced off because another node owns their flow now; each failed alone and
    /// its flow actor stopped.
    pub fenced_writes: u64,
    /// Failed tries of the current batch while the database is unavailable: non-zero means it
    /// cannot write now. A refused write does not count: the database is fine.
    pub consecutive_failures: u64,
    pub largest_batch: u64,
    /// Sum of commit durations (the writer's busy time), for the mean commit latency. A
    /// store whose commits need a sync syncs beside it: see `syncs`.
    pub commit_micros: u64,
    /// Syncs of committed batches (each covers every batch committed before it started), for
    /// a store whose commits need one; 0 otherwise.
    pub syncs: u64,
    /// Sum of sync durations.
    pub sync_micros: u64,
}
