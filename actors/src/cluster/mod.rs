//! The node actor: this process as a node of the cluster of its database. It registers the
//! node at start, heartbeats every `heartbeat` through the `nodes` table, counts the heartbeats
//! it missed, and marks the node stopped on a graceful shutdown. Other nodes (and operators)
//! judge it `down` once its heartbeat is older than the node timeout.
//!
//! This is the foundation of cluster mode; ownership, fencing and takeover build on these rows
//! (docs/cluster.md). [`Cluster`] is the handle callers hold.

mod handle;
pub mod messages;
pub mod status;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::store::StoreError;
use crate::supervisor::{ReconcileOwnership, RecoverFlows};
pub use handle::{Cluster, NodeView};
pub use messages::{AttachRuntime, GetNodeStats, NodeStats, StopNode};
pub use status::{NodeStatus, gone_on_this_host, heartbeat_age, status_of};
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

/// Most flows one claim round takes over; rounds repeat at once until one finds none.
pub const MAX_CLAIM_SHARE: u32 = 500;

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
    /// Where claimed flows and reconciliations go, once the runtime runs.
    runtime: Option<AttachRuntime>,
    /// A claim round is in flight.
    claiming: bool,
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
            runtime: None,
            claiming: false,
        }
    }

    /// Claims one share of the flows of dead nodes and hands them to the supervisor, which
    /// resumes them as boot recovery does; repeats at once until a round finds none.
    /// `gone`: node ids known dead although their heartbeat is recent (see
    /// [`gone_on_this_host`]).
    fn claim(&mut self, gone: Vec<String>, ctx: &mut Context<Self>) {
        if self.claiming || self.stopping || self.stats.displaced || self.runtime.is_none() {
            return;
        }
        self.claiming = true;
        let store = self.store.clone();
        let node_id = self.config.node_id.clone();
        let timeout = self.config.node_timeout;
        let round = async move {
            store
                .claim_flows(&node_id, timeout, &gone, MAX_CLAIM_SHARE)
                .await
        };
        ctx.spawn(round.into_actor(self).map(|claimed, act, ctx| {
            act.claiming = false;
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(error) => {
                    warn!(node_id = %act.config.node_id, %error, "claim round failed");
                    return;
                }
            };
            if claimed.is_empty() {
                return;
            }
            act.stats.claim_rounds += 1;
            act.stats.claimed_flows += claimed.len() as u64;
            info!(
                node_id = %act.config.node_id,
                flows = claimed.len(),
                "took over flows of a dead node"
            );
            let ids = claimed.into_iter().map(|(id, _)| id).collect();
            if let Some(runtime) = &act.runtime {
                runtime.recover.do_send(RecoverFlows::claimed(ids));
            }
            // At once, not at the next heartbeat: a share is the orphans divided by the live
            // nodes, so it shrinks as the survivors claim; waiting a heartbeat per round would
            // leave the last orphans halving for seconds. The round that finds none ends it.
            act.claim(Vec::new(), ctx);
        }));
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
                .map(|written, act, ctx| act.heartbeat_done(written, ctx)),
        );
    }

    fn heartbeat_done(&mut self, written: Result<bool, StoreError>, ctx: &mut Context<Self>) {
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
                         the cluster reported it down meanwhile and may have taken its \
                         flows over; stopping the actors of those"
                    );
                    if let Some(runtime) = &self.runtime {
                        self.stats.reconciliations += 1;
                        runtime.reconcile.do_send(ReconcileOwnership);
                    }
                }
                self.claim(Vec::new(), ctx);
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

impl Handler<AttachRuntime> for NodeActor {
    type Result = ();

    fn handle(&mut self, runtime: AttachRuntime, ctx: &mut Context<Self>) {
        self.runtime = Some(runtime);
        // At once rather than at the next heartbeat, with the nodes of this host whose
        // process is gone counted dead: a node restarted after a crash resumes what its
        // previous process left as boot recovery always did, without waiting out its lease.
        let store = self.store.clone();
        let node_id = self.config.node_id.clone();
        let nodes = async move { store.list_nodes().await };
        ctx.spawn(nodes.into_actor(self).map(move |nodes, act, ctx| {
            let gone = match nodes {
                Ok(list) => gone_on_this_host(&node_id, std::process::id(), &list.nodes, pid_alive),
                Err(_) => Vec::new(),
            };
            act.claim(gone, ctx);
        }));
    }
}

/// Whether a process with this id runs on this host; `true` when that cannot be told (no
/// `/proc`), so that a node is never judged dead by mistake.
fn pid_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

impl Handler<GetNodeStats> for NodeActor {
    type Result = MessageResult<GetNodeStats>;

    fn handle(&mut self, _: GetNodeStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats)
    }
}
