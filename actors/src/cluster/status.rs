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
