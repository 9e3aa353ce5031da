//! `/v1/flow-types`: the registry's definitions, and new versions over the API.
//!
//! Flow types are global and operator-managed: only an admin key registers versions (they may
//! run `command` and `http` phases, which reach the host and the network). Tenants read a
//! redacted view: the params of phases that run operator code or reach services are hidden.

use actix_web::{HttpResponse, web};
use flowd_actors::Runtime;
use flowd_actors::definition::{FlowType, PhaseDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::instrument;

use crate::http::auth::Caller;
use crate::http::errors::{ApiError, Problem, object_body};

/// Handler kinds whose params are operator business: programs, URLs, header references.
const OPERATOR_KINDS: [&str; 2] = ["command", "http"];

/// What `caller` may see of `definition`: all of it for an admin; for a tenant, the params of
/// `command` and `http` phases (and fallbacks) replaced by a marker.
fn view_for(caller: &Caller, definition: &FlowType) -> FlowType {
    let mut view = definition.clone();
    if caller.is_admin() {
        return view;
    }
    let hidden = || json!({ "redacted": "operator-only" });
    for phase in &mut view.phases {
        let fallback_kind = phase
            .fallback
            .as_deref()
            .is_some_and(|f| OPERATOR_KINDS.contains(&f));
        if OPERATOR_KINDS.contains(&phase.handler.as_str())
            || (fallback_kind && phase.fallback_params.is_none())
        {
            phase.params = hidden();
        }
        if fallback_kind && phase.fallback_params.is_some() {
            phase.fallback_params = Some(hidden());
        }
    }
    view
}

/// Every flow type's latest version.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlowTypeList {
    pub flow_types: Vec<FlowType>,
}

/// The latest version of every flow type.
#[utoipa::path(get, path = "/v1/flow-types", tag = "flow types", responses((status = 200, body = FlowTypeList)))]
#[instrument(skip_all)]
pub async fn list(runtime: web::Data<Runtime>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let types = runtime.flow_types().await?;
    let flow_types = types.iter().map(|t| view_for(&caller, t)).collect();
    Ok(HttpResponse::Ok().json(FlowTypeList { flow_types }))
}

/// Query of `GET /v1/flow-types/{name}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    pub version: Option<u32>,
}

/// One flow type: the latest version, or `?version=N`.
#[utoipa::path(get, path = "/v1/flow-types/{name}", tag = "flow types", params(("name" = String, Path), VersionQuery),
    responses((status = 200, body = FlowType), (status = 404, body = Problem)))]
#[instrument(skip_all, fields(flow_type = %name))]
pub async fn get(
    runtime: web::Data<Runtime>,
    caller: Caller,
    name: web::Path<String>,
    query: web::Query<VersionQuery>,
) -> Result<HttpResponse, ApiError> {
    let found = runtime.flow_type(&name, query.version).await?;
    let definition = found.ok_or_else(|| ApiError::not_found(format!("no flow type `{name}`")))?;
    Ok(HttpResponse::Ok().json(view_for(&caller, &definition)))
}

/// Body of `PUT /v1/flow-types/{name}`: a new version (the next one when `version` is absent).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutFlowTypeBody {
    pub version: Option<u32>,
    pub phases: Vec<PhaseDefinition>,
}

/// Registers a new version (admin keys only); flows already running keep theirs. `201` new,
/// `200` identical repeat.
#[utoipa::path(put, path = "/v1/flow-types/{name}", tag = "flow types", params(("name" = String, Path)), request_body = PutFlowTypeBody,
    responses((status = 201, body = FlowType), (status = 200, body = FlowType), (status = 403, body = Problem, description = "not an admin key"), (status = 409, body = Problem), (status = 422, body = Problem, description = "invalid definition, naming the field")))]
#[instrument(skip_all, fields(flow_type = %name))]
pub async fn put(
    runtime: web::Data<Runtime>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin("registering a flow type")?;
    let name = name.into_inner();
    let body = body.into_inner();
    // serde reads a struct from an array too; a phase must be an object, like the body.
    if let Some(index) = body
        .get("phases")
        .and_then(Value::as_array)
        .and_then(|phases| phases.iter().position(|p| !p.is_object()))
    {
        return Err(ApiError::unprocessable(
            "invalid-body",
            format!("phases[{index}] must be an object"),
        ));
    }
    let body: PutFlowTypeBody = object_body(body)?;
    let latest = runtime.flow_type(&name, None).await?;
    let version = match (body.version, &latest) {
        (Some(version), _) => version,
        // Unchanged phases are no new version: a repeated PUT answers the version it made.
        (None, Some(latest)) if latest.phases == body.phases => {
            return Ok(HttpResponse::Ok().json(&**latest));
        }
        // Past the last storable version, validation answers 422 naming `version`.
        (None, latest) => latest.as_ref().map_or(1, |t| t.version.saturating_add(1)),
    };
    let existed = runtime.flow_type(&name, Some(version)).await?.is_some();
    let definition = runtime
        .register_flow_type(FlowType {
            name,
            version,
            phases: body.phases,
        })
        .await?;
    let mut response = if existed {
        HttpResponse::Ok()
    } else {
        HttpResponse::Created()
    };
    Ok(response.json(&*definition))
}
