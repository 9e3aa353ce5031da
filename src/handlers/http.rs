//! The `http` handler: a phase served by another service, which gets the context as a POST and
//! answers with the output JSON.
//!
//! Plain `http://` only: flowd is built without a TLS stack (no system libraries needed), so
//! phases reach services on a trusted network or through a local TLS-terminating proxy.

use std::collections::BTreeMap;
use std::time::Duration;

use flowd_actors::handler::{HandlerError, PhaseContext, PhaseHandler, PhaseResult};
use futures_util::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::{debug, instrument};

use super::{DEFAULT_MAX_OUTPUT_BYTES, bad_params, context_body, excerpt, parse_reply};

/// The `http` phase's `params`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpParams {
    url: String,
    /// The whole exchange, connect to last body byte.
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_max_output_bytes")]
    max_output_bytes: usize,
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_output_bytes() -> usize {
    DEFAULT_MAX_OUTPUT_BYTES
}

/// Runs `http` phases with one shared client, so attempts reuse pooled connections.
#[derive(Clone)]
pub(super) struct HttpHandler {
    client: Client,
}

impl HttpHandler {
    /// A handler with its own connection pool.
    pub(super) fn new() -> Self {
        Self {
            client: Client::new(),
        }
    }
}

impl PhaseHandler for HttpHandler {
    fn run(&self, context: PhaseContext) -> BoxFuture<'static, PhaseResult> {
        Box::pin(post(self.client.clone(), context))
    }
}

/// The reply as far as it was read.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    overflow: bool,
}

/// Runs one attempt: POSTs the context and turns the reply into the phase's result.
#[instrument(skip_all, fields(flow_id = %ctx.flow_id, phase = %ctx.phase, attempt = ctx.attempt))]
async fn post(client: Client, ctx: PhaseContext) -> PhaseResult {
    let params: HttpParams = super::params("http", &ctx)?;
    let url = Url::parse(&params.url).map_err(|error| bad_params("http", error))?;
    if url.scheme() != "http" {
        return Err(bad_params(
            "http",
            format!("`url` must be http:// (this build has no TLS), not {url}"),
        ));
    }
    let headers = headers(&params.headers)?;
    let body = context_body(&ctx)?;
    let timeout = Duration::from_millis(params.timeout_ms);
    let exchange = exchange(&client, url.clone(), headers, body, params.max_output_bytes);
    let reply = tokio::select! {
        reply = tokio::time::timeout(timeout, exchange) => reply,
        () = ctx.cancellation.cancelled() => {
            return Err(HandlerError::fatal("cancelled", "the request was dropped: attempt cancelled"));
        }
    };
    let reply = match reply {
        Err(_elapsed) => {
            return Err(HandlerError::retryable(
                "timeout",
                format!("no reply from {url} within {}ms", params.timeout_ms),
            )
            .with_diagnostic(json!({ "url": url.as_str(), "timeout_ms": params.timeout_ms })));
        }
        Ok(reply) => reply.map_err(|error| request_error(&url, &error))?,
    };
    debug!(status = %reply.status, bytes = reply.body.len(), "reply received");
    let mut diagnostic = Map::new();
    diagnostic.insert("url".into(), Value::String(url.to_string()));
    diagnostic.insert("status".into(), json!(reply.status.as_u16()));
    if !reply.status.is_success() {
        diagnostic.insert("body_excerpt".into(), Value::String(excerpt(&reply.body)));
        let message = format!("{url} answered {}", reply.status);
        let retryable =
            reply.status.is_server_error() || reply.status == StatusCode::TOO_MANY_REQUESTS;
        let error = if retryable {
            HandlerError::retryable("http_status", message)
        } else {
            HandlerError::fatal("http_status", message)
        };
        return Err(error.with_diagnostic(Value::Object(diagnostic)));
    }
    if reply.overflow {
        diagnostic.insert("output_excerpt".into(), Value::String(excerpt(&reply.body)));
        return Err(HandlerError::retryable(
            "bad_output",
            format!(
                "the reply from {url} is larger than max_output_bytes ({})",
                params.max_output_bytes
            ),
        )
        .with_diagnostic(Value::Object(diagnostic)));
    }
    parse_reply(&reply.body, diagnostic)
}

/// Sends the request and reads at most `limit` bytes of the reply body: a huge reply is
/// cut off, never buffered.
async fn exchange(
    client: &Client,
    url: Url,
    headers: HeaderMap,
    body: Vec<u8>,
    limit: usize,
) -> Result<Reply, reqwest::Error> {
    let mut response = client.post(url).headers(headers).body(body).send().await?;
    let status = response.status();
    let mut kept = Vec::new();
    let mut overflow = false;
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            overflow = true;
            break;
        }
    }
    Ok(Reply {
        status,
        body: kept,
        overflow,
    })
}

/// `content-type: application/json`, then the phase's own headers (which may replace it).
fn headers(extra: &BTreeMap<String, String>) -> Result<HeaderMap, HandlerError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in extra {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| bad_params("http", format!("header `{name}`: {error}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|error| bad_params("http", format!("header `{name}`: {error}")))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// A target that cannot be reached is *unavailable* (a fallback can take over); a request that
/// broke midway may work next time.
fn request_error(url: &Url, error: &reqwest::Error) -> HandlerError {
    let diagnostic = json!({ "url": url.as_str(), "error": error_chain(error) });
    if error.is_timeout() {
        HandlerError::retryable("timeout", format!("{url} timed out")).with_diagnostic(diagnostic)
    } else if error.is_connect() {
        HandlerError::fatal("handler_unavailable", format!("cannot connect to {url}"))
            .with_diagnostic(diagnostic)
    } else {
        HandlerError::retryable("http_error", format!("the request to {url} failed"))
            .with_diagnostic(diagnostic)
    }
}

/// reqwest's message alone is vague ("error sending request"): the sources say why.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
