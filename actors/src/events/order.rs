//! The order rule of a fan-out shared by several nodes: publish every committed event once, in
//! id order, whichever node committed it.
//!
//! It rests on the contract of the cluster's writers (docs/cluster.md, 2.4): event ids are
//! numbered inside each commit from one counter, so they are gap-free and become visible in id
//! order. Two facts follow, and the rule uses nothing else:
//! - when this node's own commit returns ids `a..=b`, every id below `a` is committed and
//!   visible, so a read made after that sees all of them;
//! - an id missing from a read whose range that fact covers was never committed (a writer that
//!   numbers in memory leaves such holes when a write is refused) and is skipped.
//!
//! A hole no fact covers may still be filled by a commit in flight: publication stops there and
//! waits for the next own commit, notification or backstop read. The rule is pure: the fan-out
//! calls it under its lock, the tail task does the reads it asks for.

use std::collections::VecDeque;

use super::FlowEvent;

/// Where a node's publication stands, and the own events waiting for lower ids.
#[derive(Debug)]
pub(crate) struct Sequencer {
    /// The highest id published.
    published: i64,
    /// Own committed events above a hole, in id order.
    held: VecDeque<FlowEvent>,
    /// Every id at or below this is committed (proven by own commits).
    committed_through: i64,
    /// The highest id a notification announced.
    announced: i64,
    /// The read in flight, if any.
    reading: Option<Read>,
    /// The last read stopped at a hole no fact covered: the own commit that fills it should
    /// read again at once rather than leave what lies above to the backstop.
    stalled: bool,
}

/// A read of committed events the sequencer asked for: `events WHERE id > after ORDER BY id
/// LIMIT limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Read {
    pub after: i64,
    pub limit: usize,
    /// `committed_through` when the read started: holes at or below it are permanent.
    proven: i64,
    /// `announced` when the read started.
    announced: i64,
}

/// What to do with own committed events.
#[derive(Debug, PartialEq)]
pub(crate) struct Own {
    /// Publish these now, in this order.
    pub publish: Vec<FlowEvent>,
    /// Start a read: events are held behind a hole, or a notification announced more.
    pub read: bool,
}

/// What a finished read gives.
#[derive(Debug, PartialEq)]
pub(crate) struct Finished {
    /// Publish these now, in this order.
    pub publish: Vec<FlowEvent>,
    /// Read again at once: the page was full, or what became known during the read asks for it.
    pub again: bool,
    /// Ids skipped as never committed.
    pub skipped: i64,
}

impl Sequencer {
    /// A sequencer that has published everything up to `published` (the store's highest id).
    pub(crate) fn new(published: i64) -> Self {
        Self {
            published,
            held: VecDeque::new(),
            committed_through: published,
            announced: published,
            reading: None,
            stalled: false,
        }
    }

    /// Own events of one commit, in id order. Published at once when nothing is missing below
    /// them; otherwise held until a read fills the hole. Ids already published (by a read that
    /// saw the commit first) are dropped.
    pub(crate) fn own(&mut self, events: Vec<FlowEvent>) -> Own {
        let mut events: VecDeque<FlowEvent> = events
            .into_iter()
            .filter(|e| e.id > self.published)
            .collect();
        // The writer hands commits over in commit order; should one ever come out of order
        // (a batch split to isolate a refused write), order it rather than trust it.
        if !events.iter().is_sorted_by_key(|e| e.id) {
            events.make_contiguous().sort_by_key(|e| e.id);
        }
        let Some(last) = events.back().map(|e| e.id) else {
            return Own {
                publish: Vec::new(),
                read: self.stalled && self.wants_read(),
            };
        };
        // Ids are numbered in commit order: every id up to this commit's last is committed.
        self.committed_through = self.committed_through.max(last);
        let first = events.front().map_or(last, |e| e.id);
        if self.held.is_empty() && first <= self.published + 1 {
            // Holes inside one commit are writes it refused: they never commit.
            self.published = last;
            // Announcements alone are the tail's to weigh (most are this node's own commits,
            // published here a moment after their notification).
            return Own {
                publish: events.into(),
                read: self.stalled && self.wants_read(),
            };
        }
        let sorted = self.held.back().is_none_or(|held| held.id < first);
        self.held.append(&mut events);
        if !sorted {
            self.held.make_contiguous().sort_by_key(|e| e.id);
        }
        Own {
            publish: Vec::new(),
            read: self.reading.is_none(),
        }
    }

