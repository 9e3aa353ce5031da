//! API errors as `application/problem+json` (RFC 9457), with a stable `type` per error. Bad
//! input is always a 4xx and is rejected before anything is stored.

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, ResponseError};
use flowd_actors::error::{RuntimeError, with_sources};
use flowd_actors::queue::QueueError;
use serde::Serialize;
use serde_json::error::Category;

/// An error answer of the API.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{title}: {detail}")]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
}

/// The body of every error answer (RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Stable per error, e.g. `/problems/unknown-flow-type`.
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl ApiError {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
        }
    }

    /// A malformed request: syntax, a bad id, a bad query parameter.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, "Bad request", detail)
    }

    /// Well-formed input that breaks a rule.
    pub fn unprocessable(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            "Unprocessable request",
            detail,
        )
    }

    /// Nothing at this address for this caller.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// No or an unknown API key.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// The request body is larger than allowed.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Payload too large",
            detail,
        )
    }

    /// The caller is known but its role does not allow the request.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// The request is valid but the resource's state refuses it (e.g. a stale lease).
    pub fn conflict(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, slug, "Conflict", detail)
    }

    /// The runtime cannot serve the request now; retrying later may work.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        tracing::error!(%detail, "request failed: runtime unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// The problem's stable `type`, e.g. `/problems/not-found`.
    pub fn problem_type(&self) -> String {
        format!("/problems/{}", self.slug)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let problem = Problem {
            kind: self.problem_type(),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response
            .insert_header((CONTENT_TYPE, "application/problem+json"))
            .body(serde_json::to_string(&problem).unwrap_or_default())
    }
}

impl From<RuntimeError> for ApiError {
    fn from(error: RuntimeError) -> Self {
        let detail = with_sources(&error);
        match error {
            RuntimeError::UnknownFlowType(_) => Self::unprocessable("unknown-flow-type", detail),
            RuntimeError::FlowNotFound(_) => Self::not_found(detail),
            RuntimeError::ParentNotFound(_) => Self::unprocessable("unknown-parent-flow", detail),
            RuntimeError::IllegalTransition { .. } => Self::new(
                StatusCode::CONFLICT,
                "illegal-transition",
                "Conflict",
                detail,
            ),
            RuntimeError::IdempotencyMismatch(_) => Self::new(
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Conflict",
                detail,
            ),
            RuntimeError::InvalidDefinition(_) => Self::unprocessable("invalid-flow-type", detail),
            RuntimeError::VersionConflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "flow-type-version-exists",
                "Conflict",
                detail,
            ),
            RuntimeError::WriteRefused(_) => Self::unprocessable("write-refused", detail),
            // A conflict is the caller's to resolve, never "try again later".
            RuntimeError::Conflict(_) => Self::conflict("conflict", detail),
            RuntimeError::Corrupt(_) => {
                tracing::error!(%detail, "request failed: stored data cannot be read");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt-stored-data",
                    "Internal server error",
                    detail,
                )
            }
            RuntimeError::Unavailable(_)
            | RuntimeError::StoreUnavailable(_)
            | RuntimeError::Fenced => Self::unavailable(detail),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        let detail = error.to_string();
        match error {
            QueueError::NotFound(_) => Self::not_found(detail),
            QueueError::StaleLease { .. } => Self::conflict("stale-lease", detail),
            QueueError::Unavailable(_) => Self::unavailable(detail),
        }
    }
}

/// Maps body errors: oversize → 413, not JSON → 415, broken JSON → 400, wrong shape → 422.
pub fn json_error(error: JsonPayloadError) -> ApiError {
    match &error {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Payload too large",
            format!("request bodies are limited to {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as application/json",
        ),
        JsonPayloadError::Deserialize(inner) if inner.classify() == Category::Data => {
            ApiError::unprocessable("invalid-body", inner.to_string())
        }
        JsonPayloadError::Deserialize(inner) => {
            ApiError::bad_request("malformed-json", inner.to_string())
        }
        other => ApiError::bad_request("malformed-body", other.to_string()),
    }
}

/// A JSON body that must be an object, read into `T`: an array or scalar (which serde would
/// otherwise read field by field into a struct) or a wrong field is `422`.
pub fn object_body<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::unprocessable(
            "invalid-body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable("invalid-body", e.to_string()))
}

/// Refuses (`422`) a value no backend can store, e.g. a NUL in a string, naming `field`.
pub fn storable(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    flowd_actors::limits::json_storable(value)
        .map_err(|error| ApiError::unprocessable("unstorable-value", format!("`{field}`{error}")))
}

/// Refuses (`422`) a string no backend can store (a NUL), naming `field`.
pub fn storable_text(field: &str, text: &str) -> Result<(), ApiError> {
    if flowd_actors::limits::text_storable(text) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "unstorable-value",
            format!("`{field}` contains a NUL character (\\u0000), which cannot be stored"),
        ))
    }
}

/// Maps query-string errors to 400.
pub fn query_error(error: QueryPayloadError) -> ApiError {
    ApiError::bad_request("invalid-query", error.to_string())
}

#[cfg(test)]
mod tests {
    use flowd_actors::store::StoreError;

    use super::*;

    #[test]
    fn store_errors_keep_their_class_and_their_source() {
        let cases = [
            (
                StoreError::Conflict("duplicate key".into()),
                StatusCode::CONFLICT,
                "/problems/conflict",
            ),
            (
                StoreError::Corrupt("bad status".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "/problems/corrupt-stored-data",
            ),
            (
                StoreError::Unavailable("connection refused".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/unavailable",
            ),
        ];
        for (store, status, problem) in cases {
            let inner = store.to_string();
            let runtime = RuntimeError::from(store);
            assert!(std::error::Error::source(&runtime).is_some(), "{runtime:?}");
            let api = ApiError::from(runtime);
            assert_eq!(api.status, status);
            assert_eq!(api.problem_type(), problem);
            assert!(api.detail.ends_with(&inner), "{}", api.detail);
        }
    }
}
