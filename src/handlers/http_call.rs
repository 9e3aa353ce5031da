//! The `http` handler: a phase served by another service, which gets the context as a POST and
//! answers with the output JSON.
//!
//! Plain `http://` only: flowd is built without a TLS stack (no system libraries needed), so
//! phases reach services on a trusted network or through a local TLS-terminating proxy.
//!
//! Targets pass the operator's allowlist (see [`super::targets`]) on the URL and on every
//! resolved address; redirects are not followed. Header values may be `{"env": "NAME"}`
//! references, resolved here at run time, so secrets never sit in a stored definition.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flowd_actors::error::with_sources;
use flowd_actors::handler::{HandlerError, PhaseContext, PhaseHandler, PhaseResult};
use futures_util::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::{debug, instrument};

use super::targets::{GuardedResolver, TargetPolicy};
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
    headers: BTreeMap<String, HeaderSpec>,
    #[serde(default = "default_max_output_bytes")]
    max_output_bytes: usize,
}

/// A header value: literal, or read from flowd's environment when the request is made.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeaderSpec {
    Literal(String),
    Env { env: String },
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
    policy: Arc<TargetPolicy>,
}

impl HttpHandler {
    /// A handler with its own connection pool, reaching only what `policy` allows.
    pub(super) fn new(policy: Arc<TargetPolicy>) -> Self {
        let client = Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .build()
            .unwrap_or_else(|error| {
                tracing::error!(%error, "http client with a guarded resolver; none reachable");
                Client::new()
            });
        Self { client, policy }
    }
}

impl PhaseHandler for HttpHandler {
    fn run(&self, context: PhaseContext) -> BoxFuture<'static, PhaseResult> {
        Box::pin(post(self.client.clone(), self.policy.clone(), context))
    }
}

/// Refuses a target outside the allowlist before anything is sent: an IP literal is checked
/// here (the resolver never sees it), a name's current addresses too.
async fn check_target(policy: &TargetPolicy, url: &Url) -> Result<(), HandlerError> {
    let shown = shown(url);
    let refused = |why: String| {
        HandlerError::fatal("target_refused", why)
            .with_diagnostic(json!({ "url": shown, "allowlist": "[security] http_allow" }))
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let Some(host) = url.host_str() else {
        return Err(refused(format!("{shown} names no host")));
    };
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return check_ip(policy, ip, port).map_err(refused);
    }
    if policy.trusts_name(host, port) {
        return Ok(());
    }
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| HandlerError::unavailable(format!("cannot resolve `{host}`: {error}")))?;
    for address in addresses {
        check_ip(policy, address.ip(), port).map_err(refused)?;
    }
    Ok(())
}

/// The URL as journals and messages show it (a tenant reads its flows' journals): without
/// credentials, query or fragment, where operators sometimes put secrets.
fn shown(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn check_ip(policy: &TargetPolicy, ip: IpAddr, port: u16) -> Result<(), String> {
    if policy.allows(ip, Some(port)) {
        Ok(())
    } else {
        Err(format!(
            "{ip}:{port} is not a public address and not in [security] http_allow"
        ))
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
async fn post(client: Client, policy: Arc<TargetPolicy>, ctx: PhaseContext) -> PhaseResult {
    let params: HttpParams = super::params("http", &ctx)?;
    let url = Url::parse(&params.url).map_err(|error| bad_params("http", error))?;
    let shown = shown(&url);
    if url.scheme() != "http" {
        return Err(bad_params(
            "http",
            format!("`url` must be http:// (this build has no TLS), not {shown}"),
        ));
    }
    check_target(&policy, &url).await?;
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
            return Err(HandlerError::timeout(
                "timeout",
                format!("no reply from {shown} within {}ms", params.timeout_ms),
            )
            .with_diagnostic(json!({ "url": shown, "timeout_ms": params.timeout_ms })));
        }
        Ok(reply) => reply.map_err(|error| request_error(&url, &error))?,
    };
    debug!(status = %reply.status, bytes = reply.body.len(), "reply received");
    let mut diagnostic = Map::new();
    diagnostic.insert("url".into(), Value::String(shown.clone()));
    diagnostic.insert("status".into(), json!(reply.status.as_u16()));
    if !reply.status.is_success() {
        diagnostic.insert("body_excerpt".into(), Value::String(excerpt(&reply.body)));
        let message = format!("{shown} answered {}", reply.status);
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
                "the reply from {shown} is larger than max_output_bytes ({})",
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
fn headers(extra: &BTreeMap<String, HeaderSpec>) -> Result<HeaderMap, HandlerError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, spec) in extra {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| bad_params("http", format!("header `{name}`: {error}")))?;
        let value = match spec {
            HeaderSpec::Literal(value) => HeaderValue::from_str(value),
            HeaderSpec::Env { env } => {
                // The value is a secret: it goes on the wire and nowhere else.
                let secret = std::env::var(env).map_err(|_| {
                    bad_params(
                        "http",
                        format!("header `{name}`: environment variable `{env}` is not set"),
                    )
                })?;
                let mut value = HeaderValue::from_str(&secret);
                if let Ok(value) = &mut value {
                    value.set_sensitive(true);
                }
                value
            }
        }
        .map_err(|error| bad_params("http", format!("header `{name}`: {error}")))?;
        headers.insert(header, value);
    }
    Ok(headers)
}

/// A target that cannot be reached is *unavailable* (a fallback can take over); a request that
/// broke midway may work next time.
fn request_error(url: &Url, error: &reqwest::Error) -> HandlerError {
    let shown = shown(url);
    // reqwest's message alone is vague ("error sending request"): the sources say why.
    let chain = with_sources(error).replace(url.as_str(), &shown);
    let diagnostic = json!({ "url": shown, "error": chain });
    if error.is_timeout() {
        HandlerError::timeout("timeout", format!("{shown} timed out")).with_diagnostic(diagnostic)
    } else if error.is_connect() {
        HandlerError::unavailable(format!("cannot connect to {shown}")).with_diagnostic(diagnostic)
    } else {
        HandlerError::retryable("http_error", format!("the request to {shown} failed"))
            .with_diagnostic(diagnostic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> TargetPolicy {
        TargetPolicy::new(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
            .expect("valid entries")
    }

    #[actix_web::test]
    async fn disguised_loopback_targets_are_refused() {
        let none = policy(&[]);
        for url in [
            "http://127.0.0.1:8080/x",
            "http://2130706433/x",
            "http://0x7f.1/x",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/x",
        ] {
            let url = Url::parse(url).expect("a URL");
            let error = check_target(&none, &url).await.expect_err(url.as_str());
            assert_eq!(error.kind, "target_refused", "{url}");
        }
        let listed = policy(&["127.0.0.1:8080", "localhost"]);
        for url in ["http://127.0.0.1:8080/x", "http://localhost:9/x"] {
            let url = Url::parse(url).expect("a URL");
            assert!(check_target(&listed, &url).await.is_ok(), "{url}");
        }
        let url = Url::parse("http://127.0.0.1:22/x").expect("a URL");
        assert!(check_target(&listed, &url).await.is_err());
    }

    #[test]
    fn journals_show_urls_without_secrets() {
        let url = Url::parse("http://user:pw@svc.example:8080/p?api_key=s3cret#f").expect("a URL");
        assert_eq!(shown(&url), "http://svc.example:8080/p");
    }
}