    /// A notification: the database holds ids up to `last`. Whether a read is wanted.
    pub(crate) fn announce(&mut self, last: i64) -> bool {
        self.announced = self.announced.max(last);
        self.wants_read()
    }

    /// The highest id announced.
    pub(crate) fn announced(&self) -> i64 {
        self.announced
    }

    /// Whether something known is not yet published and no read is in flight.
    pub(crate) fn wants_read(&self) -> bool {
        self.reading.is_none() && (!self.held.is_empty() || self.announced > self.published)
    }

    /// Starts a read of at most `limit` events, unless one is in flight.
    pub(crate) fn begin_read(&mut self, limit: usize) -> Option<Read> {
        if self.reading.is_some() {
            return None;
        }
        let read = Read {
            after: self.published,
            limit: limit.max(1),
            proven: self.committed_through,
            announced: self.announced,
        };
        self.reading = Some(read);
        Some(read)
    }

    /// The read failed: nothing changes, a later trigger reads again.
    pub(crate) fn read_failed(&mut self) {
        self.reading = None;
    }

    /// Merges the rows of the read in flight (id order, all above its `after`) with the held
    /// own events, publishing in id order as far as nothing unproven is missing.
    pub(crate) fn finish_read(&mut self, rows: Vec<FlowEvent>) -> Finished {
        let Some(read) = self.reading.take() else {
            return Finished {
                publish: Vec::new(),
                again: false,
                skipped: 0,
            };
        };
        let full = rows.len() >= read.limit;
        // The read saw every committed id up to here.
        let covered = if full {
            rows.last().map_or(read.after, |e| e.id)
        } else {
            i64::MAX
        };
        let mut rows: VecDeque<FlowEvent> = rows.into();
        let mut publish = Vec::new();
        let mut skipped = 0;
        let mut stalled = false;
        loop {
            let take_held = match (rows.front(), self.held.front()) {
                (None, None) => break,
                (Some(row), Some(held)) => held.id <= row.id,
                (Some(_), None) => false,
                (None, Some(_)) => true,
            };
            let source = if take_held { &mut self.held } else { &mut rows };
            let Some(id) = source.front().map(|e| e.id) else {
                break;
            };
            if id <= self.published {
                source.pop_front();
                continue;
            }
            let hole_top = id - 1;
            if hole_top > self.published {
                if hole_top <= read.proven && hole_top <= covered {
                    skipped += hole_top - self.published;
                } else {
                    // Perhaps a commit in flight: wait for it. Held events stay held; the
                    // read's rows are read again later.
                    stalled = true;
                    break;
                }
            }
            let Some(event) = source.pop_front() else {
                break;
            };
            if take_held && rows.front().is_some_and(|row| row.id == id) {
                // The read saw this own commit: one copy.
                rows.pop_front();
            }
            self.published = id;
            publish.push(event);
        }
        self.stalled = stalled;
        // A full page read to its end: the next page may hold more.
        let again = (full && rows.is_empty())
            || (!self.held.is_empty() && self.committed_through > read.proven)
            || (self.announced > read.announced && self.announced > self.published);
        Finished {
            publish,
            again,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::ids::{FlowId, Tenant};
    use crate::model::FlowStatus;

    fn event(id: i64) -> FlowEvent {
        let tenant = Tenant::default_tenant();
        let flow_id = FlowId::new();
        FlowEvent {
            id,
            seq: 1,
            flow_id,
            master_flow_id: flow_id,
            kind: EventKind::FlowStarted,
            status: FlowStatus::Running,
            current_phase: None,
            next_phase: None,
            progress_percentage: 0.0,
            error: None,
            at: chrono::Utc::now(),
            status_reason: None,
            client_account_id: tenant.client_account_id,
            engagement_id: tenant.engagement_id,
            flow_type: "t".into(),
        }
    }

    fn events(ids: impl IntoIterator<Item = i64>) -> Vec<FlowEvent> {
        ids.into_iter().map(event).collect()
    }

    fn ids(events: &[FlowEvent]) -> Vec<i64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn own_events_right_after_the_last_published_go_out_at_once() {
        let mut order = Sequencer::new(10);
        let own = order.own(events(11..=13));
        assert_eq!(ids(&own.publish), [11, 12, 13]);
        assert!(!own.read);
        assert_eq!(order.published, 13);
        // A write the commit refused leaves a hole inside it: never committed, not waited for.
        let own = order.own(events([14, 16]));
        assert_eq!(ids(&own.publish), [14, 16]);
    }

    #[test]
    fn own_events_above_a_hole_wait_for_the_read_of_the_other_nodes_events() {
        let mut order = Sequencer::new(10);
        let own = order.own(events(14..=15));
        assert!(own.publish.is_empty(), "11..=13 come first");
        assert!(own.read);
        let read = order.begin_read(100).expect("a read");
        assert_eq!(read.after, 10);
        assert!(order.begin_read(100).is_none(), "one read at a time");
        // More own events while the read is in flight are held behind the first ones.
        assert!(order.own(events([16])).publish.is_empty());
        // The read sees the other node's 11..=13 and this node's own 14 and 15 (committed).
        let done = order.finish_read(events(11..=15));
        assert_eq!(ids(&done.publish), [11, 12, 13, 14, 15, 16], "each id once");
        assert!(!done.again);
        assert_eq!(done.skipped, 0);
        assert_eq!(order.published, 16);
    }

    #[test]
    fn a_hole_below_an_own_commit_is_skipped_as_never_committed() {
        let mut order = Sequencer::new(10);
        order.own(events([15]));
        order.begin_read(100).expect("a read");
        // 12 and 14 never committed (refused writes of a writer numbering in memory).
        let done = order.finish_read(events([11, 13, 15]));
        assert_eq!(ids(&done.publish), [11, 13, 15]);
        assert_eq!(done.skipped, 2);
    }

    #[test]
    fn a_hole_nothing_proves_waits_for_the_commit_that_fills_it() {
        let mut order = Sequencer::new(10);
        // Another node's 13..=14 are visible while 11..=12 are not: with ids numbered in commit
        // order this cannot happen, but a reader must still never skip past an id that may
        // commit later.
        assert!(order.announce(14));
        order.begin_read(100).expect("a read");
        let done = order.finish_read(events(13..=14));
        assert!(done.publish.is_empty());
        assert!(!done.again, "no busy loop: the next trigger reads again");
        assert_eq!(order.published, 10);
        // The own commit that fills the hole goes out, and asks for the read of the rest.
        let own = order.own(events(11..=12));
        assert_eq!(ids(&own.publish), [11, 12]);
        assert!(own.read, "14 was announced");
        order.begin_read(100).expect("a read");
        let done = order.finish_read(events(11..=14));
        assert_eq!(ids(&done.publish), [13, 14]);
        assert!(!order.wants_read());
    }

    #[test]
    fn a_notification_of_an_own_commit_costs_no_read() {
        let mut order = Sequencer::new(10);
        // The notification of this node's own commit arrives before the writer hands it over.
        assert!(order.announce(12));
        assert_eq!(order.announced(), 12);
        let own = order.own(events(11..=12));
        assert_eq!(ids(&own.publish), [11, 12]);
        assert!(!own.read);
        assert!(!order.wants_read(), "12 is published: nothing is missing");
    }

    #[test]
    fn own_events_out_of_order_are_put_in_order() {
        let mut order = Sequencer::new(10);
        assert_eq!(ids(&order.own(events([12, 11])).publish), [11, 12]);
        // Held commits handed over out of order come out in id order too.
        assert!(order.own(events([16])).publish.is_empty());
        assert!(order.own(events([15])).publish.is_empty());
        order.begin_read(100).expect("a read");
        let done = order.finish_read(events(13..=16));
        assert_eq!(ids(&done.publish), [13, 14, 15, 16]);
    }

    #[test]
    fn a_full_page_asks_for_the_next_one() {
        let mut order = Sequencer::new(0);
        order.own(events([7]));
        order.begin_read(3).expect("a read");
        let done = order.finish_read(events(1..=3));
        assert_eq!(ids(&done.publish), [1, 2, 3]);
        assert!(done.again);
        order.begin_read(3).expect("the next page");
        let done = order.finish_read(events(4..=6));
        assert_eq!(
            ids(&done.publish),
            [4, 5, 6, 7],
            "the held own event follows"
        );
        assert!(done.again);
        order.begin_read(3).expect("the next page");
        let done = order.finish_read(events([7]));
        assert!(done.publish.is_empty(), "7 went out once");
        assert!(!done.again);
    }

    #[test]
    fn a_page_that_ends_below_a_hole_proves_nothing_above_it() {
        let mut order = Sequencer::new(0);
        order.own(events([9]));
        order.begin_read(2).expect("a read");
        // 1 and 2 read; 3..=8 not seen yet: not skipped, the next page reads them.
        let done = order.finish_read(events([1, 2]));
        assert_eq!(ids(&done.publish), [1, 2]);
        assert_eq!(done.skipped, 0);
        assert!(done.again);
        order.begin_read(2).expect("the next page");
        let done = order.finish_read(events([3, 9]));
        assert_eq!(
            ids(&done.publish),
            [3, 9],
            "4..=8 lie between two rows read"
        );
        assert_eq!(done.skipped, 5);
    }

    #[test]
    fn what_becomes_known_during_a_read_asks_for_another() {
        let mut order = Sequencer::new(0);
        assert!(order.announce(2));
        order.begin_read(100).expect("a read");
        assert!(!order.announce(5), "a read is in flight");
        let done = order.finish_read(events(1..=2));
        assert_eq!(ids(&done.publish), [1, 2]);
        assert!(done.again, "5 was announced after the read started");
        // An own commit above a hole, during a read that started before it.
        order.begin_read(100).expect("a read");
        order.own(events([8]));
        let done = order.finish_read(events(3..=5));
        assert_eq!(ids(&done.publish), [3, 4, 5]);
        assert!(done.again, "the read may have missed 6..=7");
        order.begin_read(100).expect("a read");
        let done = order.finish_read(events(6..=8));
        assert_eq!(ids(&done.publish), [6, 7, 8]);
        assert!(!done.again);
    }

    #[test]
    fn a_failed_read_changes_nothing() {
        let mut order = Sequencer::new(0);
        order.own(events([3]));
        order.begin_read(100).expect("a read");
        order.read_failed();
        assert!(order.wants_read());
        order.begin_read(100).expect("a read again");
        let done = order.finish_read(events(1..=3));
        assert_eq!(ids(&done.publish), [1, 2, 3]);
    }

    #[test]
    fn own_events_a_read_already_published_are_dropped() {
        let mut order = Sequencer::new(0);
        order.announce(3);
        order.begin_read(100).expect("a read");
        // The read saw this node's own commit before the writer handed it over.
        let done = order.finish_read(events(1..=3));
        assert_eq!(ids(&done.publish), [1, 2, 3]);
        let own = order.own(events(2..=3));
        assert!(own.publish.is_empty());
        assert_eq!(ids(&order.own(events([4])).publish), [4]);
    }
}
