//! The OpenAPI document, assembled from the handlers' `#[utoipa::path]` annotations.

use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::events::{EventKind, FlowEvent};
use flowd_actors::ids::FlowId;
use flowd_actors::model::{FailureRecord, FlowState, FlowStatus, PhaseState, PhaseStatus};
use utoipa::OpenApi;

use crate::http::cluster::{NodeEntry, NodeList};
use crate::http::dashboard::{FlowCounts, HealthStrip, QueueList};
use crate::http::errors::Problem;
use crate::http::flow_types::{FlowTypeList, PutFlowTypeBody};
use crate::http::flows::{CreateFlowBody, EventList, FailureList, FlowPage, FlowView};
use crate::http::tasks::{CompleteBody, FailBody, HeartbeatBody, PollBody, TaskLease, TaskState};
use crate::http::{cluster, dashboard, flow_types, flows, ops, tasks};
use crate::ws;
use flowd_actors::queue::QueueDetail;
use flowd_actors::status_reason::StatusReason;
use flowd_actors::task::{TaskId, TaskStatus};

/// Every route and schema of the v1 API.
#[derive(OpenApi)]
#[openapi(
    info(title = "flowd", description = "Durable multi-phase flows, driven by actors."),
    paths(
        flows::create, flows::list, flows::get, flows::pause, flows::resume, flows::cancel, flows::retry,
        flows::events, flows::failures, ws::flow_stream, ws::tenant_stream,
        flow_types::list, flow_types::get, flow_types::put, tasks::poll, tasks::heartbeat,
        tasks::complete, tasks::fail, ops::healthz, ops::readyz, ops::openapi, ops::metrics,
        dashboard::counts, dashboard::queues, dashboard::health, cluster::nodes,
    ),
    components(schemas(
        FlowState, PhaseState, FlowStatus, PhaseStatus, FlowId, FlowEvent, EventKind, FailureRecord,
        FlowType, PhaseDefinition, CreateFlowBody, PutFlowTypeBody, FlowPage, EventList, FailureList,
        FlowTypeList, Problem, PollBody, TaskLease, HeartbeatBody, CompleteBody, FailBody, TaskState,
        TaskId, TaskStatus, FlowView, StatusReason, FlowCounts, QueueList, QueueDetail, HealthStrip,
        NodeList, NodeEntry,
    )),
    modifiers(&BearerAuth, &Complete),
)]
pub struct ApiDoc;

/// Declares the `Authorization: Bearer KEY` scheme that `/v1` routes use when auth is on.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Makes the generated document valid and honest, whatever each handler's annotation says:
/// every response has a description (the status's reason phrase when the handler gave none),
/// operation ids are unique (`flows_list`, not two `list`s), and every `/v1` operation
/// declares the bearer scheme it needs when auth is on.
struct Complete;

impl utoipa::Modify for Complete {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::security::SecurityRequirement;
        for (path, item) in openapi.paths.paths.iter_mut() {
            let resource = path
                .strip_prefix("/v1/")
                .and_then(|rest| rest.split('/').next())
                .map(|segment| segment.replace('-', "_"));
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                if let (Some(resource), Some(id)) = (&resource, &operation.operation_id)
                    && !id.starts_with(resource.as_str())
                {
                    operation.operation_id = Some(format!("{resource}_{id}"));
                }
                if resource.is_some() {
                    operation.security = Some(vec![SecurityRequirement::new(
                        "api_key",
                        Vec::<String>::new(),
                    )]);
                }
                for (status, response) in operation.responses.responses.iter_mut() {
                    if let RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        response.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|code| actix_web::http::StatusCode::from_u16(code).ok())
                            .and_then(|code| code.canonical_reason())
                            .unwrap_or("Response")
                            .to_owned();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use utoipa::OpenApi;

    use super::ApiDoc;

    /// The checks `openapi-spec-validator` failed on before (CI runs the validator itself).
    #[test]
    fn every_response_is_described_ids_are_unique_and_v1_needs_the_key() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        let mut ids = HashSet::new();
        let paths = document["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                let id = operation["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
                for (status, response) in operation["responses"].as_object().expect("responses") {
                    assert!(
                        response["description"]
                            .as_str()
                            .is_some_and(|d| !d.is_empty()),
                        "{method} {path} {status} has no description"
                    );
                }
                if path.starts_with("/v1/") {
                    assert_eq!(
                        operation["security"],
                        serde_json::json!([{ "api_key": [] }]),
                        "{method} {path}"
                    );
                } else {
                    assert!(operation.get("security").is_none(), "{method} {path}");
                }
            }
        }
        assert!(ids.contains("flows_list") && ids.contains("flow_types_list"));
        assert!(ids.contains("cluster_nodes"), "{ids:?}");
    }
}
