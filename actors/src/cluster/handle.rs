//! [`Cluster`]: the handle on this node's membership that the application and HTTP handlers
//! hold; it starts the node actor and reads the node list.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};
use uuid::Uuid;

use super::{
    ClusterError, FORGET_AFTER, GetNodeStats, NodeActor, NodeConfig, NodeRecord, NodeRegistration,
    NodeStats, NodeStatus, NodeStore, StopNode, heartbeat_age, status_of,
};

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

    /// Hands this node's takeover to the running runtime: flows claimed from dead nodes are
    /// resumed by `recover` (as at boot), and after a silence past the node timeout
    /// `reconcile` stops the actors of flows other nodes took over. The first claim round
    /// runs at once.
    pub fn attach(
        &self,
        recover: Recipient<crate::supervisor::RecoverFlows>,
        reconcile: Recipient<crate::supervisor::ReconcileOwnership>,
    ) {
        self.node
            .do_send(super::AttachRuntime { recover, reconcile });
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
    use std::time::Instant;

    use super::*;
    use crate::cluster::MemoryNodes;

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
