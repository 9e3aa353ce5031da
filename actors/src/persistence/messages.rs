//! Messages of the persistence actor.

use actix::Message;

use crate::error::PersistError;
use crate::store::Write;

/// Commits one write. Answered only after the transaction holding it committed (or failed).
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct Persist(pub Write);

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
    pub failed_batches: u64,
    pub largest_batch: u64,
    /// Sum of commit durations, for the mean commit latency.
    pub commit_micros: u64,
}
