//! Who is calling: the principal behind the API key — an operator (`admin`) or a tenant — or,
//! with auth off, the local operator; and the user named by `X-User-Id`.

use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use flowd_actors::ids::Tenant;

use crate::configuration::{Role, Settings};
use crate::http::errors::ApiError;

/// API keys by value, built once at start.
#[derive(Clone, Debug)]
pub struct KeyRing {
    enabled: bool,
    keys: HashMap<String, (Tenant, Role)>,
    metrics_key: Option<String>,
}

impl KeyRing {
    /// The keys of `settings` (`[auth]`, and `[metrics] key`).
    pub fn new(settings: &Settings) -> Self {
        let keys = settings
            .auth
            .keys
            .iter()
            .map(|k| {
                let tenant = Tenant {
                    client_account_id: k.client_account_id.clone(),
                    engagement_id: k.engagement_id.clone(),
                };
                (k.key.clone(), (tenant, k.role))
            })
            .collect();
        Self {
            enabled: settings.auth.enabled,
            keys,
            metrics_key: settings.metrics.key.clone().filter(|k| !k.is_empty()),
        }
    }

    fn principal_of(&self, request: &HttpRequest) -> Result<(Tenant, Role), ApiError> {
        if !self.enabled {
            // Auth off is the local single-operator setup: the caller is the operator.
            return Ok((Tenant::default_tenant(), Role::Admin));
        }
        let key = presented_key(request)?;
        self.keys
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))
    }

    /// Whether the request may read `/metrics`: open unless `[metrics] key` is set; then that
    /// key or an admin key.
    pub fn may_read_metrics(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let Some(metrics_key) = &self.metrics_key else {
            return Ok(());
        };
        let key = bearer(request)?
            .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer KEY`"))?;
        if key == *metrics_key {
            return Ok(());
        }
        match self.keys.get(&key) {
            Some((_, Role::Admin)) => Ok(()),
            Some(_) => Err(ApiError::forbidden(
                "/metrics needs the metrics key or an admin key",
            )),
            None => Err(ApiError::unauthorized("unknown API key")),
        }
    }
}

/// `Authorization: Bearer KEY` (scheme case-insensitive), or the stream's query token.
fn presented_key(request: &HttpRequest) -> Result<String, ApiError> {
    if let Some(key) = bearer(request)? {
        return Ok(key);
    }
    websocket_token(request)
        .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer KEY`"))
}

/// The key of an `Authorization: Bearer KEY` header, if there is one.
fn bearer(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(header) = request.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || ApiError::unauthorized("the Authorization header must be `Bearer KEY`");
    let value = header.to_str().map_err(|_| malformed())?.trim();
    let (scheme, key) = value.split_once(' ').ok_or_else(malformed)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(malformed());
    }
    Ok(Some(key.to_owned()))
}

/// The authenticated caller of a `/v1` request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: Tenant,
    /// What the caller may do: operators manage flow types.
    pub role: Role,
    /// From `X-User-Id`; fills `created_by`.
    pub user: Option<String>,
}

impl Caller {
    /// Refuses (`403`) unless the caller is an operator.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Tenant => Err(ApiError::forbidden(format!(
                "{what} needs an admin key; flow types are managed by the operator"
            ))),
        }
    }

    /// Whether the caller is an operator.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
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
            .filter(|v| !v.is_empty() && v.len() <= 200 && !v.contains('\0'))
            .map(str::to_owned);
        ready(
            ring.principal_of(request)
                .map(|(tenant, role)| Caller { tenant, role, user }),
        )
    }
}

/// Browsers cannot set headers on a websocket, so the two stream routes (and only they, and
/// only for `GET`) also take `?access_token=KEY`.
fn websocket_token(request: &HttpRequest) -> Option<String> {
    if request.method() != Method::GET || !is_stream_path(request.path()) {
        return None;
    }
    web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .ok()?
        .get("access_token")
        .cloned()
}

/// `/v1/events/ws` or `/v1/flows/{id}/ws`.
fn is_stream_path(path: &str) -> bool {
    if path == "/v1/events/ws" {
        return true;
    }
    path.strip_prefix("/v1/flows/")
        .and_then(|rest| rest.strip_suffix("/ws"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_routes_take_a_query_token() {
        assert!(is_stream_path("/v1/events/ws"));
        assert!(is_stream_path("/v1/flows/0193/ws"));
        assert!(!is_stream_path("/v1/flow-types/ws"));
        assert!(!is_stream_path("/v1/flows/a/b/ws"));
        assert!(!is_stream_path("/v1/flows//ws"));
    }
}
