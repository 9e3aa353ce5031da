//! Who is calling: the tenant behind the API key (or `default` with auth off) and the user.

use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use flowd_actors::ids::Tenant;

use crate::configuration::AuthSettings;
use crate::http::errors::ApiError;

/// API keys by value, built once at start.
#[derive(Clone, Debug)]
pub struct KeyRing {
    enabled: bool,
    keys: HashMap<String, Tenant>,
}

impl KeyRing {
    /// The keys of `settings`.
    pub fn new(settings: &AuthSettings) -> Self {
        let keys = settings
            .keys
            .iter()
            .map(|k| {
                let tenant = Tenant {
                    client_account_id: k.client_account_id.clone(),
                    engagement_id: k.engagement_id.clone(),
                };
                (k.key.clone(), tenant)
            })
            .collect();
        Self {
            enabled: settings.enabled,
            keys,
        }
    }

    fn tenant_of(&self, request: &HttpRequest) -> Result<Tenant, ApiError> {
        if !self.enabled {
            return Ok(Tenant::default_tenant());
        }
        let key = match request.headers().get(AUTHORIZATION) {
            Some(header) => header
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(|value| value.trim().to_owned())
                .ok_or_else(|| {
                    ApiError::unauthorized("the Authorization header must be `Bearer KEY`")
                })?,
            None => websocket_token(request)
                .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer KEY`"))?,
        };
        self.keys
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))
    }
}

/// The authenticated caller of a `/v1` request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: Tenant,
    /// From `X-User-Id`; fills `created_by`.
    pub user: Option<String>,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(ring) = request.app_data::<web::Data<KeyRing>>() else {
            return ready(Err(ApiError::unauthorized(
                "authentication is not configured",
            )));
        };
        let user = request
            .headers()
            .get("X-User-Id")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 200)
            .map(str::to_owned);
        ready(
            ring.tenant_of(request)
                .map(|tenant| Caller { tenant, user }),
        )
    }
}

/// Browsers cannot set headers on a websocket, so streams also take `?access_token=KEY`.
fn websocket_token(request: &HttpRequest) -> Option<String> {
    if !request.path().ends_with("/ws") {
        return None;
    }
    web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .ok()?
        .get("access_token")
        .cloned()
}
