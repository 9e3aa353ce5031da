//! Flow events: what the event history stores and what the fan-out streams to subscribers.
//!
//! - `order`: the rule that keeps publication in id order, exactly once, when other nodes
//!   commit events too (pure).
//! - [`tail`]: the task that reads other nodes' events from the database for the fan-out.

mod order;
pub mod tail;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::ids::{FlowId, Tenant};
use crate::model::{FlowState, FlowStatus};
use crate::status_reason::{SharedReason, StatusReason};
use order::{Finished, Read, Sequencer};

/// What happened. Together with `status` this tells a watcher everything it needs to redraw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    FlowInitialized,
    FlowStarted,
    PhaseStarted,
    PhaseSucceeded,
    PhaseFailed,
    FlowPaused,
    FlowResumed,
    FlowCompleted,
    FlowFailed,
    FlowCancelled,
    FlowRetried,
    /// A running phase reports partial progress (a fan-out phase, as its children advance).
    PhaseProgress,
    /// A phase's primary handler was unavailable; its fallback runs the attempt.
    PhaseFallback,
    /// The health actor found the flow's actor silent and started a new one from the stored
    /// state (journaled as `missed_ping`); `error` says what it saw.
    FlowRestarted,
}

impl EventKind {
    /// The contract's name for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlowInitialized => "flow_initialized",
            Self::FlowStarted => "flow_started",
            Self::PhaseStarted => "phase_started",
            Self::PhaseSucceeded => "phase_succeeded",
            Self::PhaseFailed => "phase_failed",
            Self::FlowPaused => "flow_paused",
            Self::FlowResumed => "flow_resumed",
            Self::FlowCompleted => "flow_completed",
            Self::FlowFailed => "flow_failed",
            Self::FlowCancelled => "flow_cancelled",
            Self::FlowRetried => "flow_retried",
            Self::PhaseProgress => "phase_progress",
            Self::PhaseFallback => "phase_fallback",
            Self::FlowRestarted => "flow_restarted",
        }
    }

    /// Parses a stored kind.
    pub fn parse(s: &str) -> Option<Self> {
        ALL_KINDS.iter().copied().find(|k| k.as_str() == s)
    }
}

const ALL_KINDS: [EventKind; 14] = [
    EventKind::FlowInitialized,
    EventKind::FlowStarted,
    EventKind::PhaseStarted,
    EventKind::PhaseSucceeded,
    EventKind::PhaseFailed,
    EventKind::FlowPaused,
    EventKind::FlowResumed,
    EventKind::FlowCompleted,
    EventKind::FlowFailed,
    EventKind::FlowCancelled,
    EventKind::FlowRetried,
    EventKind::PhaseProgress,
    EventKind::PhaseFallback,
    EventKind::FlowRestarted,
];

/// One committed transition of one flow. `seq` is gap-free per flow; `id` rises across all flows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowEvent {
    /// Assigned by the persistence actor when the event is committed.
    pub id: i64,
    pub seq: u64,
    pub flow_id: FlowId,
    pub master_flow_id: FlowId,
    pub kind: EventKind,
    pub status: FlowStatus,
    pub current_phase: Option<String>,
    pub next_phase: Option<String>,
    pub progress_percentage: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    /// Why the flow is not progressing once this event's transition committed (every event of
    /// one transition carries the same); absent once the flow is terminal. Set by whoever
    /// commits the transition ([`crate::status_reason::stamp`]) and stored with the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<StatusReason>))]
    pub status_reason: Option<Arc<SharedReason>>,
    /// Scope for tenant streams; not part of the event JSON.
    #[serde(skip)]
    pub client_account_id: String,
    #[serde(skip)]
    pub engagement_id: String,
    /// For `flow_type=` stream filters; not part of the event JSON.
    #[serde(skip)]
    pub flow_type: String,
}

