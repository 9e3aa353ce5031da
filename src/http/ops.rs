//! Operations endpoints; they need no key.

use actix_web::{HttpResponse, web};
use flowd_actors::Runtime;
use serde_json::json;

/// The process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The runtime can write: the database answers and the last batch committed. Only then do flows progress.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready"), (status = 503, description = "the database does not answer")))]
pub async fn readyz(runtime: web::Data<Runtime>) -> HttpResponse {
    match runtime.is_writable().await {
        Ok(true) => HttpResponse::Ok().json(json!({ "status": "ready", "database": "ok" })),
        Ok(false) => HttpResponse::ServiceUnavailable().json(
            json!({ "status": "unready", "database": "reachable, but the last commit failed" }),
        ),
        Err(error) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unready", "database": error.to_string() })),
    }
}

/// The OpenAPI document of this API, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1")))]
pub async fn openapi() -> HttpResponse {
    use utoipa::OpenApi;
    HttpResponse::Ok().json(crate::http::openapi::ApiDoc::openapi())
}

/// Prometheus text exposition (behind `[metrics] key` or an admin key when that is set): flows by status, phase durations, retries, failures by kind,
/// restarts, missed pings, batch sizes and commit latencies, live actors, subscribers, cluster nodes by status,
/// controls routed between nodes.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format 0.0.4")))]
pub async fn metrics(
    runtime: web::Data<Runtime>,
    cluster: web::Data<flowd_actors::cluster::Cluster>,
    keys: web::Data<crate::http::auth::KeyRing>,
    request: actix_web::HttpRequest,
) -> Result<HttpResponse, crate::http::errors::ApiError> {
    keys.may_read_metrics(&request)?;
    let text = runtime.render_metrics().await?;
    let mut cluster_families = crate::http::cluster::render_metrics(&cluster).await;
    if !cluster_families.is_empty() && !cluster_families.ends_with('\n') {
        cluster_families.push('\n');
    }
    cluster_families.push_str(&crate::http::cluster::render_control_metrics(
        runtime.control_stats(),
    ));
    let text = crate::http::cluster::with_families(text, &cluster_families);
    Ok(HttpResponse::Ok()
        .insert_header(("content-type", flowd_actors::metrics::CONTENT_TYPE))
        .body(text))
}
