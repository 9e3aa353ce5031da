//! Messages of the health actor.

use actix::Message;

/// What the health actor has seen since it started.
#[derive(Message)]
#[rtype(result = "HealthStats")]
pub struct GetHealthStats;

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthStats {
    pub sweeps: u64,
    pub pings: u64,
    pub pings_missed: u64,
    pub restarts_requested: u64,
}
