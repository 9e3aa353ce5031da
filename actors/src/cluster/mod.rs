//! The node actor: this process as a node of the cluster of its database. It registers the
//! node at start, heartbeats every `heartbeat` through the `nodes` table, counts the heartbeats
//! it missed, and marks the node stopped on a graceful shutdown. Other nodes (and operators)
//! judge it `down` once its heartbeat is older than the node timeout.
//!
//! This is the foundation of cluster mode; ownership, fencing and takeover build on these rows
//! (docs/cluster.md). [`Cluster`] is the handle callers hold.

pub mod messages;
pub mod status;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::store::StoreError;
pub use messages::{GetNodeStats, NodeStats, StopNode};
pub use status::{NodeStatus, heartbeat_age, status_of};
pub use store::{MemoryNodes, NodeList, NodeRecord, NodeRegistration, NodeStore};

/// Rows silent for this long (or for ten node timeouts, if longer) are deleted when a node
/// starts: long enough to see how yesterday's processes ended, short enough that a database
/// with many restarts does not list them all.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Why a cluster request failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `nodes` table could not be read or written: see the store error.
    #[error("nodes table: {0}")]
    Store(#[from] StoreError),
    /// The node actor is gone (its system is shutting down).
    #[error("the node actor has stopped")]
    Stopped,
}

/// How this node takes part in the cluster.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    /// Shown to operators as where this node's API is reached; routing will use it.
    pub advertise: Option<String>,
    pub heartbeat: Duration,
    /// Silence after which a node is reported `down`.
    pub node_timeout: Duration,
}

/// Heartbeats this node's row.
pub struct NodeActor {
    config: NodeConfig,
    incarnation: Uuid,
    store: Arc<dyn NodeStore>,
    stats: NodeStats,
    /// A heartbeat write is in flight: the next tick does not start another.
    writing: bool,
    /// Heartbeat writes failed since the last one that succeeded.
    failures_in_a_row: u64,
    stopping: bool,
    last_tick: Instant,
    last_written: Instant,
}

impl NodeActor {
    fn new(config: NodeConfig, incarnation: Uuid, store: Arc<dyn NodeStore>) -> Self {
        let now = Instant::now();
        Self {
            config,
            incarnation,
            store,
            stats: NodeStats::default(),
            writing: false,
            failures_in_a_row: 0,
            stopping: false,
            last_tick: now,
            last_written: now,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let since_tick = now.duration_since(self.last_tick);
        self.last_tick = now;
        // Whole periods in which the timer did not fire at all: the thread or the whole
        // process was held up (SIGSTOP, a starved machine). Each is a heartbeat nobody wrote.
        let periods = since_tick.as_millis() / self.config.heartbeat.as_millis().max(1);
        if periods >= 2 {
            self.stats.missed_heartbeats += u64::try_from(periods - 1).unwrap_or(u64::MAX);
        }
        if self.stopping || self.stats.displaced {
            return;
        }
        if self.writing {
            // The previous write has not come back within a whole period.
            self.stats.missed_heartbeats += 1;
            return;
        }
        self.writing = true;
        let store = self.store.clone();
        let node_id = self.config.node_id.clone();
        let incarnation = self.incarnation;
        let (heartbeats, missed) = (self.stats.heartbeats + 1, self.stats.missed_heartbeats);
        let write = async move {
            store
                .heartbeat_node(&node_id, incarnation, heartbeats, missed)
                .await
        };
        ctx.spawn(
            write
                .into_actor(self)
                .map(|written, act, _| act.heartbeat_done(written)),
        );
    }

    fn heartbeat_done(&mut self, written: Result<bool, StoreError>) {
        self.writing = false;
        let node_id = &self.config.node_id;
        match written {
            Ok(true) => {
                self.failures_in_a_row = 0;
                let now = Instant::now();
                let silence = now.duration_since(self.last_written);
                self.last_written = now;
                self.stats.heartbeats += 1;
                let silence_ms = u64::try_from(silence.as_millis()).unwrap_or(u64::MAX);
                self.stats.longest_silence_ms = self.stats.longest_silence_ms.max(silence_ms);
                if silence > self.config.node_timeout {
                    warn!(
                        node_id = %node_id,
                        silence_ms,
                        timeout_ms = self.config.node_timeout.as_millis() as u64,
                        "this node wrote no heartbeat for longer than the node timeout: \
                         the cluster reported it down meanwhile"
                    );
                }
            }
            Ok(false) => {
                self.stats.displaced = true;
                error!(
                    node_id = %node_id,
                    "another process registered this node id: this one stops heartbeating; \
                     give every process its own [cluster] node_id"
                );
            }
            Err(error) => {
                self.stats.missed_heartbeats += 1;
                self.failures_in_a_row += 1;
                // Every second during an outage would drown the log: the 1st, 2nd, 4th, 8th …
                if self.failures_in_a_row.is_power_of_two() {
                    warn!(
                        node_id = %node_id,
                        %error,
                        failures_in_a_row = self.failures_in_a_row,
                        "heartbeat not written"
                    );
                }
            }
        }
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.heartbeat, |act, ctx| act.tick(ctx));
    }
}