impl FlowEvent {
    /// The reason this event's transition left the flow with, if any.
    pub fn reason(&self) -> Option<&StatusReason> {
        self.status_reason.as_deref().map(|shared| &**shared)
    }

    /// The event for a transition that has just been applied to `flow` (whose `last_seq` it takes).
    pub fn of(flow: &FlowState, kind: EventKind, error: Option<String>) -> Self {
        Self {
            id: 0,
            seq: flow.last_seq,
            flow_id: flow.id,
            master_flow_id: flow.master_flow_id,
            kind,
            status: flow.status,
            current_phase: flow.current_phase.clone(),
            next_phase: flow.next_phase.clone(),
            progress_percentage: flow.progress_percentage,
            error,
            at: flow.updated_at,
            status_reason: None,
            client_account_id: flow.client_account_id.clone(),
            engagement_id: flow.engagement_id.clone(),
            flow_type: flow.flow_type.clone(),
        }
    }
}

/// A committed event as the fan-out carries it: serialized to its JSON once, on first use,
/// however many subscribers send it on.
#[derive(Debug)]
pub struct CommittedEvent {
    event: FlowEvent,
    json: std::sync::OnceLock<String>,
}

impl CommittedEvent {
    /// Wraps a committed event.
    pub fn new(event: FlowEvent) -> Self {
        Self {
            event,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The event's contract JSON, computed by the first subscriber that asks.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(&self.event).unwrap_or_default())
    }
}

impl std::ops::Deref for CommittedEvent {
    type Target = FlowEvent;

    fn deref(&self) -> &FlowEvent {
        &self.event
    }
}

/// Publications (commits; in cluster mode also the tail's pages of other nodes' events) a
/// per-flow or per-tree subscriber may fall behind before it must catch up.
const KEYED_BUFFER: usize = 64;

/// One key's events of one publication (one commit, usually one transition's events), in
/// order: a keyed subscriber is woken once for all of them and hands them to its connection
/// together, so a transition's frames leave in one write instead of racing the publisher.
pub type EventBatch = Arc<[Arc<CommittedEvent>]>;

/// What a keyed subscriber follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// One flow's events.
    Flow(FlowId),
    /// The events of a master flow and of every flow under it.
    Tree(FlowId),
}

/// Recent committed events of one flow or one tree, oldest first, with no gap.
struct Recent {
    events: VecDeque<Arc<CommittedEvent>>,
    /// Every event of the key with an id above this is in `events` (for trees; a flow's
    /// events are contiguous by `seq` from the first one held).
    complete_after_id: i64,
}

/// The fan-out's state, changed only under its lock, so that a subscriber's snapshot of recent
/// events and its live receiver meet exactly: nothing missed, nothing twice.
struct Inner {
    /// Per-flow and per-tree channels, only for keys someone follows.
    keyed: HashMap<Key, broadcast::Sender<EventBatch>>,
    /// Scratch for one publication's batches per followed key (kept to reuse its capacity).
    batching: HashMap<Key, Vec<Arc<CommittedEvent>>>,
    /// The most recent committed events, in commit (and id) order.
    ring: VecDeque<Arc<CommittedEvent>>,
    /// Every committed event with an id above this is in `ring`.
    ring_complete_after_id: i64,
    /// `ring` indexed by flow and by tree.
    by_key: HashMap<Key, Recent>,
    capacity: usize,
    /// Set when other nodes commit events too (cluster mode on PostgreSQL): what keeps
    /// publication in id order across nodes.
    order: Option<Sequencer>,
}

