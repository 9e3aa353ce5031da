//! Cluster mode on PostgreSQL: one connection that `LISTEN`s on every channel a part of the
//! runtime subscribes to ([`Subscriber`]) and hands each notification to its subscriber:
//!
//! - `flowd_events` ([`EventsChannel`]): wakes the runtime's event tail, so that streams on
//!   this node carry other nodes' events within a round trip of their commit. The payload is
//!   the batch's last event id: the tail compares it with what it has published and reads
//!   only when something is missing.
//! - `flowd_controls` ([`ControlsChannel`]): controls of flows this node owns sent by other
//!   nodes, and replies to the controls this node sent (docs/cluster.md, 2.6).
//! - `flowd_tasks` ([`super::tasks_cluster::TasksChannel`]): results other nodes took on this
//!   node's external tasks (docs/cluster.md, 2.6).
//!
//! Another channel is one more [`Subscriber`] in the list given to [`start`].
//!
//! PostgreSQL delivers a notification only when its transaction commits, and notifications of
//! different transactions in commit order (<https://www.postgresql.org/docs/current/sql-notify.html>).
//! A notification sent while this connection is down is lost: after every (re)connect each
//! subscriber is told ([`Subscriber::connected`]) and reads what it may have missed; each has
//! its own backstop timer as well.
//!
//! A plain tokio-postgres connection, not a pooled diesel one: notifications arrive on the
//! connection's message stream, which a pool does not expose.

use std::sync::Arc;
use std::time::Duration;

use flowd_actors::controls::RemoteControls;
use flowd_actors::events::tail::EventTail;
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, info, warn};

/// The notification channel the writers of a cluster notify on at each commit.
pub const CHANNEL: &str = "flowd_events";
/// The listening connection's `application_name`, to find it in `pg_stat_activity` (it listens
/// on every channel, not only on events).
pub const APPLICATION_NAME: &str = "flowd-events-listener";
/// First wait before reconnecting; doubles up to [`RECONNECT_MAX`].
const RECONNECT_START: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How often an idle connection is checked: a peer that vanished without closing the socket
/// would otherwise go unnoticed until TCP gives up.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Why a listening connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the connection closed")]
    Closed,
    #[error("no answer to a check within {0:?}")]
    Silent(Duration),
}

/// A part of the runtime woken by the notifications of one channel.
pub trait Subscriber: Send + Sync + 'static {
    /// The channel it listens on (an identifier: it is spelled into `LISTEN`).
    fn channel(&self) -> &'static str;
    /// A notification on that channel arrived, with its payload.
    fn notified(&self, payload: &str);
    /// The connection listens again: notifications sent meanwhile are lost, read everything.
    fn connected(&self);
}

/// `flowd_events`: the event tail.
pub struct EventsChannel(pub EventTail);

impl Subscriber for EventsChannel {
    fn channel(&self) -> &'static str {
        CHANNEL
    }

    fn notified(&self, payload: &str) {
        match payload.parse::<i64>() {
            Ok(last) => self.0.notified(last),
            Err(_) => {
                debug!(payload, "a notification without an event id");
                self.0.wake();
            }
        }
    }

    fn connected(&self) {
        // Whatever was committed while nobody listened.
        self.0.wake();
    }
}

/// `flowd_controls`: controls routed to and from other nodes.
pub struct ControlsChannel(pub RemoteControls);

impl Subscriber for ControlsChannel {
    fn channel(&self) -> &'static str {
        flowd_actors::controls::CHANNEL
    }

    fn notified(&self, payload: &str) {
        self.0.notified(payload);
    }

    fn connected(&self) {
        self.0.wake();
    }
}

/// Starts listening on `url` for `subscribers`, reconnecting with backoff for as long as the
/// process runs.
pub fn start(url: &str, subscribers: Vec<Arc<dyn Subscriber>>) {
    let url = url.to_owned();
    actix_web::rt::spawn(async move {
        let mut wait = RECONNECT_START;
        loop {
            match listen(&url, &subscribers, &mut wait).await {
                Ok(()) => return,
                Err(error) => {
                    warn!(%error, retry_in = ?wait, "the cluster listener lost its connection")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    });
}

/// One listening connection, until it fails. `wait` is reset once it listens.
async fn listen(
    url: &str,
    subscribers: &[Arc<dyn Subscriber>],
    wait: &mut Duration,
) -> Result<(), ListenError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(APPLICATION_NAME);
    let (client, mut connection) = config.connect(NoTls).await?;
    let (notifications, mut received) = tokio::sync::mpsc::unbounded_channel();
    // The connection does its I/O only while polled: a task of its own forwards what arrives.
    let driver = actix_web::rt::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if notifications.send(notification).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(ListenError::Postgres(error)),
            }
        }
        Err::<(), _>(ListenError::Closed)
    });
    let listening = async {
        let channels: Vec<String> = subscribers
            .iter()
            .map(|s| format!("LISTEN {};", s.channel()))
            .collect();
        client.batch_execute(&channels.concat()).await?;
        info!(
            channels = subscribers.len(),
            "listening for other nodes' notifications"
        );
        *wait = RECONNECT_START;
        for subscriber in subscribers {
            subscriber.connected();
        }
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.tick().await;
        loop {
            tokio::select! {
                notification = received.recv() => {
                    let Some(notification) = notification else {
                        return Err(ListenError::Closed);
                    };
                    match subscribers.iter().find(|s| s.channel() == notification.channel()) {
                        Some(subscriber) => subscriber.notified(notification.payload()),
                        None => debug!(channel = notification.channel(), "a notification on a channel nobody listens to"),
                    }
                }
                _ = check.tick() => {
                    tokio::time::timeout(CHECK_EVERY, client.simple_query(""))
                        .await
                        .map_err(|_| ListenError::Silent(CHECK_EVERY))??;
                }
            }
        }
    };
    let ended: Result<(), ListenError> = listening.await;
    driver.abort();
    ended
}
