//! Operations endpoints; they need no key.

use actix_web::{HttpResponse, web};
use flowd_actors::Runtime;
use serde_json::json;

/// The process is up and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The database answers: only then can flows make progress.
pub async fn readyz(runtime: web::Data<Runtime>) -> HttpResponse {
    match runtime.store().ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready", "database": "ok" })),
        Err(error) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unready", "database": error.to_string() })),
    }
}
