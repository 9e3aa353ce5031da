//! Test-only fault injection over HTTP, mounted only with `[faults] enabled = true` in a build
//! with the cargo feature `faults`.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use flowd_actors::Runtime;
use serde::Deserialize;
use serde_json::json;

use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::flows::parse_flow_id;

/// Body of the freeze request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeBody {
    /// How long each freeze lasts.
    pub ms: u64,
    /// How many lives (or pings) of the flow's actor freeze.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// Mounts the fault routes inside the `/v1` scope.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/flows/{id}/faults/freeze", web::post().to(freeze));
}

/// Makes the flow's actor stop answering its mailbox, as a stuck actor would.
async fn freeze(
    runtime: web::Data<Runtime>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<FreezeBody>,
) -> Result<HttpResponse, ApiError> {
    let flow_id = parse_flow_id(&id)?;
    runtime.flow(&caller.tenant, flow_id).await?;
    runtime
        .faults()
        .freeze(flow_id, body.times, Duration::from_millis(body.ms));
    Ok(HttpResponse::Accepted()
        .json(json!({ "flow_id": flow_id, "frozen_ms": body.ms, "times": body.times })))
}