impl Inner {
    fn remember(&mut self, event: &Arc<CommittedEvent>) {
        if self.ring.len() == self.capacity
            && let Some(old) = self.ring.pop_front()
        {
            self.ring_complete_after_id = old.id;
            for key in [Key::Flow(old.flow_id), Key::Tree(old.master_flow_id)] {
                if let Some(recent) = self.by_key.get_mut(&key) {
                    // Eviction is in commit order, so the oldest of the key is this one.
                    if recent.events.front().is_some_and(|e| Arc::ptr_eq(e, &old)) {
                        recent.events.pop_front();
                    }
                    recent.complete_after_id = old.id;
                    if recent.events.is_empty() {
                        self.by_key.remove(&key);
                    }
                }
            }
        }
        self.ring.push_back(event.clone());
        let starts_tree = event.flow_id == event.master_flow_id && event.seq == 1;
        for key in [Key::Flow(event.flow_id), Key::Tree(event.master_flow_id)] {
            self.by_key
                .entry(key)
                .or_insert_with(|| Recent {
                    events: VecDeque::new(),
                    // Earlier events of this key, if any, are older than the whole ring; the
                    // first event of a tree (or a flow) has nothing before it.
                    complete_after_id: if starts_tree
                        || (event.seq == 1 && key == Key::Flow(event.flow_id))
                    {
                        0
                    } else {
                        event.id - 1
                    },
                })
                .events
                .push_back(event.clone());
        }
    }

    /// `key`'s events after the cursor, if memory holds all of them.
    fn recent(&self, key: Key, after: u64) -> Option<Vec<Arc<CommittedEvent>>> {
        let recent = self.by_key.get(&key)?;
        match key {
            Key::Flow(_) => {
                let first = recent.events.front()?.seq;
                (first <= after + 1 || recent.complete_after_id == 0).then(|| {
                    recent
                        .events
                        .iter()
                        .filter(|e| e.seq > after)
                        .cloned()
                        .collect()
                })
            }
            Key::Tree(_) => (recent.complete_after_id <= after as i64).then(|| {
                recent
                    .events
                    .iter()
                    .filter(|e| e.id > after as i64)
                    .cloned()
                    .collect()
            }),
        }
    }
}

/// Fan-out of committed events: to every tenant-wide subscriber, and to the subscribers of the
/// event's flow and of its tree only, so that publishing costs the same however many per-flow
/// streams are open. It also keeps the most recent events in memory, so that a subscriber
/// usually catches up without reading the database. Publishing never waits for subscribers:
/// one that falls behind its bounded buffer learns how many it missed and catches up.
#[derive(Clone)]
pub struct EventFanout {
    sender: broadcast::Sender<Arc<CommittedEvent>>,
    inner: Arc<Mutex<Inner>>,
    /// The highest event id published: acked durable by the writer. The database may already
    /// hold higher ids whose commit is not yet synced; readers of stored events stop here.
    published_through: Arc<AtomicI64>,
    /// Cluster mode: wakes the tail when own events wait for other nodes' (see [`tail`]).
    wake_tail: Option<Arc<tokio::sync::Notify>>,
}

/// A live subscription to one flow or one tree; it unsubscribes when dropped.
pub struct KeyedReceiver {
    receiver: broadcast::Receiver<EventBatch>,
    key: Key,
    inner: Arc<Mutex<Inner>>,
}

impl KeyedReceiver {
    /// The flow's or tree's events of the next commit that had any, in order; `Lagged` when
    /// the buffer overflowed meanwhile.
    pub async fn recv(&mut self) -> Result<EventBatch, broadcast::error::RecvError> {
        self.receiver.recv().await
    }
}

impl Drop for KeyedReceiver {
    fn drop(&mut self) {
        let mut inner = self.inner.lock();
        // Receivers are made under this lock: one left means it is this one.
        if inner
            .keyed
            .get(&self.key)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            inner.keyed.remove(&self.key);
        }
    }
}

impl EventFanout {
    /// A fan-out whose subscribers may fall `capacity` events behind before they lag; it
    /// remembers the last `capacity` events. `last_event_id` is the highest id stored before it
    /// starts: nothing at or below it is in memory.
    pub fn new(capacity: usize) -> Self {
        Self::starting_after(capacity, i64::MAX)
    }

