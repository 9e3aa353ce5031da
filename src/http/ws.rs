//! Live progress over websockets: a flow's events, or all events of a tenant. A stream first
//! sends the stored events after the client's cursor, then live ones, each exactly once and in
//! order. A flow's stream is woken only by its own flow's (a master's: its tree's) commits. It
//! subscribes to the fan-out *before* catching up, so nothing falls between the two; the
//! fan-out hands over the recent events it still holds with the subscription, and only what it
//! no longer holds is read from the database. Duplicates from an overlap are dropped by cursor.
//! A subscriber that falls behind its buffer is caught up the same way; the runtime never
//! waits for it.
//!
//! On PostgreSQL the fan-out also publishes the events other nodes commit, in id order (see
//! `flowd_actors::events::tail`), and stored catch-up stops at the last published id: a stream
//! on any node carries every node's events, and a cursor from another node resumes exactly.
//!
//! A stream costs the server only while its client reads: a frame that cannot be handed to
//! the connection within `SEND_TIMEOUT`, 10 s (the client stopped reading and every buffer is
//! full) ends the stream, and a client that leaves during catch-up stops it. The connection,
//! which could then never flush what it holds, is dropped by the kernel (see
//! `startup::UNACKNOWLEDGED_WRITE_LIMIT`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use flowd_actors::Runtime;
use flowd_actors::error::RuntimeError;
use flowd_actors::events::{CommittedEvent, EventBatch, FlowEvent, KeyedReceiver};
use flowd_actors::ids::{FlowId, Tenant};
use serde::Deserialize;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tracing::{Instrument, debug, info_span, warn};

use crate::http::auth::Caller;
use crate::http::errors::{ApiError, Problem};
use crate::http::flows::parse_flow_id;

/// How often the server pings; a client silent for [`CLIENT_TIMEOUT`] is closed.
const PING_EVERY: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Events read from the database per catch-up query.
const PAGE: u32 = 500;
/// Longest wait to hand one frame to a connection; a client that does not read is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a stream is and what it wants.
enum Cursor {
    /// One child flow's events, by `seq`.
    Flow { flow_id: FlowId, last_seq: u64 },
    /// A master flow's events and those of every flow under it, by event `id` (the client's
    /// `after` is the master's `seq`, translated to the id of that event). The master's own
    /// events also stay above `master_after_seq`, the client's `after`: a `seq` not yet
    /// committed translates to the highest id stored, and the master's events between the two
    /// were seen by the client all the same.
    Tree {
        master_flow_id: FlowId,
        last_id: i64,
        master_after_seq: u64,
    },
    /// A tenant's events, optionally of one flow type, by event `id`.
    Tenant {
        tenant: Tenant,
        flow_type: Option<String>,
        last_id: i64,
    },
}

impl Cursor {
    fn wants(&self, event: &FlowEvent) -> bool {
        match self {
            Cursor::Flow { flow_id, last_seq } => {
                event.flow_id == *flow_id && event.seq > *last_seq
            }
            Cursor::Tree {
                master_flow_id,
                last_id,
                master_after_seq,
            } => {
                event.master_flow_id == *master_flow_id
                    && event.id > *last_id
                    && (event.flow_id != *master_flow_id || event.seq > *master_after_seq)
            }
            Cursor::Tenant {
                tenant,
                flow_type,
                last_id,
            } => {
                event.id > *last_id
                    && event.client_account_id == tenant.client_account_id
                    && event.engagement_id == tenant.engagement_id
                    && flow_type.as_ref().is_none_or(|t| *t == event.flow_type)
            }
        }
    }

    /// Whether the cursor is at or beyond `event` already.
    fn is_past(&self, event: &FlowEvent) -> bool {
        match self {
            Cursor::Flow { last_seq, .. } => *last_seq >= event.seq,
            Cursor::Tree { last_id, .. } | Cursor::Tenant { last_id, .. } => *last_id >= event.id,
        }
    }

    fn advance(&mut self, event: &FlowEvent) {
        match self {
            Cursor::Flow { last_seq, .. } => *last_seq = event.seq,
            Cursor::Tree { last_id, .. } | Cursor::Tenant { last_id, .. } => *last_id = event.id,
        }
    }

    async fn stored_page(
        &self,
        runtime: &Runtime,
    ) -> Result<Vec<Arc<CommittedEvent>>, RuntimeError> {
        match self {
            Cursor::Flow { flow_id, last_seq } => {
                runtime.flow_events_after(*flow_id, *last_seq, PAGE).await
            }
            Cursor::Tree {
                master_flow_id,
                last_id,
                ..
            } => {
                runtime
                    .tree_events_after(*master_flow_id, *last_id, PAGE)
                    .await
            }
            Cursor::Tenant {
                tenant, last_id, ..
            } => runtime.tenant_events_after(tenant, *last_id, PAGE).await,
        }
    }

