//! Not reviving a flow from a stale read.

use std::collections::HashMap;

use crate::ids::FlowId;

/// Guards against reviving a flow from a stale read. A read of stored flows (the sweep, a
/// restart, a control request) can see a flow as running while a live actor finishes it; by
/// the time the read returns that actor may have committed `completed` and stopped. Every
/// stop is numbered; a read remembers the number it began at, and a flow whose actor stopped
/// after that is not started from that read. Stops are kept only while a read that could need
/// them is in flight, so nothing per flow outlives its flow.
#[derive(Default)]
pub(super) struct StaleReads {
    stops: u64,
    /// The stop number at which each flow's actor last stopped, while reads are in flight.
    stopped_at: HashMap<FlowId, u64>,
    /// Reads in flight, by the stop number they began at.
    reads: std::collections::BTreeMap<u64, usize>,
}

impl StaleReads {
    /// A read of stored flows begins; pass the answer to [`Self::is_stale`] and [`Self::end`].
    pub(super) fn begin(&mut self) -> u64 {
        *self.reads.entry(self.stops).or_default() += 1;
        self.stops
    }

    /// A flow's actor stopped (or was stopped).
    pub(super) fn stopped(&mut self, flow_id: FlowId) {
        self.stops += 1;
        if !self.reads.is_empty() {
            self.stopped_at.insert(flow_id, self.stops);
        }
    }

    /// Whether what a read that began at `began` saw of this flow may predate its last stop.
    pub(super) fn is_stale(&self, flow_id: FlowId, began: u64) -> bool {
        self.stopped_at.get(&flow_id).is_some_and(|at| *at > began)
    }

    /// A read is over; forgets the stops no read in flight can need.
    pub(super) fn end(&mut self, began: u64) {
        if let Some(count) = self.reads.get_mut(&began) {
            *count -= 1;
            if *count == 0 {
                self.reads.remove(&began);
            }
        }
        match self.reads.keys().next() {
            None => self.stopped_at.clear(),
            Some(&oldest) => self.stopped_at.retain(|_, at| *at > oldest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_during_a_read_makes_that_read_stale_for_that_flow_only() {
        let mut reads = StaleReads::default();
        let (finished, other) = (FlowId::new(), FlowId::new());
        let began = reads.begin();
        reads.stopped(finished);
        assert!(reads.is_stale(finished, began));
        assert!(!reads.is_stale(other, began));
        // A read that begins after the stop sees the committed end: it is not stale.
        let later = reads.begin();
        assert!(!reads.is_stale(finished, later));
        reads.end(began);
        reads.end(later);
        assert!(reads.stopped_at.is_empty(), "nothing outlives the reads");
        assert!(reads.reads.is_empty());
    }

    #[test]
    fn stops_with_no_read_in_flight_are_not_kept() {
        let mut reads = StaleReads::default();
        reads.stopped(FlowId::new());
        assert!(reads.stopped_at.is_empty());
    }
}