    /// [`EventFanout::new`], for a store whose highest event id is `last_event_id`: every event
    /// published later is remembered, so catch-up after it can be served from memory.
    pub fn starting_after(capacity: usize, last_event_id: i64) -> Self {
        Self::with_order(capacity, last_event_id, None)
    }

    /// [`EventFanout::starting_after`], for a node of a cluster: other nodes commit events
    /// into the same database, and this fan-out publishes theirs and its own, in id order and
    /// once each. Its [`tail`] must run, or own events above another node's stay held.
    pub fn for_cluster(capacity: usize, last_event_id: i64) -> Self {
        Self::with_order(
            capacity,
            last_event_id,
            Some(Arc::new(tokio::sync::Notify::new())),
        )
    }

    fn with_order(
        capacity: usize,
        last_event_id: i64,
        wake_tail: Option<Arc<tokio::sync::Notify>>,
    ) -> Self {
        let capacity = capacity.max(16);
        let (sender, _) = broadcast::channel(capacity);
        Self {
            sender,
            inner: Arc::new(Mutex::new(Inner {
                keyed: HashMap::new(),
                batching: HashMap::new(),
                ring: VecDeque::with_capacity(capacity),
                ring_complete_after_id: last_event_id,
                by_key: HashMap::new(),
                capacity,
                order: wake_tail.is_some().then(|| Sequencer::new(last_event_id)),
            })),
            published_through: Arc::new(AtomicI64::new(last_event_id)),
            wake_tail,
        }
    }

    /// The highest event id published so far (the store's highest at start before any). A
    /// stored event above it is committed but not yet acked, perhaps not yet durable: it must
    /// not reach a client before it is published, or a client could hold an id that a crash
    /// takes back and a later event reuses.
    pub fn published_through(&self) -> i64 {
        self.published_through.load(Ordering::Acquire)
    }

    /// Sends committed events, in commit order, to the tenant-wide subscribers and to those of
    /// each event's flow and tree; each event is serialized at most once for all of them. In
    /// cluster mode (see [`EventFanout::for_cluster`]) these are this node's own events: they go
    /// out at once when nothing is missing below them, else they wait, without blocking the
    /// caller, for the tail to read the other nodes' events below them.
    pub fn publish(&self, events: impl IntoIterator<Item = FlowEvent>) {
        let mut inner = self.inner.lock();
        let Some(order) = inner.order.as_mut() else {
            self.send_locked(&mut inner, events);
            return;
        };
        let own = order.own(events.into_iter().collect());
        self.send_locked(&mut inner, own.publish);
        drop(inner);
        if own.read
            && let Some(wake) = &self.wake_tail
        {
            wake.notify_one();
        }
    }

    /// Publishes `events` (in id order, each above the last published) under the lock.
    /// Keyed subscribers get one batch per key for the whole call.
    fn send_locked(&self, inner: &mut Inner, events: impl IntoIterator<Item = FlowEvent>) {
        for event in events {
            let event = Arc::new(CommittedEvent::new(event));
            self.published_through.store(event.id, Ordering::Release);
            inner.remember(&event);
            for key in [Key::Flow(event.flow_id), Key::Tree(event.master_flow_id)] {
                if inner.keyed.contains_key(&key) {
                    inner.batching.entry(key).or_default().push(event.clone());
                }
            }
            if self.sender.receiver_count() > 0 {
                let _ = self.sender.send(event);
            }
        }
        let Inner {
            keyed, batching, ..
        } = inner;
        for (key, events) in batching.drain() {
            if let Some(sender) = keyed.get(&key) {
                // An error only means its subscribers left meanwhile.
                let _ = sender.send(events.into());
            }
        }
    }

    /// A notification says the database holds events up to `last`: whether a read is wanted.
    pub(crate) fn announce(&self, last: i64) -> bool {
        self.inner
            .lock()
            .order
            .as_mut()
            .is_some_and(|order| order.announce(last))
    }

