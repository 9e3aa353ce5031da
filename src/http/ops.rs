//! Operations endpoints; they need no key.

use actix_web::{HttpResponse, web};
use flowd_actors::Runtime;
use serde_json::json;

/// The process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The database answers: only then can flows make progress.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready"), (status = 503, description = "the database does not answer")))]
pub async fn readyz(runtime: web::Data<Runtime>) -> HttpResponse {
    match runtime.store().ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready", "database": "ok" })),
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
