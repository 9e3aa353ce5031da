//! A node's status, derived from its row and the database's clock: pure, so the rule that the
//! API, the metrics and (next) takeover share is stated and tested once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::store::NodeRecord;

/// What the cluster knows of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heartbeating within the node timeout.
    Up,
    /// Silent for longer than the node timeout without having said goodbye: crashed, killed,
    /// paused or cut off from the database.
    Down,
    /// Stopped gracefully.
    Stopped,
}

impl NodeStatus {
    /// Every status, in the order metrics list them.
    pub const ALL: [NodeStatus; 3] = [NodeStatus::Up, NodeStatus::Down, NodeStatus::Stopped];

    /// The status as the API and metric labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
            NodeStatus::Stopped => "stopped",
        }
    }
}

/// How long ago `node` last heartbeat, by the database's clock at `observed_at`; zero when
/// the heartbeat is newer than the observation (the row was written after the clock was read).
pub fn heartbeat_age(node: &NodeRecord, observed_at: DateTime<Utc>) -> Duration {
    (observed_at - node.heartbeat_at)
        .to_std()
        .unwrap_or_default()
}

/// `stopped` once a node said goodbye; else `down` when its last heartbeat is older than
/// `timeout`, `up` otherwise. Exactly `timeout` old is still `up`.
pub fn status_of(node: &NodeRecord, observed_at: DateTime<Utc>, timeout: Duration) -> NodeStatus {
    if node.stopped_at.is_some() {
        NodeStatus::Stopped
    } else if heartbeat_age(node, observed_at) > timeout {
        NodeStatus::Down
    } else {
        NodeStatus::Up
    }
}

/// The nodes of this host whose process is gone: with default node ids (`HOST-PID`), this
/// node's own id names its host and process, and another id of the same host whose process
/// does not run (`pid_alive`) is a dead node whatever its last heartbeat says. Used once, at
/// boot: a process restarted after a crash takes over what its predecessor left at once.
/// Empty for configured node ids, which say nothing of hosts or processes.
pub fn gone_on_this_host(
    me: &str,
    my_pid: u32,
    nodes: &[NodeRecord],
    pid_alive: impl Fn(u32) -> bool,
) -> Vec<String> {
    let Some(host) = me.strip_suffix(&format!("-{my_pid}")) else {
        return Vec::new();
    };
    nodes
        .iter()
        .filter(|node| node.stopped_at.is_none())
        .filter_map(|node| {
            let pid: u32 = node
                .node_id
                .strip_prefix(host)?
                .strip_prefix('-')?
                .parse()
                .ok()?;
            (pid != my_pid && !pid_alive(pid)).then(|| node.node_id.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(heartbeat_at: DateTime<Utc>, stopped: bool) -> NodeRecord {
        NodeRecord {
            node_id: "a".into(),
            advertise: None,
            started_at: heartbeat_at,
            heartbeat_at,
            stopped_at: stopped.then_some(heartbeat_at),
            heartbeats: 1,
            missed_heartbeats: 0,
        }
    }

    #[test]
    fn only_default_ids_of_this_host_whose_process_is_gone_are_dead() {
        let now = Utc::now();
        let named = |id: &str, stopped: bool| NodeRecord {
            node_id: id.into(),
            ..node(now, stopped)
        };
        let nodes = [
            named("db-host-7", false),    // this node
            named("db-host-8", false),    // gone
            named("db-host-9", false),    // alive
            named("db-host-10", true),    // gone, but said goodbye: claimed as stopped anyway
            named("db-host-x-11", false), // another host
            named("other-12", false),
        ];
        let alive = |pid: u32| pid == 9;
        assert_eq!(
            gone_on_this_host("db-host-7", 7, &nodes, alive),
            ["db-host-8"]
        );
        // A configured id says nothing of processes.
        assert!(gone_on_this_host("node-a", 7, &nodes, alive).is_empty());
    }

    #[test]
    fn silence_past_the_timeout_is_down_and_a_goodbye_is_stopped() {
        let now = Utc::now();
        let timeout = Duration::from_millis(5000);
        let ms = chrono::Duration::milliseconds;
        assert_eq!(status_of(&node(now, false), now, timeout), NodeStatus::Up);
        assert_eq!(
            status_of(&node(now - ms(5000), false), now, timeout),
            NodeStatus::Up
        );
        assert_eq!(
            status_of(&node(now - ms(5001), false), now, timeout),
            NodeStatus::Down
        );
        // A heartbeat written after the clock was read is not "negative age".
        assert_eq!(
            status_of(&node(now + ms(30), false), now, timeout),
            NodeStatus::Up
        );
        assert_eq!(
            heartbeat_age(&node(now + ms(30), false), now),
            Duration::ZERO
        );
        // Stopped wins over silence: a node that said goodbye is not reported as crashed.
        assert_eq!(
            status_of(&node(now - ms(60_000), true), now, timeout),
            NodeStatus::Stopped
        );
        assert_eq!(
            NodeStatus::ALL.map(NodeStatus::as_str),
            ["up", "down", "stopped"]
        );
    }
}
