//! External workers: `POST /v1/queues/{queue}/poll` leases the oldest task of a queue (waiting
//! for one up to a limit), and `/v1/tasks/{id}/heartbeat|complete|fail` report on it under the
//! lease. Queues are per tenant: a worker's key decides whose tasks it sees.
//!
//! A report is parsed and checked here, once (its `next_phase` against the flow's phases), into
//! a typed [`Report`]; the queue's lease machine decides whether the lease still holds, and the
//! attempt waiting on the task gets the outcome typed, with no JSON in between.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use flowd_actors::Runtime;
use flowd_actors::handler::NextPhase;
use flowd_actors::ids::FlowId;
use flowd_actors::queue::{Lease, Report};
use flowd_actors::task::{TaskId, TaskRecord, TaskStatus};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tracing::instrument;
use uuid::Uuid;

use crate::http::auth::Caller;
use crate::http::errors::{ApiError, Problem, object_body, storable, storable_text};

/// How long a poll waits for a task when the worker names no `wait_ms`.
const DEFAULT_WAIT_MS: u64 = 20_000;
/// Longest poll: well under common proxy idle timeouts.
const MAX_WAIT_MS: u64 = 60_000;
/// Lease length when the worker names no `lease_s`.
const DEFAULT_LEASE_S: u64 = 30;
const MAX_LEASE_S: u64 = 3_600;
const MAX_WORKER_ID: usize = 200;
/// A poll body is a few small fields.
const MAX_POLL_BODY: usize = 16 * 1024;

/// Body of a poll; every field is optional and the body may be empty.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollBody {
    /// Names the worker in the task row and the journal.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// How long to wait for a task before answering `204` (default 20000, at most 60000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Lease length; heartbeats extend it by as much again (default 30, at most 3600).
    #[serde(default)]
    pub lease_s: Option<u64>,
}

/// A task leased to the polling worker.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskLease {
    pub task_id: TaskId,
    /// Quote it in every heartbeat and result.
    pub lease_id: Uuid,
    pub lease_expires_at: DateTime<Utc>,
    pub flow_id: FlowId,
    pub phase: String,
    pub attempt: u32,
    /// The phase context: `input`, `params`, `outputs` of earlier phases, `idempotency_key`, ….
    #[schema(value_type = Object)]
    pub context: Value,
}

impl From<Lease> for TaskLease {
    fn from(lease: Lease) -> Self {
        Self {
            task_id: lease.task_id,
            lease_id: lease.lease_id,
            lease_expires_at: lease.expires_at,
            flow_id: lease.flow_id,
            phase: lease.phase,
            attempt: lease.attempt,
            context: lease.payload,
        }
    }
}

/// Body of a heartbeat.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_id: Uuid,
    /// Seconds from now the lease lasts (default 30, at most 3600).
    #[serde(default)]
    pub lease_s: Option<u64>,
}

/// Body of a completion.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub lease_id: Uuid,
    /// The phase's output.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub output: Value,
    /// A phase of the same flow type to go to next, or null to finish the flow; absent: the
    /// definition decides.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub next_phase: Option<Option<String>>,
}

/// Body of a failure report.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    pub lease_id: Uuid,
    pub error: String,
    /// Whether the phase's retry policy may try again (default true).
    #[serde(default = "yes")]
    pub retryable: bool,
}

/// A task's state after a report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskState {
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

impl From<TaskRecord> for TaskState {
    fn from(record: TaskRecord) -> Self {
        Self {
            task_id: record.id,
            status: record.status,
            lease_expires_at: record.lease_expires_at,
        }
    }
}

fn yes() -> bool {
    true
}

/// Tells an absent field (`None`) from an explicit null (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn parse_task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("invalid-id", format!("`{raw}` is not a UUID")))
}

fn lease_length(lease_s: Option<u64>) -> Result<Duration, ApiError> {
    match lease_s.unwrap_or(DEFAULT_LEASE_S) {
        s @ 1..=MAX_LEASE_S => Ok(Duration::from_secs(s)),
        _ => Err(ApiError::unprocessable(
            "invalid-body",
            format!("lease_s must be 1–{MAX_LEASE_S}"),
        )),
    }
}

