//! Test-only fault injection: makes chosen flow actors stop answering their mailbox, so the
//! health actor's detection, restarts and restart intensity can be exercised for real.
//!
//! Compiled only with the cargo feature `faults` (tests, the chaos run): the plan is consulted
//! under a lock on every actor start and ping, which a production build should not pay for.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use crate::ids::FlowId;

#[derive(Clone, Copy, Debug)]
struct Freeze {
    remaining: u32,
    duration: Duration,
}

/// Which flow actors to freeze, and how often.
#[derive(Default)]
pub struct FaultPlan {
    freezes: Mutex<HashMap<FlowId, Freeze>>,
}

impl FaultPlan {
    /// The next `times` lives (or pings) of the flow's actor freeze its mailbox for `duration`.
    pub fn freeze(&self, flow_id: FlowId, times: u32, duration: Duration) {
        self.freezes.lock().insert(
            flow_id,
            Freeze {
                remaining: times,
                duration,
            },
        );
    }

    /// Takes one planned freeze of this flow, if any is left.
    pub fn take_freeze(&self, flow_id: FlowId) -> Option<Duration> {
        let mut freezes = self.freezes.lock();
        let freeze = freezes.get_mut(&flow_id)?;
        freeze.remaining = freeze.remaining.saturating_sub(1);
        let duration = freeze.duration;
        if freeze.remaining == 0 {
            freezes.remove(&flow_id);
        }
        Some(duration)
    }
}
