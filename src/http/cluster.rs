//! The cluster as the operator sees it: `GET /v1/cluster/nodes`, and the node gauges that
//! `/metrics` adds to the runtime's.

use std::fmt::Write as _;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use flowd_actors::cluster::{Cluster, ClusterError, NodeStatus, NodeView};
use flowd_actors::error::RuntimeError;
use serde::Serialize;
use tracing::instrument;

use crate::http::auth::Caller;
use crate::http::errors::{ApiError, Problem};

/// Every node of the cluster this server belongs to.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeList {
    /// The node that answered.
    pub this_node: String,
    /// Silence after which a node is `down`, as the answering node judges it.
    pub node_timeout_ms: u64,
    pub nodes: Vec<NodeEntry>,
}

/// One node.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeEntry {
    pub node_id: String,
    /// `up` (heartbeating), `down` (silent past the node timeout without a goodbye: crashed,
    /// killed, paused or cut off) or `stopped` (shut down gracefully).
    #[schema(example = "up")]
    pub status: &'static str,
    /// Where the node's API is reached, when it was configured (`[cluster] advertise`).
    pub advertise: Option<String>,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// Milliseconds since the last heartbeat, by the database's clock.
    pub heartbeat_age_ms: u64,
    pub stopped_at: Option<DateTime<Utc>>,
    pub heartbeats: u64,
    /// Heartbeats the node knows it missed (a failed or late write, a paused process).
    pub missed_heartbeats: u64,
}

impl From<NodeView> for NodeEntry {
    fn from(node: NodeView) -> Self {
        let record = node.record;
        Self {
            node_id: record.node_id,
            status: node.status.as_str(),
            advertise: record.advertise,
            started_at: record.started_at,
            last_heartbeat_at: record.heartbeat_at,
            heartbeat_age_ms: u64::try_from(node.heartbeat_age.as_millis()).unwrap_or(u64::MAX),
            stopped_at: record.stopped_at,
            heartbeats: record.heartbeats,
            missed_heartbeats: record.missed_heartbeats,
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(error: ClusterError) -> Self {
        match error {
            ClusterError::Store(error) => RuntimeError::from(error).into(),
            ClusterError::Stopped => ApiError::unavailable(error.to_string()),
        }
    }
}

/// The nodes of this server's cluster (admin keys only): every node that registered in the
/// database, with its status and heartbeats. On SQLite that is this one node, and earlier
/// processes on the same file as `stopped` or `down`.
#[utoipa::path(get, path = "/v1/cluster/nodes", tag = "cluster",
    responses((status = 200, body = NodeList, description = "every node, ordered by node id"), (status = 401, body = Problem, description = "no or an unknown key"), (status = 403, body = Problem, description = "not an admin key"), (status = 503, body = Problem, description = "the database does not answer")))]
#[instrument(skip_all)]
pub async fn nodes(cluster: web::Data<Cluster>, caller: Caller) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::forbidden(
            "/v1/cluster/nodes needs an admin key: the cluster is the operator's",
        ));
    }
    let nodes = cluster.nodes().await?;
    Ok(HttpResponse::Ok().json(NodeList {
        this_node: cluster.node_id().to_owned(),
        node_timeout_ms: u64::try_from(cluster.node_timeout().as_millis()).unwrap_or(u64::MAX),
        nodes: nodes.into_iter().map(NodeEntry::from).collect(),
    }))
}

/// The cluster's Prometheus families, computed at scrape time from the `nodes` table and this
/// node's counters: `flowd_cluster_nodes{status}` (every status present, zero included) and
/// `flowd_cluster_heartbeats_missed_total`. Kept out of the runtime's metrics registry so the
/// cluster adds families without touching it; when the database does not answer, the node
/// gauges are left out (as the runtime does with flow counts) rather than failing the scrape.
pub async fn render_metrics(cluster: &Cluster) -> String {
    let mut out = String::new();
    match cluster.nodes().await {
        Ok(nodes) => {
            out.push_str(
                "# HELP flowd_cluster_nodes Nodes of this server's cluster, by status.\n\
                 # TYPE flowd_cluster_nodes gauge\n",
            );
            for status in NodeStatus::ALL {
                let count = nodes.iter().filter(|n| n.status == status).count();
                let _ = writeln!(
                    out,
                    "flowd_cluster_nodes{{status=\"{}\"}} {count}",
                    status.as_str()
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cluster nodes left out of the metrics"),
    }
    if let Ok(stats) = cluster.stats().await {
        let _ = writeln!(
            out,
            "# HELP flowd_cluster_heartbeats_missed_total Heartbeats this node missed.\n\
             # TYPE flowd_cluster_heartbeats_missed_total counter\n\
             flowd_cluster_heartbeats_missed_total {}\n\
             # HELP flowd_cluster_claimed_flows_total Flows this node took over from dead nodes.\n\
             # TYPE flowd_cluster_claimed_flows_total counter\n\
             flowd_cluster_claimed_flows_total {}\n\
             # HELP flowd_cluster_claim_rounds_total Claim rounds that took over flows.\n\
             # TYPE flowd_cluster_claim_rounds_total counter\n\
             flowd_cluster_claim_rounds_total {}\n\
             # HELP flowd_cluster_reconciliations_total Returns from a silence past the node \
             timeout that stopped the actors of flows taken over.\n\
             # TYPE flowd_cluster_reconciliations_total counter\n\
             flowd_cluster_reconciliations_total {}",
            stats.missed_heartbeats, stats.claimed_flows, stats.claim_rounds, stats.reconciliations
        );
    }
    out
}

/// The families of controls routed between nodes (docs/cluster.md, 2.6); empty without a
/// cluster.
pub fn render_control_metrics(stats: Option<flowd_actors::controls::ControlStats>) -> String {
    let Some(stats) = stats else {
        return String::new();
    };
    format!(
        "# HELP flowd_cluster_controls_sent_total Controls of flows another node owns, sent to \
         their owner.\n\
         # TYPE flowd_cluster_controls_sent_total counter\n\
         flowd_cluster_controls_sent_total {}\n\
         # HELP flowd_cluster_controls_unanswered_total Controls sent to another node and \
         answered 503: no reply within cluster.control_timeout_ms.\n\
         # TYPE flowd_cluster_controls_unanswered_total counter\n\
         flowd_cluster_controls_unanswered_total {}\n\
         # HELP flowd_cluster_controls_applied_total Controls other nodes sent that this node \
         applied as the owner.\n\
         # TYPE flowd_cluster_controls_applied_total counter\n\
         flowd_cluster_controls_applied_total {}\n",
        stats.sent, stats.unanswered, stats.applied
    )
}

/// `exposition` with `families` added: before a closing `# EOF` (OpenMetrics) when there is
/// one, else at the end.
pub fn with_families(exposition: String, families: &str) -> String {
    match exposition.strip_suffix("# EOF\n") {
        Some(body) => format!("{body}{families}# EOF\n"),
        None => {
            let mut text = exposition;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(families);
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_families;

    #[test]
    fn families_go_before_an_openmetrics_eof_or_at_the_end() {
        assert_eq!(
            with_families("a 1\n# EOF\n".into(), "b 2\n"),
            "a 1\nb 2\n# EOF\n"
        );
        assert_eq!(with_families("a 1\n".into(), "b 2\n"), "a 1\nb 2\n");
        assert_eq!(with_families("a 1".into(), "b 2\n"), "a 1\nb 2\n");
    }
}
