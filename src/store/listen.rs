//! Cluster mode on PostgreSQL: one connection that `LISTEN flowd_events` and wakes the
//! runtime's event tail, so that streams on this node carry other nodes' events within a
//! round trip of their commit.
//!
//! PostgreSQL delivers a notification only when its transaction commits, and notifications of
//! different transactions in commit order (<https://www.postgresql.org/docs/current/sql-notify.html>).
//! The payload is the batch's last event id: the tail compares it with what it has published and
//! reads only when something is missing. A notification sent while this connection is down is
//! lost: after every (re)connect the tail reads once, and its backstop timer reads anyway.
//!
//! A plain tokio-postgres connection, not a pooled diesel one: notifications arrive on the
//! connection's message stream, which a pool does not expose.

use std::time::Duration;

use flowd_actors::events::tail::EventTail;
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, info, warn};

/// The notification channel the writers of a cluster notify on at each commit.
pub const CHANNEL: &str = "flowd_events";
/// The listening connection's `application_name`, to find it in `pg_stat_activity`.
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

/// Starts listening on `url` for `tail`, reconnecting with backoff for as long as the process
/// runs.
pub fn start(url: &str, tail: EventTail) {
    let url = url.to_owned();
    actix_web::rt::spawn(async move {
        let mut wait = RECONNECT_START;
        loop {
            match listen(&url, &tail, &mut wait).await {
                Ok(()) => return,
                Err(error) => {
                    warn!(%error, retry_in = ?wait, "the event listener lost its connection")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    });
}

/// One listening connection, until it fails. `wait` is reset once it listens.
async fn listen(url: &str, tail: &EventTail, wait: &mut Duration) -> Result<(), ListenError> {
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
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        info!("listening for other nodes' events");
        *wait = RECONNECT_START;
        // Whatever was committed while nobody listened.
        tail.wake();
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.tick().await;
        loop {
            tokio::select! {
                notification = received.recv() => {
                    let Some(notification) = notification else {
                        return Err(ListenError::Closed);
                    };
                    match notification.payload().parse::<i64>() {
                        Ok(last) => tail.notified(last),
                        Err(_) => {
                            debug!(payload = notification.payload(), "a notification without an event id");
                            tail.wake();
                        }
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
