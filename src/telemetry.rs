//! Tracing setup. Only binaries and tests install a subscriber; libraries just emit spans.
//!
//! With the `otlp` feature and `log.otlp_endpoint` set, spans (a phase attempt's, an HTTP
//! request's) are also exported over OTLP/HTTP to Jaeger, Tempo or a collector.
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
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::configuration::{LogFormat, LogSettings};

/// The subscriber's layers see events and spans that passed the filter.
type Filtered = Layered<EnvFilter, Registry>;

/// One layer of the subscriber, below the filter.
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Why the subscriber could not be installed as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.otlp_endpoint` cannot be exported to (see [`check_otlp_endpoint`]).
    #[error("log.otlp_endpoint = {endpoint:?}: {reason}")]
    OtlpEndpoint { endpoint: String, reason: String },
    /// The OTLP exporter could not be built.
    #[cfg(feature = "otlp")]
    #[error("cannot export spans to {endpoint}")]
    Otlp {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Why `log.otlp_endpoint` is refused by a build without the `otlp` feature.
const NOT_BUILT: &str = "this flowd was built without OTLP export; build it with \
                         `cargo build --release --features otlp`, or remove the key";

/// Whether spans can be exported to `endpoint` by this build: only with the `otlp` feature,
/// and only over plain `http://` (no TLS client is built in); the reason when not.
pub fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    if !cfg!(feature = "otlp") {
        return Err(NOT_BUILT.into());
    }
    match endpoint.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => Ok(()),
        _ => Err("expected an OTLP/HTTP collector as http://host:port, e.g. \
                  http://127.0.0.1:4318 (https is not supported)"
            .into()),
    }
}

/// Keeps the span exporter running; dropping it sends the spans still buffered. Hold it until
/// the program ends.
#[must_use = "dropping it stops the span export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            // The subscriber is being torn down with this guard: stderr is what is left.
            eprintln!("flowd: spans not exported at shutdown: {error}");
        }
    }
}

/// Installs the global subscriber, writing to stderr (stdout stays free for the CLI's output),
/// and with `log.otlp_endpoint` set exporting spans over OTLP. `RUST_LOG` overrides the
/// configured filter, for both. Calling it twice is harmless: the first subscriber stays.
pub fn init(settings: &LogSettings) -> Result<Telemetry, TelemetryError> {
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
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let lines = match settings.format {
        LogFormat::Json => lines
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .boxed(),
        LogFormat::Text => lines.boxed(),
    };
    let mut layers: Vec<BoxedLayer> = vec![lines];
    let telemetry = match settings.otlp_endpoint() {
        None => Telemetry::default(),
        Some(endpoint) => {
            check_otlp_endpoint(endpoint).map_err(|reason| TelemetryError::OtlpEndpoint {
                endpoint: endpoint.to_owned(),
                reason,
            })?;
            let (layer, telemetry) = otlp::export(endpoint, &settings.otlp_service_name)?;
            layers.push(layer);
            telemetry
        }
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
    if let Some(unusable) = unusable_env {
        tracing::warn!(
            filter = %settings.filter,
            "ignoring {unusable}: not a tracing filter; using log.filter instead"
        );
    }
    if installed.is_ok()
        && let Some(endpoint) = settings.otlp_endpoint()
    {
        tracing::info!(endpoint, "exporting spans over OTLP");
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
    Ok(telemetry)
}

/// Span export over OTLP/HTTP (protobuf), batched on the SDK's own thread.
#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    use super::{BoxedLayer, Telemetry, TelemetryError};

    /// A layer sending every span to `endpoint`'s `/v1/traces`, and the guard whose drop
    /// flushes what is still batched.
    pub(super) fn export(
        endpoint: &str,
        service_name: &str,
    ) -> Result<(BoxedLayer, Telemetry), TelemetryError> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&url)
            .build()
            .map_err(|source| TelemetryError::Otlp {
                endpoint: url,
                source,
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("flowd"))
            .boxed();
        Ok((
            layer,
            Telemetry {
                provider: Some(provider),
            },
        ))
    }
}

/// Without the `otlp` feature nothing can export (the caller has refused the key already).
#[cfg(not(feature = "otlp"))]
mod otlp {
    use super::{BoxedLayer, NOT_BUILT, Telemetry, TelemetryError};

    /// Always the error [`super::check_otlp_endpoint`] gives in this build.
    pub(super) fn export(
        endpoint: &str,
        _service_name: &str,
    ) -> Result<(BoxedLayer, Telemetry), TelemetryError> {
        Err(TelemetryError::OtlpEndpoint {
            endpoint: endpoint.to_owned(),
            reason: NOT_BUILT.into(),
        })
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

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn an_otlp_endpoint_is_refused_unless_this_build_can_export_to_it() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[log]\notlp_endpoint = \"https://tempo:4318\"\n")?;
            let error = crate::configuration::Settings::load(Some(std::path::Path::new("c.toml")))
                .expect_err("refused")
                .to_string();
            assert!(error.starts_with(
                "invalid configuration: log.otlp_endpoint = \"https://tempo:4318\": "
            ));
            assert!(!error.contains('\n'), "one line: {error}");
            let expected = if cfg!(feature = "otlp") {
                "https is not supported"
            } else {
                "--features otlp"
            };
            assert!(error.contains(expected), "{error}");
            // An empty endpoint (e.g. FLOWD_LOG__OTLP_ENDPOINT= to turn it off) exports nothing.
            jail.set_env("FLOWD_LOG__OTLP_ENDPOINT", "");
            let settings =
                crate::configuration::Settings::load(Some(std::path::Path::new("c.toml")))
                    .map_err(|e| e.to_string())?;
            assert_eq!(settings.log.otlp_endpoint(), None);
            Ok(())
        });
        assert_eq!(
            check_otlp_endpoint("http://127.0.0.1:4318").is_ok(),
            cfg!(feature = "otlp")
        );
        assert!(check_otlp_endpoint("127.0.0.1:4318").is_err());
    }

    /// A span reaches an OTLP/HTTP collector: here a listener that records one request.
    #[cfg(feature = "otlp")]
    #[test]
    fn spans_are_exported_over_otlp_http() {
        use std::io::{BufRead, BufReader, Read, Write};
        use tracing_subscriber::layer::SubscriberExt as _;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        listener.set_nonblocking(true).expect("nonblocking");
        let collector = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(std::time::Instant::now() < deadline, "no export arrived");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(error) => panic!("accept: {error}"),
                }
            };
            stream.set_nonblocking(false).expect("blocking");
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            let mut reader = BufReader::new(stream);
            let mut head = Vec::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().expect("length");
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push(line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            (head, body)
        });

        let (layer, telemetry) = otlp::export(&endpoint, "flowd-test").expect("exporter");
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(vec![layer]);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("phase", flow_id = "flow-1", phase = "import").in_scope(|| {});
        });
        drop(telemetry); // flushes

        let (head, body) = collector.join().expect("collector");
        assert!(head[0].starts_with("POST /v1/traces "), "{head:?}");
        let body = String::from_utf8_lossy(&body);
        for text in ["flow-1", "import", "flowd-test"] {
            assert!(body.contains(text), "{text} missing from the exported span");
        }
    }
}