    /// Subscribes to what this cursor follows; with the events after it when memory holds them.
    fn subscribe(&self, runtime: &Runtime) -> (Live, Option<Vec<Arc<CommittedEvent>>>) {
        match self {
            Cursor::Flow { flow_id, last_seq } => {
                let (live, recent) = runtime.subscribe_flow(*flow_id, *last_seq);
                (Live::Keyed(live), recent)
            }
            Cursor::Tree {
                master_flow_id,
                last_id,
                ..
            } => {
                let (live, recent) = runtime.subscribe_tree(*master_flow_id, *last_id);
                (Live::Keyed(live), recent)
            }
            Cursor::Tenant {
                tenant, last_id, ..
            } => {
                let (live, recent) = runtime.subscribe_tenant(tenant, *last_id);
                (Live::All(live), recent)
            }
        }
    }
}

/// Live events: of one flow or tree only, or of every tenant (filtered by the cursor).
enum Live {
    Keyed(KeyedReceiver),
    All(Receiver<Arc<CommittedEvent>>),
}

/// What one wake of a live subscription brings.
enum Received {
    /// A flow's or tree's events of one commit.
    Batch(EventBatch),
    /// One event of any tenant.
    One(Arc<CommittedEvent>),
}

impl Received {
    fn events(&self) -> &[Arc<CommittedEvent>] {
        match self {
            Received::Batch(batch) => batch,
            Received::One(event) => std::slice::from_ref(event),
        }
    }
}

impl Live {
    async fn recv(&mut self) -> Result<Received, RecvError> {
        match self {
            Live::Keyed(receiver) => receiver.recv().await.map(Received::Batch),
            Live::All(receiver) => receiver.recv().await.map(Received::One),
        }
    }
}

/// Query of the stream endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// The last `seq` (flow stream) or event `id` (tenant stream) the client has seen.
    pub after: Option<i64>,
    pub flow_type: Option<String>,
    /// For browsers, which cannot set `Authorization` on a websocket.
    pub access_token: Option<String>,
}

/// `GET /v1/flows/{id}/ws?after=SEQ`: a master flow's stream also carries the events of every
/// flow under it (`master_flow_id` tells them apart), in commit order.
#[utoipa::path(get, path = "/v1/flows/{id}/ws", tag = "streams", params(("id" = String, Path), StreamQuery),
    responses((status = 101, description = "websocket of FlowEvent JSON text frames, stored then live", body = FlowEvent), (status = 404, body = Problem)))]
pub async fn flow_stream(
    request: HttpRequest,
    body: web::Payload,
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let flow_id = parse_flow_id(&id)?;
    if query.flow_type.is_some() {
        return Err(ApiError::bad_request(
            "invalid-query",
            "flow_type filters the tenant stream only",
        ));
    }
    let after = cursor_value(query.after)?;
    let master_flow_id = runtime.stream_master(&caller.tenant, flow_id).await?;
    let cursor = if master_flow_id == flow_id {
        // Everything of the tree committed after the master's event `after`.
        let last_id = runtime
            .event_id_of(flow_id, after as u64)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        Cursor::Tree {
            master_flow_id,
            last_id,
            master_after_seq: after as u64,
        }
    } else {
        Cursor::Flow {
            flow_id,
            last_seq: after as u64,
        }
    };
    let span = info_span!("flow_stream", flow_id = %flow_id);
    open(&request, body, runtime.into_inner(), cursor, span).await
}

/// `GET /v1/events/ws?flow_type=&after=ID`.
#[utoipa::path(get, path = "/v1/events/ws", tag = "streams", params(StreamQuery),
    responses((status = 101, description = "websocket of the tenant's FlowEvent JSON text frames, by id", body = FlowEvent), (status = 401, body = Problem)))]
pub async fn tenant_stream(
    request: HttpRequest,
    body: web::Payload,
    runtime: web::Data<Runtime>,
    caller: Caller,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let cursor = Cursor::Tenant {
        tenant: caller.tenant.clone(),
        flow_type: query.flow_type,
        last_id: cursor_value(query.after)?,
    };
    let span = info_span!("tenant_stream", client_account_id = %caller.tenant.client_account_id);
    open(&request, body, runtime.into_inner(), cursor, span).await
}

fn cursor_value(after: Option<i64>) -> Result<i64, ApiError> {
    match after {
        Some(value) if value < 0 => Err(ApiError::bad_request(
            "invalid-query",
            "`after` must be 0 or more",
        )),
        other => Ok(other.unwrap_or(0)),
    }
}

/// Frames of memory's catch-up queued before the handshake's response is returned, so that
/// they leave with it in one write. Well under the session's queue (32 frames), which nothing
/// drains until the response is returned; longer catch-ups are the stream task's.
const QUEUED_WITH_HANDSHAKE: usize = 16;

