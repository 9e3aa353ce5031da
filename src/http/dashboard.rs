//! Read-only figures for the dashboard: a tenant's flow counts per status, its queues, and the
//! server's health strip. Every answer is scoped to the caller's tenant, as the rest of `/v1`.

use actix_web::{HttpResponse, web};
use flowd_actors::Runtime;
use flowd_actors::model::FlowStatus;
use flowd_actors::queue::QueueDetail;
use serde::Serialize;
use std::collections::BTreeMap;
use tracing::instrument;

use crate::http::auth::Caller;
use crate::http::errors::{ApiError, Problem};

/// Flows of the caller's tenant per status; every status is present, zero included.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowCounts {
    #[schema(value_type = Object)]
    pub counts: BTreeMap<&'static str, u64>,
    pub total: u64,
    /// Pass as `after` to `/v1/events/ws` to receive only events committed after these counts
    /// were read, without the history.
    pub stream_after: i64,
}

/// The caller's queues.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueDetail>,
}

/// The dashboard's health strip.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthStrip {
    /// The runtime can write now (as `/readyz`).
    pub ready: bool,
    /// Mean latency of one batch commit since start, in milliseconds; null before the first.
    pub mean_commit_ms: Option<f64>,
    /// Batches committed since start.
    pub batches: u64,
    /// Live flow actors of the whole server; null for tenant keys (operator figure).
    pub live_flow_actors: Option<usize>,
}

/// How many flows of the caller's tenant are in each status.
#[utoipa::path(get, path = "/v1/flows/counts", tag = "dashboard",
    responses((status = 200, body = FlowCounts, description = "counts per status"), (status = 401, body = Problem, description = "no or an unknown key")))]
#[instrument(skip_all)]
pub async fn counts(runtime: web::Data<Runtime>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let mut counts: BTreeMap<&'static str, u64> = [
        FlowStatus::Initialized,
        FlowStatus::Running,
        FlowStatus::Paused,
        FlowStatus::Completed,
        FlowStatus::Failed,
        FlowStatus::Cancelled,
    ]
    .into_iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    let stream_after = runtime.last_event_id().await?;
    for (status, count) in runtime.count_by_status(&caller.tenant).await? {
        counts.insert(status.as_str(), count);
    }
    let total = counts.values().sum();
    Ok(HttpResponse::Ok().json(FlowCounts {
        counts,
        total,
        stream_after,
    }))
}

/// The caller's queues on this server: depth, oldest queued task, leases, pollers.
#[utoipa::path(get, path = "/v1/queues", tag = "dashboard",
    responses((status = 200, body = QueueList, description = "the caller's queues"), (status = 401, body = Problem, description = "no or an unknown key")))]
#[instrument(skip_all)]
pub async fn queues(runtime: web::Data<Runtime>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let queues = runtime.queue_details(caller.tenant).await?;
    Ok(HttpResponse::Ok().json(QueueList { queues }))
}

/// Readiness, commit latency and (for operators) live actors, from the runtime's own figures.
#[utoipa::path(get, path = "/v1/health", tag = "dashboard",
    responses((status = 200, body = HealthStrip, description = "the health strip"), (status = 401, body = Problem, description = "no or an unknown key")))]
#[instrument(skip_all)]
pub async fn health(runtime: web::Data<Runtime>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let ready = runtime.is_writable().await.unwrap_or(false);
    let stats = runtime.persistence_stats().await?;
    let mean_commit_ms =
        (stats.batches > 0).then(|| stats.commit_micros as f64 / stats.batches as f64 / 1000.0);
    let live_flow_actors = if caller.is_admin() {
        Some(runtime.live_flows().await?)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(HealthStrip {
        ready,
        mean_commit_ms,
        batches: stats.batches,
        live_flow_actors,
    }))
}