impl Handler<StopNode> for NodeActor {
    type Result = ResponseActFuture<Self, Result<(), ClusterError>>;

    fn handle(&mut self, _: StopNode, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let store = self.store.clone();
        let node_id = self.config.node_id.clone();
        let incarnation = self.incarnation;
        let stop = async move { store.stop_node(&node_id, incarnation).await };
        // The actor stays alive (idle) so that its counters can still be read; `stopping`
        // ends the heartbeats.
        Box::pin(stop.into_actor(self).map(|stopped, act, _| {
            match &stopped {
                Ok(()) => info!(node_id = %act.config.node_id, "node marked stopped"),
                Err(error) => {
                    warn!(node_id = %act.config.node_id, %error, "node not marked stopped")
                }
            }
            stopped.map_err(ClusterError::from)
        }))
    }
}

impl Handler<GetNodeStats> for NodeActor {
    type Result = MessageResult<GetNodeStats>;

    fn handle(&mut self, _: GetNodeStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats)
    }
}

/// A node of the cluster as callers see it: its row and the status derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub record: NodeRecord,
    pub status: NodeStatus,
    /// How long ago its last heartbeat was, by the database's clock.
    pub heartbeat_age: Duration,
}

/// The handle on this node's membership: what HTTP handlers and the application hold.
#[derive(Clone)]
pub struct Cluster {
    node: Addr<NodeActor>,
    store: Arc<dyn NodeStore>,
    config: Arc<NodeConfig>,
}