async fn open(
    request: &HttpRequest,
    body: web::Payload,
    runtime: Arc<Runtime>,
    mut cursor: Cursor,
    span: tracing::Span,
) -> Result<HttpResponse, ApiError> {
    let (response, mut session, messages) = actix_ws::handle(request, body)
        .map_err(|error| ApiError::bad_request("not-a-websocket", error.to_string()))?;
    // Subscribed before the first database read: see the module comment.
    let (live, mut recent) = cursor.subscribe(&runtime);
    if let Some(events) = recent.take_if(|events| events.len() <= QUEUED_WITH_HANDSHAKE) {
        // The queue has room for all of them, so this does not wait; the cursor drops
        // whatever the live subscription repeats.
        if !send_all(&mut session, &mut cursor, &events).await {
            return Ok(response);
        }
        recent = Some(Vec::new());
    }
    actix_web::rt::spawn(stream(runtime, session, messages, live, recent, cursor).instrument(span));
    Ok(response)
}

/// Why a stream ended, for the close frame.
fn close_reason(code: CloseCode, text: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(text.to_owned()),
    })
}

/// Hands `text` to the connection; false when the client is gone or has stopped reading.
async fn send_text(session: &mut Session, text: String) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, session.text(text)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            debug!("subscriber not reading; dropping its stream");
            false
        }
    }
}

/// Sends `event` (serialized once for every subscriber, copied per session) and moves the
/// cursor past it.
async fn send(session: &mut Session, cursor: &mut Cursor, event: &CommittedEvent) -> bool {
    cursor.advance(event);
    send_text(session, event.json().to_owned()).await
}

/// Sends the events the cursor wants of `events`, in order.
async fn send_all(
    session: &mut Session,
    cursor: &mut Cursor,
    events: &[Arc<CommittedEvent>],
) -> bool {
    for event in events {
        if cursor.wants(event) && !send(session, cursor, event).await {
            return false;
        }
    }
    true
}

/// Sends committed events after the cursor until there are no more (from memory while it
/// holds them, else from the database).
async fn catch_up(
    runtime: &Runtime,
    session: &mut Session,
    cursor: &mut Cursor,
) -> Result<bool, RuntimeError> {
    loop {
        let page = cursor.stored_page(runtime).await?;
        let full = page.len() == PAGE as usize;
        if !send_all(session, cursor, &page).await {
            return Ok(false);
        }
        // Past the whole page even when the filter wanted none of it: the next query must
        // start after it, or a page of unwanted events would be read forever.
        if let Some(last) = page.last()
            && !cursor.is_past(last)
        {
            cursor.advance(last);
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Catch-up, abandoned as soon as the client closes or goes away.
async fn catch_up_while_connected(
    runtime: &Runtime,
    session: &mut Session,
    messages: &mut MessageStream,
    cursor: &mut Cursor,
) -> Result<bool, RuntimeError> {
    let closed = async {
        loop {
            match messages.recv().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::select! {
        caught_up = catch_up(runtime, session, cursor) => caught_up,
        () = closed => {
            debug!("client left during catch-up");
            Ok(false)
        }
    }
}

async fn stream(
    runtime: Arc<Runtime>,
    mut session: Session,
    mut messages: MessageStream,
    mut live: Live,
    recent: Option<Vec<Arc<CommittedEvent>>>,
    mut cursor: Cursor,
) {
    let reason = 'stream: {
        match recent {
            // Everything after the cursor was still in memory.
            Some(recent) => {
                if !send_all(&mut session, &mut cursor, &recent).await {
                    return;
                }
            }
            None => {
                match catch_up_while_connected(&runtime, &mut session, &mut messages, &mut cursor)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        break 'stream close_reason(
                            CloseCode::Error,
                            &format!("database: {error}"),
                        );
                    }
                }
            }
        }
        // The first ping after PING_EVERY, not at once: a stream that ends within it (a
        // short flow's) costs no ping round trip.
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    // Queued together, a commit's frames leave in one write.
                    Ok(received) => {
                        if !send_all(&mut session, &mut cursor, received.events()).await {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        debug!(missed, "subscriber fell behind; catching up from the database");
                        match catch_up_while_connected(&runtime, &mut session, &mut messages, &mut cursor).await {
                            Ok(true) => {}
                            Ok(false) => return,
                            Err(error) => break 'stream close_reason(CloseCode::Error, &format!("database: {error}")),
                        }
                    }
                    Err(RecvError::Closed) => break 'stream close_reason(CloseCode::Away, "server shutting down"),
                },
                message = messages.recv() => match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        last_heard = Instant::now();
                        let pong = tokio::time::timeout(SEND_TIMEOUT, session.pong(&bytes)).await;
                        if !matches!(pong, Ok(Ok(()))) {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break 'stream None,
                    Some(Ok(_)) => last_heard = Instant::now(),
                    Some(Err(error)) => {
                        warn!(%error, "websocket protocol error");
                        break 'stream close_reason(CloseCode::Protocol, "protocol error");
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > CLIENT_TIMEOUT {
                        break 'stream close_reason(CloseCode::Policy, "no pong within 30 s");
                    }
                    let ping = tokio::time::timeout(SEND_TIMEOUT, session.ping(b"")).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(SEND_TIMEOUT, session.close(reason)).await;
}
