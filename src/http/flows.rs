//! `/v1/flows`: create, read, list, lifecycle, events and failures.

use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use flowd_actors::Runtime;
use flowd_actors::events::FlowEvent;
use flowd_actors::flow::ControlCommand;
use flowd_actors::ids::FlowId;
use flowd_actors::model::{FailureRecord, FlowState};
use flowd_actors::model::{FlowStatus, NewFlow};
use flowd_actors::status_reason::StatusReason;
use flowd_actors::store::FlowQuery;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::instrument;

use crate::http::auth::Caller;
use crate::http::errors::{ApiError, Problem, object_body, storable, storable_text};

const MAX_IDEMPOTENCY_KEY: usize = 200;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// Body of `POST /v1/flows`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFlowBody {
    pub flow_type: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    #[serde(default)]
    pub parent_flow_id: Option<String>,
}

/// Parses a flow id from a path or body; a malformed one is `400`.
pub fn parse_flow_id(raw: &str) -> Result<FlowId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("invalid-id", format!("`{raw}` is not a UUID")))
}

fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && !k.contains('\0'))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-idempotency-key",
                format!("Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// A flow as served by reads: its stored state and, while it is not terminal, why it is not
/// progressing.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowView {
    #[serde(flatten)]
    pub flow: FlowState,
    /// Null once the flow is terminal. A listing does not count a fan-out phase's children
    /// (its reason reads `running`); one flow's read does.
    pub status_reason: Option<StatusReason>,
}

/// A page of flows, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowPage {
    pub flows: Vec<FlowView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A flow's event history.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventList {
    pub events: Vec<FlowEvent>,
}

/// A flow's failure journal.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FailureList {
    pub failures: Vec<FailureRecord>,
}

/// Creates and starts a flow: `201` with the flow already running, `200` for a repeated key.
#[utoipa::path(post, path = "/v1/flows", tag = "flows", request_body = CreateFlowBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "same key and body: the same flow")),
    responses((status = 201, body = FlowState), (status = 200, body = FlowState, description = "idempotent repeat"),
        (status = 400, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)))]
#[instrument(skip_all, fields(flow_type = tracing::field::Empty))]
pub async fn create(
    runtime: web::Data<Runtime>,
    caller: Caller,
    request: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body: CreateFlowBody = object_body(body.into_inner())?;
    tracing::Span::current().record("flow_type", body.flow_type.as_str());
    let key = idempotency_key(&request)?;
    storable_text("flow_type", &body.flow_type)?;
    let input = body.input.unwrap_or_else(|| json!({}));
    storable("input", &input)?;
    let parent_flow_id = body
        .parent_flow_id
        .as_deref()
        .map(parse_flow_id)
        .transpose()?;
    let flow_type = body.flow_type;
    let created = runtime
        .create_flow(NewFlow {
            flow_type: flow_type.clone(),
            input: input.clone(),
            parent_flow_id,
            master_flow_id: None,
            tenant: caller.tenant,
            created_by: caller.user,
            idempotency_key: key.clone(),
        })
        .await?;
    // A concurrent create with the same key may have answered with its own flow: the key
    // stands for one request, so a different body is a conflict, not that flow.
    let same_request = created.flow.flow_type == flow_type
        && *created.flow.input == input
        && created.flow.parent_flow_id == parent_flow_id;
    if !created.created && !same_request {
        return Err(ApiError::conflict(
            "idempotency-key-reused",
            format!(
                "idempotency key `{}` was used for a different request",
                key.unwrap_or_default()
            ),
        ));
    }
    let mut response = if created.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .insert_header((LOCATION, format!("/v1/flows/{}", created.flow.id)))
        .json(&created.flow))
}

/// One flow of the caller's tenant.
#[utoipa::path(get, path = "/v1/flows/{id}", tag = "flows", params(("id" = String, Path, description = "flow id")),
    responses((status = 200, body = FlowView), (status = 400, body = Problem), (status = 404, body = Problem)))]
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn get(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let flow = runtime.flow(&caller.tenant, parse_flow_id(&id)?).await?;
    let status_reason = runtime.status_reason(&flow, true).await?;
    Ok(HttpResponse::Ok().json(FlowView {
        flow,
        status_reason,
    }))
}

/// Query of `GET /v1/flows`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub flow_type: Option<String>,
    pub parent_flow_id: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Flows of the caller's tenant, newest first, in keyset pages (`next_cursor`).
#[utoipa::path(get, path = "/v1/flows", tag = "flows", params(ListQuery),
    responses((status = 200, body = FlowPage), (status = 400, body = Problem)))]