impl Cluster {
    /// Registers this node (taking over the row of an earlier process with the same id), forgets
    /// rows silent for longer than [`FORGET_AFTER`], and starts heartbeating on a thread of its
    /// own, so that busy flow actors never delay a heartbeat. Must be called inside an actix
    /// `System`. Fails when the row cannot be written: a node that cannot say it is alive must
    /// not start.
    pub async fn join(config: NodeConfig, store: Arc<dyn NodeStore>) -> Result<Self, ClusterError> {
        let forget_after = FORGET_AFTER.max(config.node_timeout * 10);
        if let Ok(forget_after) = chrono::Duration::from_std(forget_after) {
            store.forget_nodes(forget_after).await?;
        }
        let before = store.list_nodes().await?;
        if let Some(earlier) = before.nodes.iter().find(|n| n.node_id == config.node_id)
            && status_of(earlier, before.observed_at, config.node_timeout) == NodeStatus::Up
        {
            warn!(
                node_id = %config.node_id,
                heartbeat_age_ms = heartbeat_age(earlier, before.observed_at).as_millis() as u64,
                "this node id heartbeat within the node timeout: taking its row over (a restart \
                 after a crash, or another process with the same [cluster] node_id?)"
            );
        }
        let incarnation = Uuid::new_v4();
        store
            .register_node(&NodeRegistration {
                node_id: config.node_id.clone(),
                advertise: config.advertise.clone(),
                incarnation,
            })
            .await?;
        info!(
            node_id = %config.node_id,
            heartbeat_ms = config.heartbeat.as_millis() as u64,
            node_timeout_ms = config.node_timeout.as_millis() as u64,
            "node joined the cluster"
        );
        let node = {
            let config = config.clone();
            let store = store.clone();
            NodeActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                NodeActor::new(config, incarnation, store)
            })
        };
        Ok(Self {
            node,
            store,
            config: Arc::new(config),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The silence after which this node reports another one `down`.
    pub fn node_timeout(&self) -> Duration {
        self.config.node_timeout
    }

    /// Every known node with its status, ordered by node id.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClusterError> {
        let list = self.store.list_nodes().await?;
        Ok(list
            .nodes
            .into_iter()
            .map(|record| NodeView {
                status: status_of(&record, list.observed_at, self.config.node_timeout),
                heartbeat_age: heartbeat_age(&record, list.observed_at),
                record,
            })
            .collect())
    }

    /// This node's heartbeat counters.
    pub async fn stats(&self) -> Result<NodeStats, ClusterError> {
        self.node
            .send(GetNodeStats)
            .await
            .map_err(|_| ClusterError::Stopped)
    }

    /// Leaves the cluster gracefully: the row is marked stopped, heartbeats end.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.node
            .send(StopNode)
            .await
            .map_err(|_| ClusterError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_id: &str) -> NodeConfig {
        NodeConfig {
            node_id: node_id.into(),
            advertise: Some("127.0.0.1:1".into()),
            heartbeat: Duration::from_millis(20),
            node_timeout: Duration::from_millis(200),
        }
    }

    async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[actix::test]
    async fn a_node_heartbeats_leaves_and_is_displaced_by_its_namesake() {
        let store = Arc::new(MemoryNodes::new());
        let a = Cluster::join(config("a"), store.clone())
            .await
            .expect("join");
        let b = Cluster::join(config("b"), store.clone())
            .await
            .expect("join");
        until("three heartbeats of a", async || {
            a.stats().await.expect("stats").heartbeats >= 3
        })
        .await;
        let nodes = a.nodes().await.expect("nodes");
        assert_eq!(nodes.len(), 2);
        assert!(
            nodes.iter().all(|n| n.status == NodeStatus::Up),
            "{nodes:?}"
        );
        assert!(nodes[0].record.heartbeats >= 2, "{nodes:?}");
        assert_eq!(nodes[0].record.advertise.as_deref(), Some("127.0.0.1:1"));

        // A graceful stop is `stopped`, never `down`, however long ago it was.
        b.leave().await.expect("leave");
        let nodes = a.nodes().await.expect("nodes");
        assert_eq!(nodes[1].status, NodeStatus::Stopped);
        let after_leave = b.stats().await.expect("stats").heartbeats;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            b.stats().await.expect("stats").heartbeats <= after_leave + 1,
            "no heartbeats after leaving (one may have been in flight)"
        );
        assert_eq!(
            a.nodes().await.expect("nodes")[1].status,
            NodeStatus::Stopped
        );

        // A second process with a's id takes the row over; the first learns it at its next
        // heartbeat and stops writing.
        let a2 = Cluster::join(config("a"), store.clone())
            .await
            .expect("join");
        until("a displaced", async || {
            a.stats().await.expect("stats").displaced
        })
        .await;
        let written = a.stats().await.expect("stats").heartbeats;
        until("a2 heartbeats", async || {
            a2.stats().await.expect("stats").heartbeats >= 3
        })
        .await;
        assert_eq!(a.stats().await.expect("stats").heartbeats, written);
        assert_eq!(a2.nodes().await.expect("nodes")[0].status, NodeStatus::Up);
    }

    #[actix::test]
    async fn a_silent_node_turns_down_after_the_timeout() {
        let store = Arc::new(MemoryNodes::new());
        let a = Cluster::join(config("a"), store.clone())
            .await
            .expect("join");
        // A row nobody heartbeats: a crashed process.
        store
            .register_node(&NodeRegistration {
                node_id: "crashed".into(),
                advertise: None,
                incarnation: Uuid::new_v4(),
            })
            .await
            .expect("register");
        until("crashed down", async || {
            let nodes = a.nodes().await.expect("nodes");
            nodes[1].status == NodeStatus::Down && nodes[0].status == NodeStatus::Up
        })
        .await;
        assert!(a.nodes().await.expect("nodes")[1].heartbeat_age > Duration::from_millis(200));
        // Forgetting spares what heartbeats.
        assert_eq!(
            store
                .forget_nodes(chrono::Duration::milliseconds(150))
                .await
                .expect("forget"),
            1
        );
        assert_eq!(a.nodes().await.expect("nodes").len(), 1);
    }
}
