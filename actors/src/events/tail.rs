//! The tail: in cluster mode, reads the events other nodes committed and hands them to the
//! fan-out, so that streams on every node carry every node's events, in id order, once each.
//!
//! It reads `events WHERE id > published ORDER BY id` (bounded pages) when:
//! - this node's own commit returned ids above a hole (other nodes committed the ids below);
//! - a notification announced ids above the last published ([`EventTail::notified`]; the
//!   listener on `LISTEN flowd_events` calls it), after a short grace that lets this node's own
//!   commits, which notify too, arrive from the writer first;
//! - the backstop timer fires, in case a notification was lost (the listening connection
//!   dropped), or the listener asks after reconnecting ([`EventTail::wake`]).
//!
//! The writer never waits for it: own events above a hole are held by the fan-out until the
//! read fills the hole (see `order`). One read at a time; a failed read is tried again at the
//! next trigger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::EventFanout;
use crate::store::FlowStore;

/// Events read per query.
const PAGE: u32 = 1000;
/// How long a notification waits before its read: a node's own commits notify too, and their
/// events usually reach the fan-out from the writer within this, making the read needless.
const NOTIFY_GRACE: Duration = Duration::from_millis(20);

/// The handle of a running tail, for the listener that wakes it.
#[derive(Clone)]
pub struct EventTail {
    fanout: EventFanout,
    signals: Arc<Signals>,
}

struct Signals {
    /// A notification, or a request for a read whatever is known.
    announced: Notify,
    /// Set by [`EventTail::wake`]: read even if nothing known is missing.
    force: AtomicBool,
    reads: AtomicU64,
    skipped: AtomicU64,
}

/// Counters of the tail, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Reads of other nodes' events done.
    pub reads: u64,
    /// Ids skipped as never committed (holes below an own commit).
    pub skipped_ids: u64,
}

impl EventTail {
    /// Starts the tail of `fanout` (made by [`EventFanout::for_cluster`]) on the current
    /// arbiter, reading from `store`, with a backstop read every `backstop`.
    pub fn start(fanout: EventFanout, store: Arc<dyn FlowStore>, backstop: Duration) -> Self {
        let signals = Arc::new(Signals {
            announced: Notify::new(),
            force: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        });
        let tail = Self { fanout, signals };
        actix::spawn(tail.clone().run(store, backstop));
        tail
    }

    /// A notification: events up to `last` are committed.
    pub fn notified(&self, last: i64) {
        if self.fanout.announce(last) {
            self.signals.announced.notify_one();
        }
    }

    /// Read now, whatever is known: notifications may have been lost (e.g. the listener has
    /// just reconnected).
    pub fn wake(&self) {
        self.signals.force.store(true, Ordering::Release);
        self.signals.announced.notify_one();
    }

    /// Reads and skipped ids so far.
    pub fn stats(&self) -> TailStats {
        TailStats {
            reads: self.signals.reads.load(Ordering::Relaxed),
            skipped_ids: self.signals.skipped.load(Ordering::Relaxed),
        }
    }

    async fn run(self, store: Arc<dyn FlowStore>, backstop: Duration) {
        let Some(own) = self.fanout.wake_tail.clone() else {
            warn!("no tail on a fan-out of one node: nothing to read");
            return;
        };
        let mut backstop = tokio::time::interval(backstop.max(Duration::from_millis(10)));
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let read = tokio::select! {
                // Own events wait behind a hole: read at once.
                () = own.notified() => true,
                () = self.signals.announced.notified() => {
                    let target = self.fanout.announced();
                    tokio::time::sleep(NOTIFY_GRACE).await;
                    // Most notifications are this node's own commits, published by the writer
                    // meanwhile: only what is still missing is worth a read.
                    self.signals.force.swap(false, Ordering::AcqRel)
                        || (self.fanout.published_through() < target && self.fanout.wants_read())
                }
                _ = backstop.tick() => true,
            };
            if read {
                self.read(&*store).await;
            }
        }
    }

    /// Reads until the fan-out has published everything it can.
    async fn read(&self, store: &dyn FlowStore) {
        while let Some(read) = self.fanout.begin_read(PAGE as usize) {
            self.signals.reads.fetch_add(1, Ordering::Relaxed);
            match store.events_after(read.after, PAGE).await {
                Ok(rows) => {
                    let finished = self.fanout.finish_read(rows);
                    if finished.skipped > 0 {
                        warn!(
                            skipped = finished.skipped,
                            published_through = self.fanout.published_through(),
                            "event ids below a commit of this node were never committed"
                        );
                        self.signals
                            .skipped
                            .fetch_add(finished.skipped as u64, Ordering::Relaxed);
                    }
                    if !finished.again {
                        return;
                    }
                }
                Err(error) => {
                    self.fanout.read_failed();
                    debug!(%error, "reading other nodes' events failed; trying again later");
                    return;
                }
            }
        }
    }
}