    /// The highest id a notification announced (the last published without a tail).
    pub(crate) fn announced(&self) -> i64 {
        self.inner
            .lock()
            .order
            .as_ref()
            .map_or_else(|| self.published_through(), Sequencer::announced)
    }

    /// Whether something known to be committed is not yet published.
    pub(crate) fn wants_read(&self) -> bool {
        self.inner
            .lock()
            .order
            .as_ref()
            .is_some_and(Sequencer::wants_read)
    }

    /// Starts a read of the events after the last published, unless one is in flight.
    pub(crate) fn begin_read(&self, limit: usize) -> Option<Read> {
        self.inner.lock().order.as_mut()?.begin_read(limit)
    }

    /// Publishes what the read in flight found, with the own events held behind it.
    pub(crate) fn finish_read(&self, rows: Vec<FlowEvent>) -> Finished {
        let mut inner = self.inner.lock();
        let Some(order) = inner.order.as_mut() else {
            return Finished {
                publish: Vec::new(),
                again: false,
                skipped: 0,
            };
        };
        let mut finished = order.finish_read(rows);
        let publish = std::mem::take(&mut finished.publish);
        self.send_locked(&mut inner, publish);
        finished
    }

    /// The read in flight failed.
    pub(crate) fn read_failed(&self) {
        if let Some(order) = self.inner.lock().order.as_mut() {
            order.read_failed();
        }
    }

    /// A receiver of every event committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommittedEvent>> {
        self.sender.subscribe()
    }

    /// A receiver of every event committed from now on, and the tenant's events after
    /// `after_id` (by event id) if memory still holds all of them: together, every event
    /// after `after_id` once.
    pub fn subscribe_tenant(
        &self,
        tenant: &Tenant,
        after_id: i64,
    ) -> (
        broadcast::Receiver<Arc<CommittedEvent>>,
        Option<Vec<Arc<CommittedEvent>>>,
    ) {
        let inner = self.inner.lock();
        let receiver = self.sender.subscribe();
        (receiver, inner.tenant_recent(tenant, after_id, usize::MAX))
    }

    /// A receiver of `flow_id`'s events committed from now on, and its events after
    /// `after_seq` if memory still holds all of them.
    pub fn subscribe_flow(
        &self,
        flow_id: FlowId,
        after_seq: u64,
    ) -> (KeyedReceiver, Option<Vec<Arc<CommittedEvent>>>) {
        self.subscribe_key(Key::Flow(flow_id), after_seq)
    }

    /// A receiver of the events of `master_flow_id`'s tree committed from now on, and its
    /// events after the id `after_id` if memory still holds all of them.
    pub fn subscribe_tree(
        &self,
        master_flow_id: FlowId,
        after_id: i64,
    ) -> (KeyedReceiver, Option<Vec<Arc<CommittedEvent>>>) {
        self.subscribe_key(Key::Tree(master_flow_id), after_id.max(0) as u64)
    }

    fn subscribe_key(
        &self,
        key: Key,
        after: u64,
    ) -> (KeyedReceiver, Option<Vec<Arc<CommittedEvent>>>) {
        let mut inner = self.inner.lock();
        let receiver = inner
            .keyed
            .entry(key)
            .or_insert_with(|| broadcast::channel(KEYED_BUFFER).0)
            .subscribe();
        let recent = inner.recent(key, after);
        drop(inner);
        (
            KeyedReceiver {
                receiver,
                key,
                inner: self.inner.clone(),
            },
            recent,
        )
    }

    /// `flow_id`'s events after `after_seq`, if memory holds all of them.
    pub fn recent_flow_events(
        &self,
        flow_id: FlowId,
        after_seq: u64,
    ) -> Option<Vec<Arc<CommittedEvent>>> {
        self.inner.lock().recent(Key::Flow(flow_id), after_seq)
    }

    /// The events of `master_flow_id`'s tree after the id `after_id`, if memory holds all.
    pub fn recent_tree_events(
        &self,
        master_flow_id: FlowId,
        after_id: i64,
    ) -> Option<Vec<Arc<CommittedEvent>>> {
        self.inner
            .lock()
            .recent(Key::Tree(master_flow_id), after_id.max(0) as u64)
    }

    /// At most `limit` of the tenant's events after the id `after_id`, if memory holds all.
    pub fn recent_tenant_events(
        &self,
        tenant: &Tenant,
        after_id: i64,
        limit: usize,
    ) -> Option<Vec<Arc<CommittedEvent>>> {
        self.inner.lock().tenant_recent(tenant, after_id, limit)
    }

    /// Any event of `flow_id` still in memory (for its tenant and master, without a read).
    pub fn any_recent_event(&self, flow_id: FlowId) -> Option<Arc<CommittedEvent>> {
        let inner = self.inner.lock();
        inner
            .by_key
            .get(&Key::Flow(flow_id))
            .and_then(|recent| recent.events.back().cloned())
    }

    /// Live subscribers (tenant-wide and per flow or tree), for metrics.
    pub fn subscriber_count(&self) -> usize {
        let keyed: usize = self
            .inner
            .lock()
            .keyed
            .values()
            .map(broadcast::Sender::receiver_count)
            .sum();
        self.sender.receiver_count() + keyed
    }
}