#[instrument(skip_all)]
pub async fn list(
    runtime: web::Data<Runtime>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if let Some(flow_type) = &query.flow_type
        && (flow_type.len() > 100 || !flowd_actors::limits::text_storable(flow_type))
    {
        return Err(ApiError::bad_request(
            "invalid-query",
            "flow_type must be a flow type name",
        ));
    }
    let status = query
        .status
        .as_deref()
        .map(|s| s.parse::<FlowStatus>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid-query", e.to_string()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid-query",
            format!("limit must be 1–{MAX_PAGE}"),
        ));
    }
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<FlowId>().map_err(|_| {
                ApiError::bad_request("invalid-cursor", "the cursor is not one this API issued")
            })
        })
        .transpose()?;
    let parent_flow_id = query
        .parent_flow_id
        .as_deref()
        .map(parse_flow_id)
        .transpose()?;
    let flows = runtime
        .list_flows(
            &caller.tenant,
            FlowQuery {
                tenant: None,
                status,
                flow_type: query.flow_type,
                parent_flow_id,
                before,
                limit,
            },
        )
        .await?;
    let next_cursor = (flows.len() == limit as usize)
        .then(|| flows.last().map(|f| f.id.to_string()))
        .flatten();
    let mut views = Vec::with_capacity(flows.len());
    for flow in flows {
        let status_reason = runtime.status_reason(&flow, false).await?;
        views.push(FlowView {
            flow,
            status_reason,
        });
    }
    Ok(HttpResponse::Ok().json(FlowPage {
        flows: views,
        next_cursor,
    }))
}

/// Query of the event history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

/// A flow's events after `after` (a `seq`), oldest first.
#[utoipa::path(get, path = "/v1/flows/{id}/events", tag = "flows", params(("id" = String, Path), EventsQuery),
    responses((status = 200, body = EventList), (status = 400, body = Problem), (status = 404, body = Problem)))]
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn events(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid-query",
            "limit must be 1–10000",
        ));
    }
    let events = runtime
        .events(
            &caller.tenant,
            parse_flow_id(&id)?,
            query.after.unwrap_or(0),
            limit,
        )
        .await?;
    Ok(HttpResponse::Ok().json(EventList { events }))
}

/// A flow's failure journal.
#[utoipa::path(get, path = "/v1/flows/{id}/failures", tag = "flows", params(("id" = String, Path, description = "flow id")),
    responses((status = 200, body = FailureList), (status = 404, body = Problem)))]
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn failures(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let failures = runtime
        .failures(&caller.tenant, parse_flow_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(FailureList { failures }))
}

/// Applies a lifecycle request wherever the flow's owner is: the runtime routes a flow another
/// node of the cluster owns to that node and answers with its reply (docs/cluster.md, 2.6).
async fn control(
    runtime: &Runtime,
    caller: Caller,
    id: &str,
    command: ControlCommand,
) -> Result<HttpResponse, ApiError> {
    let flow = runtime
        .control(caller.tenant, parse_flow_id(id)?, command)
        .await?;
    Ok(HttpResponse::Ok().json(flow))
}

/// Holds the flow at the next phase boundary.
#[utoipa::path(post, path = "/v1/flows/{id}/pause", tag = "lifecycle", params(("id" = String, Path, description = "flow id")),
    responses((status = 200, body = FlowState), (status = 404, body = Problem), (status = 409, body = Problem, description = "illegal in the current status"),
        (status = 503, body = Problem, description = "another node owns the flow and did not answer within `cluster.control_timeout_ms`")))]
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn pause(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Pause).await
}

/// Continues a paused flow.
#[utoipa::path(post, path = "/v1/flows/{id}/resume", tag = "lifecycle", params(("id" = String, Path, description = "flow id")),
    responses((status = 200, body = FlowState), (status = 404, body = Problem), (status = 409, body = Problem, description = "illegal in the current status"),
        (status = 503, body = Problem, description = "another node owns the flow and did not answer within `cluster.control_timeout_ms`")))]
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn resume(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Resume).await
}

/// Ends the flow; no later phase runs.
#[utoipa::path(post, path = "/v1/flows/{id}/cancel", tag = "lifecycle", params(("id" = String, Path, description = "flow id")),
    responses((status = 200, body = FlowState), (status = 404, body = Problem), (status = 409, body = Problem, description = "illegal in the current status"),
        (status = 503, body = Problem, description = "another node owns the flow and did not answer within `cluster.control_timeout_ms`")))]
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn cancel(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Cancel).await
}

/// Runs a failed flow again from its failed phase.
#[utoipa::path(post, path = "/v1/flows/{id}/retry", tag = "lifecycle", params(("id" = String, Path, description = "flow id")),
    responses((status = 200, body = FlowState), (status = 404, body = Problem), (status = 409, body = Problem, description = "illegal in the current status"),
        (status = 503, body = Problem, description = "another node owns the flow and did not answer within `cluster.control_timeout_ms`")))]
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn retry(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Retry).await
}
