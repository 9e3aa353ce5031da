//! The HTTP API: a module per resource, problem+json errors, and tenant resolution.

pub mod auth;
pub mod cluster;
pub mod dashboard;
pub mod errors;
pub mod faults;
pub mod flow_types;
pub mod flows;
pub mod openapi;
pub mod ops;
pub mod tasks;
pub mod ui;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::http::errors::ApiError;

/// Mounts every route of the API; `faults` adds the test-only fault-injection routes.
pub fn routes(config: &mut web::ServiceConfig, faults: bool) {
    let mut v1 = web::scope("/v1");
    if faults {
        v1 = v1.configure(faults::routes);
    }
    config
        .route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/openapi.json", web::get().to(ops::openapi))
        .route("/metrics", web::get().to(ops::metrics))
        .configure(ui::routes)
        .service(
            v1.route("/flows", web::post().to(flows::create))
                .route("/flows", web::get().to(flows::list))
                .route("/flows/counts", web::get().to(dashboard::counts))
                .route("/queues", web::get().to(dashboard::queues))
                .route("/health", web::get().to(dashboard::health))
                .route("/cluster/nodes", web::get().to(cluster::nodes))
                .route("/flows/{id}", web::get().to(flows::get))
                .route("/flows/{id}/pause", web::post().to(flows::pause))
                .route("/flows/{id}/resume", web::post().to(flows::resume))
                .route("/flows/{id}/cancel", web::post().to(flows::cancel))
                .route("/flows/{id}/retry", web::post().to(flows::retry))
                .route("/flows/{id}/events", web::get().to(flows::events))
                .route("/flows/{id}/failures", web::get().to(flows::failures))
                .route("/flows/{id}/ws", web::get().to(crate::ws::flow_stream))
                .route("/events/ws", web::get().to(crate::ws::tenant_stream))
                .route("/flow-types", web::get().to(flow_types::list))
                .route("/flow-types/{name}", web::get().to(flow_types::get))
                .route("/flow-types/{name}", web::put().to(flow_types::put))
                .route("/queues/{queue}/poll", web::post().to(tasks::poll))
                .route("/tasks/{id}/heartbeat", web::post().to(tasks::heartbeat))
                .route("/tasks/{id}/complete", web::post().to(tasks::complete))
                .route("/tasks/{id}/fail", web::post().to(tasks::fail)),
        );
}

/// Any path or method the API does not have.
pub async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.path()
    )))
}