impl Inner {
    fn tenant_recent(
        &self,
        tenant: &Tenant,
        after_id: i64,
        limit: usize,
    ) -> Option<Vec<Arc<CommittedEvent>>> {
        if self.ring_complete_after_id > after_id {
            return None;
        }
        // Ids rise along the ring.
        let start = self.ring.partition_point(|e| e.id <= after_id);
        Some(
            self.ring
                .range(start..)
                .filter(|e| {
                    e.client_account_id == tenant.client_account_id
                        && e.engagement_id == tenant.engagement_id
                })
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, flow_id: FlowId, master_flow_id: FlowId, seq: u64) -> FlowEvent {
        let tenant = Tenant::default_tenant();
        FlowEvent {
            id,
            seq,
            flow_id,
            master_flow_id,
            kind: EventKind::PhaseStarted,
            status: FlowStatus::Running,
            current_phase: None,
            next_phase: None,
            progress_percentage: 0.0,
            error: None,
            at: Utc::now(),
            status_reason: None,
            client_account_id: tenant.client_account_id,
            engagement_id: tenant.engagement_id,
            flow_type: "t".into(),
        }
    }

    #[test]
    fn a_flow_subscriber_gets_only_its_flow_and_a_tree_subscriber_its_tree() {
        let fanout = EventFanout::starting_after(64, 0);
        let (a, b, child) = (FlowId::new(), FlowId::new(), FlowId::new());
        let (mut flow_a, _) = fanout.subscribe_flow(a, 0);
        let (mut tree_a, _) = fanout.subscribe_tree(a, 0);
        fanout.publish([
            event(1, b, b, 1),
            event(2, a, a, 1),
            event(3, child, a, 1),
            event(4, b, b, 2),
        ]);
        let ids = |receiver: &mut KeyedReceiver| {
            std::iter::from_fn(|| receiver.receiver.try_recv().ok())
                .flat_map(|batch| batch.iter().map(|e| e.id).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&mut flow_a), [2]);
        assert_eq!(ids(&mut tree_a), [2, 3]);
        assert_eq!(fanout.subscriber_count(), 2);
        drop((flow_a, tree_a));
        assert_eq!(fanout.subscriber_count(), 0);
        assert!(
            fanout.inner.lock().keyed.is_empty(),
            "no channel outlives its subscribers"
        );
    }

    #[test]
    fn a_keyed_subscriber_gets_one_batch_per_publication() {
        let fanout = EventFanout::starting_after(64, 0);
        let (a, b) = (FlowId::new(), FlowId::new());
        let (mut flow_a, _) = fanout.subscribe_flow(a, 0);
        fanout.publish([event(1, a, a, 1), event(2, b, b, 1), event(3, a, a, 2)]);
        fanout.publish([event(4, a, a, 3)]);
        let batches: Vec<Vec<u64>> = std::iter::from_fn(|| flow_a.receiver.try_recv().ok())
            .map(|batch| batch.iter().map(|e| e.seq).collect())
            .collect();
        assert_eq!(
            batches,
            [vec![1, 2], vec![3]],
            "one wake per commit, in order"
        );
    }

    #[test]
    fn catch_up_comes_from_memory_only_while_it_holds_everything_after_the_cursor() {
        let fanout = EventFanout::starting_after(16, 0);
        let (a, b) = (FlowId::new(), FlowId::new());
        fanout.publish([event(1, a, a, 1), event(2, a, a, 2)]);
        let seqs = |events: Option<Vec<Arc<CommittedEvent>>>| {
            events.map(|events| events.iter().map(|e| e.seq).collect::<Vec<_>>())
        };
        assert_eq!(seqs(fanout.recent_flow_events(a, 0)), Some(vec![1, 2]));
        assert_eq!(seqs(fanout.subscribe_flow(a, 1).1), Some(vec![2]));
        assert_eq!(seqs(fanout.recent_tree_events(a, 0)), Some(vec![1, 2]));
        // 15 events of another flow push `a`'s first event out of memory.
        fanout.publish((3..=17).map(|id| event(id, b, b, id as u64 - 2)));
        assert!(fanout.recent_flow_events(a, 0).is_none(), "seq 1 is gone");
        assert!(fanout.recent_tree_events(a, 0).is_none());
        assert_eq!(seqs(fanout.recent_flow_events(a, 1)), Some(vec![2]));
        assert_eq!(seqs(fanout.recent_tree_events(a, 1)), Some(vec![2]));
        assert_eq!(
            seqs(fanout.recent_flow_events(b, 0)).map(|s| s.len()),
            Some(15)
        );
        let tenant = Tenant::default_tenant();
        assert!(fanout.recent_tenant_events(&tenant, 0, 100).is_none());
        let recent = fanout.recent_tenant_events(&tenant, 1, 100).unwrap();
        assert_eq!(recent.first().map(|e| e.id), Some(2));
        assert_eq!(recent.len(), 16);
    }

    #[test]
    fn a_cluster_fanout_holds_own_events_until_the_other_nodes_below_them_are_read() {
        let fanout = EventFanout::for_cluster(64, 10);
        let mut all = fanout.subscribe();
        let (own, other) = (FlowId::new(), FlowId::new());
        // Another node committed 11 and 12 first.
        fanout.publish([event(13, own, own, 1)]);
        assert!(all.try_recv().is_err(), "held behind 11..=12");
        assert_eq!(fanout.published_through(), 10, "catch-up stops below 11");
        let read = fanout.begin_read(100).expect("a read");
        assert_eq!(read.after, 10);
        let finished = fanout.finish_read(vec![
            event(11, other, other, 1),
            event(12, other, other, 2),
            event(13, own, own, 1),
        ]);
        assert!(!finished.again);
        let ids: Vec<i64> = std::iter::from_fn(|| all.try_recv().ok())
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [11, 12, 13], "in id order, each once");
        assert_eq!(fanout.published_through(), 13);
        assert_eq!(
            fanout.recent_flow_events(other, 0).map(|e| e.len()),
            Some(2),
            "memory holds the other node's events too"
        );
    }

    #[test]
    fn a_single_node_fanout_publishes_its_events_as_they_come() {
        let fanout = EventFanout::starting_after(64, 10);
        let mut all = fanout.subscribe();
        let a = FlowId::new();
        // A refused write's ids never commit: nothing waits for them.
        fanout.publish([event(13, a, a, 1)]);
        assert_eq!(all.try_recv().map(|e| e.id).ok(), Some(13));
        assert!(fanout.begin_read(100).is_none(), "no tail on one node");
    }
}
