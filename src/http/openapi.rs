//! The OpenAPI document, assembled from the handlers' `#[utoipa::path]` annotations.

use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::events::{EventKind, FlowEvent};
use flowd_actors::ids::FlowId;
use flowd_actors::model::{FailureRecord, FlowState, FlowStatus, PhaseState, PhaseStatus};
use utoipa::OpenApi;

use crate::http::dashboard::{FlowCounts, HealthStrip, QueueList};
use crate::http::errors::Problem;
use crate::http::flow_types::{FlowTypeList, PutFlowTypeBody};
use crate::http::flows::{CreateFlowBody, EventList, FailureList, FlowPage, FlowView};
use crate::http::tasks::{CompleteBody, FailBody, HeartbeatBody, PollBody, TaskLease, TaskState};
use crate::http::{dashboard, flow_types, flows, ops, tasks};
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
        dashboard::counts, dashboard::queues, dashboard::health,
    ),
    components(schemas(
        FlowState, PhaseState, FlowStatus, PhaseStatus, FlowId, FlowEvent, EventKind, FailureRecord,
        FlowType, PhaseDefinition, CreateFlowBody, PutFlowTypeBody, FlowPage, EventList, FailureList,
        FlowTypeList, Problem, PollBody, TaskLease, HeartbeatBody, CompleteBody, FailBody, TaskState,
        TaskId, TaskStatus, FlowView, StatusReason, FlowCounts, QueueList, QueueDetail, HealthStrip,
    )),
    modifiers(&BearerAuth),
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
