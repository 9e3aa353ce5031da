//! `/v1/flows`: create, read, list, lifecycle, events and failures.

use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use flowd_actors::Runtime;
use flowd_actors::flow::ControlCommand;
use flowd_actors::ids::FlowId;
use flowd_actors::model::{FlowStatus, NewFlow};
use flowd_actors::store::FlowQuery;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::instrument;

use crate::http::auth::Caller;
use crate::http::errors::ApiError;

const MAX_IDEMPOTENCY_KEY: usize = 200;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// Body of `POST /v1/flows`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFlowBody {
    pub flow_type: String,
    #[serde(default)]
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
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-idempotency-key",
                format!("Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// Creates and starts a flow: `201` with the flow already running, `200` for a repeated key.
#[instrument(skip_all, fields(flow_type = %body.flow_type))]
pub async fn create(
    runtime: web::Data<Runtime>,
    caller: Caller,
    request: HttpRequest,
    body: web::Json<CreateFlowBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let key = idempotency_key(&request)?;
    let parent_flow_id = body
        .parent_flow_id
        .as_deref()
        .map(parse_flow_id)
        .transpose()?;
    let created = runtime
        .create_flow(NewFlow {
            flow_type: body.flow_type,
            input: body.input.unwrap_or_else(|| json!({})),
            parent_flow_id,
            master_flow_id: None,
            tenant: caller.tenant,
            created_by: caller.user,
            idempotency_key: key,
        })
        .await?;
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
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn get(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let flow = runtime.flow(&caller.tenant, parse_flow_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(flow))
}

/// Query of `GET /v1/flows`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub flow_type: Option<String>,
    pub parent_flow_id: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Flows of the caller's tenant, newest first, in keyset pages (`next_cursor`).
#[instrument(skip_all)]
pub async fn list(
    runtime: web::Data<Runtime>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
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
        .list_flows(&FlowQuery {
            tenant: Some(caller.tenant),
            status,
            flow_type: query.flow_type,
            parent_flow_id,
            before,
            limit,
        })
        .await?;
    let next_cursor = (flows.len() == limit as usize)
        .then(|| flows.last().map(|f| f.id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(json!({ "flows": flows, "next_cursor": next_cursor })))
}

/// Query of the event history.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

/// A flow's events after `after` (a `seq`), oldest first.
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
    Ok(HttpResponse::Ok().json(json!({ "events": events })))
}

/// A flow's failure journal.
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn failures(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let failures = runtime
        .failures(&caller.tenant, parse_flow_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "failures": failures })))
}

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
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn pause(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Pause).await
}

/// Continues a paused flow.
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn resume(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Resume).await
}

/// Ends the flow; no later phase runs.
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn cancel(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Cancel).await
}

/// Runs a failed flow again from its failed phase.
#[instrument(skip_all, fields(flow_id = %id))]
pub async fn retry(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    control(&runtime, caller, &id, ControlCommand::Retry).await
}
