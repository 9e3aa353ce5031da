//! What the node actor needs from a database: the `nodes` table, and nothing else.
//!
//! Kept apart from [`crate::store::FlowStore`] on purpose: a node row is not flow state (no
//! event ids, no fences, no ordering against transitions), so it does not go through the
//! persistence actor. See [`NodeStore`] for why.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use uuid::Uuid;

use crate::ids::FlowId;
use crate::store::StoreError;

/// A node as it registers at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRegistration {
    pub node_id: String,
    /// Where this node's API can be reached, as configured; `None` when not configured.
    pub advertise: Option<String>,
    /// New at every start, so a heartbeat can tell whether its row is still its own.
    pub incarnation: Uuid,
}

/// One row of the `nodes` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    pub advertise: Option<String>,
    pub started_at: DateTime<Utc>,
    /// The last heartbeat, by the database's clock.
    pub heartbeat_at: DateTime<Utc>,
    /// Set by a graceful stop; a crashed node never sets it.
    pub stopped_at: Option<DateTime<Utc>>,
    pub heartbeats: u64,
    /// Heartbeats the node itself knows it missed (a write failed, or its timer fired late).
    pub missed_heartbeats: u64,
}

/// Every node row, and the database's clock when they were read: statuses are judged against
/// that clock, the one that wrote the heartbeats, never against the reader's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeList {
    pub observed_at: DateTime<Utc>,
    pub nodes: Vec<NodeRecord>,
}

/// The `nodes` table.
///
/// These writes bypass the persistence actor, the runtime's only writer of flow state, and
/// that is deliberate. (1) A heartbeat measures whether the node is alive; queued behind a
/// group-commit backlog it would arrive late exactly when the node is busiest, and a loaded
/// node would be reported down (Hatchet's workers went "inactive" under load for this reason).
/// (2) The row belongs to this node alone and is written by no flow transition, so it cannot
/// break the persistence actor's invariants (acked and published only after commit, event ids
/// in commit order, per-flow fences). (3) Each write is one single-row statement in its own
/// transaction. Safety in the coming ownership design never rests on heartbeat timing: every
/// flow write is fenced by its owner's epoch (docs/cluster.md).
pub trait NodeStore: Send + Sync + 'static {
    /// Inserts this node's row, or takes over the row of an earlier process with the same id:
    /// started and heartbeating now, not stopped, counters at zero, the new incarnation.
    fn register_node<'a>(
        &'a self,
        node: &'a NodeRegistration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Sets the row's heartbeat to now and its counters, if the row still holds
    /// `incarnation`. `Ok(false)`: another process registered this node id since.
    fn heartbeat_node<'a>(
        &'a self,
        node_id: &'a str,
        incarnation: Uuid,
        heartbeats: u64,
        missed: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Marks the row stopped (a graceful shutdown), if it still holds `incarnation`.
    fn stop_node<'a>(
        &'a self,
        node_id: &'a str,
        incarnation: Uuid,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes rows whose last heartbeat is older than `silent_for` (long stopped or long
    /// dead), so a database that saw many restarts does not list them forever.
    fn forget_nodes(&self, silent_for: chrono::Duration) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Every node row, ordered by node id, with the database's clock.
    fn list_nodes(&self) -> BoxFuture<'_, Result<NodeList, StoreError>>;

    /// One claim round of the takeover (docs/cluster.md, 2.3): makes `node_id` the owner of
    /// at most one share of the active flows whose owner is not a live node (its heartbeat
    /// older than `node_timeout`, stopped, or named in `gone`: known dead), bumping each
    /// flow's epoch in the same statement, so that any late write of the old owner is fenced
    /// off from that moment. The share is the orphans divided among the live nodes, at most
    /// `max_share`; rows another node is claiming at the same moment are skipped, not waited
    /// for. Returns the claimed flows with their new epochs. A store without a cluster claims
    /// nothing.
    fn claim_flows<'a>(
        &'a self,
        node_id: &'a str,
        node_timeout: std::time::Duration,
        gone: &'a [String],
        max_share: u32,
    ) -> BoxFuture<'a, Result<Vec<(FlowId, u64)>, StoreError>> {
        let _ = (node_id, node_timeout, gone, max_share);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The `nodes` table in memory, for actor tests and embedding programs without a database.
#[derive(Default)]
pub struct MemoryNodes {
    rows: Mutex<Vec<(NodeRecord, Uuid)>>,
}

impl MemoryNodes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
}

impl NodeStore for MemoryNodes {
    fn register_node<'a>(
        &'a self,
        node: &'a NodeRegistration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = Utc::now();
        let record = NodeRecord {
            node_id: node.node_id.clone(),
            advertise: node.advertise.clone(),
            started_at: now,
            heartbeat_at: now,
            stopped_at: None,
            heartbeats: 0,
            missed_heartbeats: 0,
        };
        let mut rows = self.rows.lock();
        rows.retain(|(row, _)| row.node_id != node.node_id);
        rows.push((record, node.incarnation));
        rows.sort_by(|a, b| a.0.node_id.cmp(&b.0.node_id));
        Box::pin(async { Ok(()) })
    }

    fn heartbeat_node<'a>(
        &'a self,
        node_id: &'a str,
        incarnation: Uuid,
        heartbeats: u64,
        missed: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut rows = self.rows.lock();
        let row = rows
            .iter_mut()
            .find(|(row, owner)| row.node_id == node_id && *owner == incarnation);
        let found = row.is_some();
        if let Some((row, _)) = row {
            row.heartbeat_at = Utc::now();
            row.heartbeats = heartbeats;
            row.missed_heartbeats = missed;
        }
        Box::pin(async move { Ok(found) })
    }

    fn stop_node<'a>(
        &'a self,
        node_id: &'a str,
        incarnation: Uuid,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut rows = self.rows.lock();
        if let Some((row, _)) = rows
            .iter_mut()
            .find(|(row, owner)| row.node_id == node_id && *owner == incarnation)
        {
            row.stopped_at = Some(Utc::now());
        }
        Box::pin(async { Ok(()) })
    }

    fn forget_nodes(&self, silent_for: chrono::Duration) -> BoxFuture<'_, Result<u64, StoreError>> {
        let cutoff = Utc::now() - silent_for;
        let mut rows = self.rows.lock();
        let before = rows.len();
        rows.retain(|(row, _)| row.heartbeat_at >= cutoff);
        let forgotten = (before - rows.len()) as u64;
        Box::pin(async move { Ok(forgotten) })
    }

    fn list_nodes(&self) -> BoxFuture<'_, Result<NodeList, StoreError>> {
        let list = NodeList {
            observed_at: Utc::now(),
            nodes: self
                .rows
                .lock()
                .iter()
                .map(|(row, _)| row.clone())
                .collect(),
        };
        Box::pin(async { Ok(list) })
    }
}