fn valid_queue(queue: &str) -> bool {
    !queue.is_empty()
        && queue.len() <= 100
        && queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Leases the oldest task of a queue: `200` with the task, or `204` when none came in time.
#[utoipa::path(post, path = "/v1/queues/{queue}/poll", tag = "workers",
    params(("queue" = String, Path, description = "queue name, as in the phase's params")),
    request_body(content = Option<PollBody>, description = "optional"),
    responses((status = 200, body = TaskLease), (status = 204, description = "no task within wait_ms"),
        (status = 400, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[instrument(skip_all, fields(queue = %path.as_str()))]
pub async fn poll(
    runtime: web::Data<Runtime>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let queue = path.into_inner();
    // Read here rather than by an extractor, so an oversize body is a problem+json 413 too.
    let body = body.to_bytes_limited(MAX_POLL_BODY).await.map_err(|_| {
        ApiError::too_large(format!("poll bodies are limited to {MAX_POLL_BODY} bytes"))
    })?;
    let body = body.map_err(|e| ApiError::bad_request("malformed-body", e.to_string()))?;
    if !valid_queue(&queue) {
        return Err(ApiError::bad_request(
            "invalid-queue",
            "a queue name is 1–100 letters, digits, `_`, `-` or `.`",
        ));
    }
    let body: PollBody = if body.iter().all(u8::is_ascii_whitespace) {
        PollBody::default()
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("malformed-json", e.to_string()))?;
        object_body(value)?
    };
    if let Some(worker_id) = &body.worker_id {
        storable_text("worker_id", worker_id)?;
    }
    let wait_ms = body.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::unprocessable(
            "invalid-body",
            format!("wait_ms must be at most {MAX_WAIT_MS}"),
        ));
    }
    if body
        .worker_id
        .as_ref()
        .is_some_and(|w| w.len() > MAX_WORKER_ID)
    {
        return Err(ApiError::unprocessable(
            "invalid-body",
            format!("worker_id must be at most {MAX_WORKER_ID} bytes"),
        ));
    }
    let lease = lease_length(body.lease_s)?;
    let leased = runtime
        .poll_task(
            caller.tenant,
            queue,
            body.worker_id,
            Duration::from_millis(wait_ms),
            lease,
        )
        .await?;
    Ok(match leased {
        Some(lease) => HttpResponse::Ok().json(TaskLease::from(lease)),
        None => HttpResponse::NoContent().finish(),
    })
}

/// Extends the lease of a task the worker is still working on.
#[utoipa::path(post, path = "/v1/tasks/{id}/heartbeat", tag = "workers",
    params(("id" = String, Path, description = "task id")), request_body = HeartbeatBody,
    responses((status = 200, body = TaskState), (status = 404, body = Problem), (status = 409, body = Problem, description = "stale lease")))]
#[instrument(skip_all, fields(task_id = %path.as_str()))]
pub async fn heartbeat(
    runtime: web::Data<Runtime>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body: HeartbeatBody = object_body(body.into_inner())?;
    let task_id = parse_task_id(&path)?;
    let extend = lease_length(body.lease_s)?;
    let report = Report::Heartbeat { extend };
    send_report(&runtime, caller, task_id, body.lease_id, report).await
}

/// Hands a checked report to the queue; the answer is the task's state after it.
async fn send_report(
    runtime: &Runtime,
    caller: Caller,
    task_id: TaskId,
    lease_id: Uuid,
    report: Report,
) -> Result<HttpResponse, ApiError> {
    let record = runtime
        .report_task(caller.tenant, task_id, lease_id, report)
        .await?;
    Ok(HttpResponse::Ok().json(TaskState::from(record)))
}

/// Completes a task: its output becomes the phase's output and the flow moves on.
#[utoipa::path(post, path = "/v1/tasks/{id}/complete", tag = "workers",
    params(("id" = String, Path, description = "task id")), request_body = CompleteBody,
    responses((status = 200, body = TaskState), (status = 404, body = Problem), (status = 409, body = Problem, description = "stale lease"), (status = 422, body = Problem, description = "next_phase is not a phase of the flow")))]
#[instrument(skip_all, fields(task_id = %path.as_str()))]
pub async fn complete(
    runtime: web::Data<Runtime>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body: CompleteBody = object_body(body.into_inner())?;
    let task_id = parse_task_id(&path)?;
    storable("output", &body.output)?;
    if let Some(Some(next)) = &body.next_phase {
        storable_text("next_phase", next)?;
    }
    let next_phase = match body.next_phase {
        None => NextPhase::ByDefinition,
        Some(None) => NextPhase::Finish,
        Some(Some(name)) => NextPhase::Named(name),
    };
    // A phase the flow does not have is refused here, to the worker, not left to fail the flow.
    if let NextPhase::Named(name) = &next_phase
        && let Some(phases) = runtime.task_phases(&caller.tenant, task_id).await?
        && !phases.contains(name)
    {
        return Err(ApiError::unprocessable(
            "invalid-next-phase",
            format!(
                "next_phase `{name}` is not a phase of this flow; its phases: {}",
                phases.join(", ")
            ),
        ));
    }
    let report = Report::Complete {
        output: body.output,
        next_phase,
    };
    send_report(&runtime, caller, task_id, body.lease_id, report).await
}

/// Fails a task: a failed attempt of its phase, retried by the phase's policy if `retryable`.
#[utoipa::path(post, path = "/v1/tasks/{id}/fail", tag = "workers",
    params(("id" = String, Path, description = "task id")), request_body = FailBody,
    responses((status = 200, body = TaskState), (status = 404, body = Problem), (status = 409, body = Problem, description = "stale lease")))]
#[instrument(skip_all, fields(task_id = %path.as_str()))]
pub async fn fail(
    runtime: web::Data<Runtime>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body: FailBody = object_body(body.into_inner())?;
    let task_id = parse_task_id(&path)?;
    storable_text("error", &body.error)?;
    let report = Report::Fail {
        error: body.error,
        retryable: body.retryable,
    };
    send_report(&runtime, caller, task_id, body.lease_id, report).await
}
