//! Tracing setup. Only binaries and tests install a subscriber; libraries just emit spans.
//!
//! Two things here keep logs safe to ship: JSON lines never carry a key twice (an event field
//! named `message` would otherwise sit beside the log message), and request spans never carry
//! an API key passed as `?access_token=`.

use std::fmt;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Span, Subscriber};
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::configuration::{LogFormat, LogSettings};

/// Installs the global subscriber, writing to stderr (stdout stays free for the CLI's output).
/// `RUST_LOG` overrides the configured filter. Calling it twice is harmless.
pub fn init(settings: &LogSettings) {
    // An unusable RUST_LOG is said out loud (below), not silently replaced.
    let mut unusable_env = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => match EnvFilter::try_new(&directives) {
            Ok(filter) => filter,
            Err(error) => {
                unusable_env = Some(format!("RUST_LOG={directives:?} ({error})"));
                EnvFilter::new(&settings.filter)
            }
        },
        _ => EnvFilter::new(&settings.filter),
    };
    // Colours only on a terminal: a log file or pipe gets plain text, not escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match settings.format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Some(unusable) = unusable_env {
        tracing::warn!(
            filter = %settings.filter,
            "ignoring {unusable}: not a tracing filter; using log.filter instead"
        );
    }
    if installed.is_ok() && settings.format == LogFormat::Json {
        // A panicking handler is caught and journaled, but the default hook would still write
        // its multi-line text between the JSON lines: log it as one event instead.
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %payload, %location, "a thread panicked");
        }));
    }
}

/// One JSON object per event: `timestamp`, `level`, the event's fields flat (the log text as
/// `message`), `target`, the innermost span as `span` and every open span as `spans`.
///
/// Each key appears once. An event field that is itself called `message` (an error's text, say)
/// is written as `detail` instead of overwriting — or being overwritten by — the log message.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(metadata.level().to_string()));
        event.record(&mut FieldsOnce(&mut line));
        line.insert("target".into(), Value::String(metadata.target().to_owned()));
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let mut fields = span
                    .extensions()
                    .get::<FormattedFields<N>>()
                    .and_then(|formatted| {
                        serde_json::from_str::<Map<String, Value>>(formatted).ok()
                    })
                    .unwrap_or_default();
                fields.insert("name".into(), Value::String(span.name().to_owned()));
                spans.push(Value::Object(fields));
            }
        }
        if let Some(innermost) = spans.last() {
            line.insert("span".into(), innermost.clone());
        }
        if !spans.is_empty() {
            line.insert("spans".into(), Value::Array(spans));
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields; a second `message` becomes `detail` (tracing records the log
/// text first, then the fields named in the macro).
struct FieldsOnce<'a>(&'a mut Map<String, Value>);

impl FieldsOnce<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let mut key = field.name().to_owned();
        if key == "message" && self.0.contains_key("message") {
            key = "detail".into();
        }
        while self.0.contains_key(&key) {
            key.push('_');
        }
        self.0.insert(key, value);
    }
}

impl Visit for FieldsOnce<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

/// The request span of every HTTP request: method, route, target (with `access_token`
/// masked), client, request id; status and error are recorded at the end.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let target = mask_access_token(
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or(""),
        );
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "default".to_owned());
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(ToString::to_string)
            .unwrap_or_default();
        let client = request
            .connection_info()
            .realip_remote_addr()
            .unwrap_or("")
            .to_owned();
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.target = %target,
            http.client_ip = %client,
            http.status_code = tracing::field::Empty,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            request_id = %request_id,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let status = match outcome {
            Ok(response) => response.status().as_u16(),
            Err(error) => error.as_response_error().status_code().as_u16(),
        };
        tracing::debug!(parent: &span, status, "request finished");
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// `/x?access_token=KEY&after=3` → `/x?access_token=***&after=3`: keys never reach the logs.
pub fn mask_access_token(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("access_token") => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", masked.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_are_masked_and_nothing_else_is() {
        assert_eq!(
            mask_access_token("/v1/flows/x/ws?access_token=dev-key-1&after=3"),
            "/v1/flows/x/ws?access_token=***&after=3"
        );
        assert_eq!(
            mask_access_token("/v1/events/ws?after=1&access_token=k"),
            "/v1/events/ws?after=1&access_token=***"
        );
        assert_eq!(mask_access_token("/v1/flows?limit=2"), "/v1/flows?limit=2");
        assert_eq!(mask_access_token("/healthz"), "/healthz");
    }
}
