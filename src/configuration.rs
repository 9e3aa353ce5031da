//! Typed configuration: defaults → `config.toml` (or `--config PATH`) → `FLOWD_<SECTION>__<KEY>`
//! environment variables. A relative SQLite path is relative to the config file's folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use flowd_actors::RuntimeConfig;
use flowd_actors::definition::FlowType;
use flowd_actors::limits::Limits;
use flowd_actors::supervisor::RestartIntensity;
use serde::{Deserialize, Serialize};

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` does not exist.
    #[error("config file {0} not found")]
    Missing(PathBuf),
    /// A value is malformed or of the wrong type, or a section or key is unknown (a typo is
    /// refused rather than ignored).
    #[error("invalid configuration: {}", figment_errors(.0))]
    Invalid(Box<figment::Error>),
    /// A value has the right type but cannot be used.
    #[error("invalid configuration: {key} = {value:?}: {reason}")]
    BadValue {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// An `[security] http_allow` entry is not understood.
    #[error("invalid configuration: {0}")]
    BadAllowEntry(#[from] crate::handlers::targets::BadEntry),
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        Self::Invalid(error)
    }
}

/// Every error figment found, once each, joined: figment's own `Display` shows only the first.
fn figment_errors(error: &figment::Error) -> String {
    let mut all: Vec<String> = Vec::new();
    for one in error.clone() {
        // Keys are shown without figment's profile (`default.server.bind` → `server.bind`).
        let text = one.to_string().replace("for key \"default.", "for key \"");
        if !all.contains(&text) {
            all.push(text);
        }
    }
    all.join("; ")
}

/// Which file the settings came from, so the binary can say so (or warn when there was none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// Read from this file.
    File(PathBuf),
    /// No `--config` and no `config.toml` in the working directory: defaults and the
    /// environment only, which means no flow types.
    Defaults {
        /// The path that was looked for.
        looked_for: PathBuf,
    },
}

/// Sections that `FLOWD_<SECTION>__<KEY>` variables may override; other `FLOWD_*` variables
/// (e.g. `FLOWD_CONFIG`, `FLOWD_TEST_POSTGRES_URL`) are not configuration keys.
const SECTIONS: [&str; 10] = [
    "server", "database", "health", "auth", "log", "faults", "limits", "security", "metrics",
    "cluster",
];

/// Everything flowd reads from its configuration. Unknown sections are refused, like unknown
/// keys inside a section.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub health: HealthSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub faults: FaultSettings,
    #[serde(default)]
    pub limits: LimitsSettings,
    #[serde(default)]
    pub security: SecuritySettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// Flow types registered at start; a flow pins the version it started with.
    #[serde(default)]
    pub flow_types: Vec<FlowType>,
}

/// The HTTP listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// `host:port`; port 0 picks a free one (tests).
    pub bind: String,
    /// Larger request bodies get `413`.
    pub max_body_bytes: usize,
    /// HTTP worker threads; one per core when absent.
    pub workers: Option<usize>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            workers: None,
        }
    }
}

/// Where flows are stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (embedded default) or `postgres://user@host:port/db`.
    pub url: String,
    /// Connections of the read pool (the writer has its own).
    pub pool_size: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// SQLite only: `full` (the default) fsyncs every commit before it is acked, so it
    /// survives a power loss; `normal` is faster and survives a process crash only.
    pub sync: crate::store::sqlite::SqliteSync,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/flowd.db".into(),
            pool_size: 8,
            max_batch: 4096,
            sync: crate::store::sqlite::SqliteSync::Full,
        }
    }
}

/// Liveness: pings, restarts, phase deadlines.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    /// Restarts allowed within `restart_window_s` before the flow is failed.
    pub max_restarts: usize,
    pub restart_window_s: u64,
    /// Deadline of a phase attempt whose phase names no `timeout_s`.
    pub phase_timeout_s: u64,
    /// How often the database is swept for non-terminal flows that have no live actor. Only
    /// flows left unwritten for this long are read, so the sweep stays cheap.
    pub stored_sweep_s: u64,
    /// The same in milliseconds, for a finer interval; wins over `stored_sweep_s` when set.
    pub stored_sweep_ms: Option<u64>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            ping_interval_ms: 1000,
            ping_timeout_ms: 5000,
            max_restarts: 3,
            restart_window_s: 60,
            phase_timeout_s: 300,
            stored_sweep_s: 30,
            stored_sweep_ms: None,
        }
    }
}

/// API keys and the tenants they stand for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// When false (the local default) every request belongs to tenant `default`.
    pub enabled: bool,
    pub keys: Vec<ApiKey>,
}

/// One API key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    pub client_account_id: String,
    pub engagement_id: String,
    /// What the key may do; `tenant` when absent.
    #[serde(default)]
    pub role: Role,
}

/// The two kinds of principal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An operator: manages flow types (including `command` and `http` phases), reads
    /// `/metrics`. With auth off the local caller is an admin.
    Admin,
    /// Runs and reads its own flows, reads a redacted view of the flow types.
    #[default]
    Tenant,
}

/// Bounds on definitions and on what one flow may do (see the README's "Security model").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Most phases per flow type.
    pub max_phases: usize,
    /// Most `retries` per phase.
    pub max_retries: u32,
    /// Most children per `child_flows` phase.
    pub max_children: usize,
    /// Deepest nesting of fan-outs (children starting children …).
    pub max_child_depth: usize,
    /// Phase attempts one flow may start in all; a `next_phase` loop fails the flow past it.
    pub max_transitions_per_flow: u32,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_phases: limits.max_phases,
            max_retries: limits.max_retries,
            max_children: limits.max_children,
            max_child_depth: limits.max_child_depth,
            max_transitions_per_flow: limits.max_transitions_per_flow,
        }
    }
}

/// What flowd may reach on the operator's behalf.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// Targets `http` phases may reach besides public addresses: `host`, `host:port`, an IP
    /// or a CIDR (`10.0.0.0/8`). Loopback, link-local, private and other special ranges are
    /// refused unless listed; checked on the resolved addresses of every request.
    pub http_allow: Vec<String>,
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// When set, `/metrics` needs `Authorization: Bearer KEY` with this key or an admin key.
    pub key: Option<String>,
    /// Distinct `flow_type` and `phase` label values kept; later ones count as `other`.
    pub max_label_values: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            key: None,
            max_label_values: 200,
        }
    }
}

/// This process as a node of the cluster of its database (see docs/cluster.md). On SQLite the
/// cluster is always this one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// This node's name in the `nodes` table; `HOST-PID` when absent, so two processes never
    /// share one by accident. A fixed name keeps one row across restarts.
    #[serde(deserialize_with = "text_or_number")]
    pub node_id: Option<String>,
    /// How often the node writes its heartbeat.
    pub heartbeat_ms: Option<u64>,
    /// A node whose last heartbeat is older than this is reported `down`. At least twice
    /// `heartbeat_ms`, so that one late heartbeat does not make a node look dead.
    pub node_timeout_ms: Option<u64>,
    /// Where other nodes and operators reach this node's API (`host:port` or a URL); shown in
    /// `/v1/cluster/nodes`, not used for routing yet.
    pub advertise: Option<String>,
    /// How long a control of a flow another node owns waits for that node's reply before it is
    /// answered `503` (docs/cluster.md, 2.6). Longer than `node_timeout_ms` plus a heartbeat,
    /// so that a control sent to a node that just died is applied by the node taking over.
    pub control_timeout_ms: Option<u64>,
}

impl ClusterSettings {
    /// Heartbeat interval when `heartbeat_ms` is absent.
    pub const DEFAULT_HEARTBEAT_MS: u64 = 1000;
    /// Node timeout when `node_timeout_ms` is absent.
    pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 5000;
    /// Control reply wait when `control_timeout_ms` is absent.
    pub const DEFAULT_CONTROL_TIMEOUT_MS: u64 = 10_000;
    /// Longest node id: it is a key column and a metric-free log field, not a document.
    pub const MAX_NODE_ID_LEN: usize = 128;

    /// The heartbeat interval in effect.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.unwrap_or(Self::DEFAULT_HEARTBEAT_MS))
    }

    /// The node timeout in effect.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(
            self.node_timeout_ms
                .unwrap_or(Self::DEFAULT_NODE_TIMEOUT_MS),
        )
    }

    /// How long a control routed to another node waits for its reply.
    pub fn control_timeout(&self) -> Duration {
        Duration::from_millis(
            self.control_timeout_ms
                .unwrap_or(Self::DEFAULT_CONTROL_TIMEOUT_MS),
        )
    }

    /// The node id in effect: the configured one, or `HOST-PID`.
    pub fn node_id(&self) -> String {
        match &self.node_id {
            Some(id) => id.clone(),
            None => format!("{}-{}", host_name(), std::process::id()),
        }
    }

    /// Refuses values that cannot work, each with a one-line reason.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.node_id {
            let reason = if id.is_empty() {
                Some("must not be empty (leave it out for HOST-PID)".to_owned())
            } else if id.len() > Self::MAX_NODE_ID_LEN {
                Some(format!("at most {} characters", Self::MAX_NODE_ID_LEN))
            } else if !id.chars().all(is_node_id_char) {
                Some("only letters, digits, '.', '-' and '_'".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ConfigError::BadValue {
                    key: "cluster.node_id",
                    value: id.clone(),
                    reason,
                });
            }
        }
        let heartbeat = self.heartbeat_ms.unwrap_or(Self::DEFAULT_HEARTBEAT_MS);
        if !(10..=60_000).contains(&heartbeat) {
            return Err(ConfigError::BadValue {
                key: "cluster.heartbeat_ms",
                value: heartbeat.to_string(),
                reason: "expected 10 to 60000 milliseconds".into(),
            });
        }
        let timeout = self
            .node_timeout_ms
            .unwrap_or(Self::DEFAULT_NODE_TIMEOUT_MS);
        if timeout < 2 * heartbeat || timeout > 3_600_000 {
            return Err(ConfigError::BadValue {
                key: "cluster.node_timeout_ms",
                value: timeout.to_string(),
                reason: format!(
                    "expected at least twice cluster.heartbeat_ms ({}) and at most 3600000",
                    2 * heartbeat
                ),
            });
        }
        let control = self
            .control_timeout_ms
            .unwrap_or(Self::DEFAULT_CONTROL_TIMEOUT_MS);
        if !(100..=600_000).contains(&control) {
            return Err(ConfigError::BadValue {
                key: "cluster.control_timeout_ms",
                value: control.to_string(),
                reason: "expected 100 to 600000 milliseconds".into(),
            });
        }
        if let Some(advertise) = &self.advertise
            && (advertise.trim().is_empty()
                || advertise.len() > 512
                || advertise.chars().any(char::is_whitespace))
        {
            return Err(ConfigError::BadValue {
                key: "cluster.advertise",
                value: advertise.clone(),
                reason: "expected host:port or a URL without spaces, e.g. 10.0.0.5:8080".into(),
            });
        }
        Ok(())
    }
}

/// A text value that may also be written as a number: `FLOWD_CLUSTER__NODE_ID=7` reaches
/// serde as the integer 7, and a node may well be called "7".
fn text_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(
        Option::<Written>::deserialize(deserializer)?.map(|written| match written {
            Written::Text(text) => text,
            Written::Unsigned(n) => n.to_string(),
            Written::Signed(n) => n.to_string(),
        }),
    )
}

/// Characters a node id may hold: safe in logs, URLs, metric labels and file names.
fn is_node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// This machine's host name for the default node id, cut to the characters a node id may hold;
/// `localhost` when the system does not say.
fn host_name() -> String {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let name = read("/proc/sys/kernel/hostname")
        .or_else(|| read("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| is_node_id_char(*c))
        .take(ClusterSettings::MAX_NODE_ID_LEN - 12)
        .collect();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

/// Fault injection, for chaos runs and fault tests; never on in production.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    /// Adds the `panic` and `block` handlers and `POST /v1/flows/{id}/faults/freeze`. Needs a
    /// build with the cargo feature `faults` (tests and examples have it); any other build
    /// refuses to start with it on.
    pub enabled: bool,
}

/// Log output.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
    /// An OTLP/HTTP collector (`http://host:4318`) that spans are exported to, at
    /// `/v1/traces`; none (or empty) exports nothing. Needs a build with the `otlp` feature.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    pub otlp_service_name: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
            otlp_endpoint: None,
            otlp_service_name: "flowd".into(),
        }
    }
}

impl LogSettings {
    /// The OTLP collector spans go to, when export is on.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Reads `path` (or `./config.toml` when `None` and present), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_origin(path).map(|(settings, _)| settings)
    }

    /// Like [`Settings::load`], and says which file was read (or where one was looked for).
    pub fn load_with_origin(path: Option<&Path>) -> Result<(Self, ConfigOrigin), ConfigError> {
        let (file, base) = match path {
            Some(path) if !path.exists() => return Err(ConfigError::Missing(path.to_owned())),
            Some(path) => (Some(path.to_owned()), folder_of(path)),
            None => {
                let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                let default = base.join("config.toml");
                (default.exists().then_some(default), base)
            }
        };
        let origin = match &file {
            Some(file) => ConfigOrigin::File(file.clone()),
            None => ConfigOrigin::Defaults {
                looked_for: base.join("config.toml"),
            },
        };
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = &file {
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(
            Env::prefixed("FLOWD_")
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    SECTIONS
                        .iter()
                        .any(|section| key.starts_with(&format!("{section}__")))
                })
                .split("__"),
        );
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        crate::handlers::targets::TargetPolicy::new(&settings.security.http_allow)?;
        settings.database.url = resolve_sqlite_path(&settings.database.url, &base);
        settings.validate()?;
        Ok((settings, origin))
    }

    /// Refuses values of the right type that cannot work, before anything starts.
    fn validate(&self) -> Result<(), ConfigError> {
        let bind = &self.server.bind;
        let bad_bind = |reason: String| ConfigError::BadValue {
            key: "server.bind",
            value: bind.clone(),
            reason,
        };
        let Some((host, port)) = bind.rsplit_once(':') else {
            return Err(bad_bind("expected host:port, e.g. 127.0.0.1:8080".into()));
        };
        if host.is_empty() {
            return Err(bad_bind("the host is missing, e.g. 127.0.0.1:8080".into()));
        }
        match port.parse::<u64>() {
            Ok(port) if port <= u64::from(u16::MAX) => {}
            Ok(port) => {
                return Err(bad_bind(format!(
                    "port {port} is out of range (0-65535; 0 picks a free port)"
                )));
            }
            Err(_) => {
                return Err(bad_bind(format!(
                    "port `{port}` is not a number (0-65535; 0 picks a free port)"
                )));
            }
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(ConfigError::BadValue {
                key: "log.filter",
                value: self.log.filter.clone(),
                reason: format!(
                    "not a tracing filter ({error}); e.g. \"info\" or \"flowd=debug,info\""
                ),
            });
        }
        if let Some(endpoint) = self.log.otlp_endpoint()
            && let Err(reason) = crate::telemetry::check_otlp_endpoint(endpoint)
        {
            return Err(ConfigError::BadValue {
                key: "log.otlp_endpoint",
                value: endpoint.to_owned(),
                reason,
            });
        }
        let url = &self.database.url;
        if !url.starts_with("sqlite:")
            && !url.starts_with("postgres://")
            && !url.starts_with("postgresql://")
        {
            return Err(ConfigError::BadValue {
                key: "database.url",
                value: url.clone(),
                reason: "expected sqlite://PATH or postgres://user@host:port/db".into(),
            });
        }
        self.cluster.validate()
    }

    /// Settings that start but are probably not what was meant, as sentences for the log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.auth.enabled && self.auth.keys.is_empty() {
            warnings.push(
                "auth.enabled = true but auth.keys is empty: every /v1 request will be refused \
                 with 401 until a key is configured"
                    .to_owned(),
            );
        }
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if let Some(unknown) = unknown_variable(name) {
                warnings.push(unknown);
            }
        }
        warnings
    }

    /// The runtime's tuning derived from these settings.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            default_phase_timeout: Duration::from_secs(self.health.phase_timeout_s.max(1)),
            max_batch: self.database.max_batch.max(1),
            ping_interval: Duration::from_millis(self.health.ping_interval_ms.max(10)),
            ping_timeout: Duration::from_millis(self.health.ping_timeout_ms.max(10)),
            stored_sweep_interval: match self.health.stored_sweep_ms {
                Some(ms) => Duration::from_millis(ms.max(10)),
                None => Duration::from_secs(self.health.stored_sweep_s.max(1)),
            },
            restart_intensity: RestartIntensity {
                max_restarts: self.health.max_restarts,
                window: Duration::from_secs(self.health.restart_window_s),
            },
            limits: Limits {
                max_phases: self.limits.max_phases.max(1),
                max_retries: self.limits.max_retries,
                max_children: self.limits.max_children,
                max_child_depth: self.limits.max_child_depth.max(1),
                max_transitions_per_flow: self.limits.max_transitions_per_flow.max(1),
                ..Limits::default()
            },
            max_metric_series: self.metrics.max_label_values.max(1),
            ..RuntimeConfig::default()
        }
    }
}

/// `FLOWD_*` variables that flowd itself reads, besides `FLOWD_<SECTION>__<KEY>`.
const OTHER_VARIABLES: [&str; 5] = [
    "FLOWD_CONFIG",
    "FLOWD_URL",
    "FLOWD_API_KEY",
    "FLOWD_TEST_POSTGRES_URL",
    "FLOWD_BENCH_POSTGRES_URL",
];

/// A warning for a `FLOWD_*` variable that configures nothing, e.g. `FLOWD_SERVER_BIND` (one
/// underscore) or `FLOWD_SERVR__BIND`: without it, the typo would be ignored in silence.
fn unknown_variable(name: &str) -> Option<String> {
    let rest = name.strip_prefix("FLOWD_")?;
    if OTHER_VARIABLES.contains(&name) {
        return None;
    }
    let known_section = rest
        .split_once("__")
        .is_some_and(|(section, _)| SECTIONS.contains(&section.to_ascii_lowercase().as_str()));
    (!known_section).then(|| {
        format!(
            "the environment variable {name} configures nothing: overrides are \
             FLOWD_<SECTION>__<KEY> (two underscores), with a section among {}",
            SECTIONS.join(", ")
        )
    })
}

fn folder_of(path: &Path) -> PathBuf {
    let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let folder = if folder.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        folder
    };
    folder.canonicalize().unwrap_or(folder)
}

/// `sqlite://relative/x.db` → `sqlite:///abs/base/relative/x.db`; other URLs are kept.
fn resolve_sqlite_path(url: &str, base: &Path) -> String {
    match url.strip_prefix("sqlite://") {
        Some(path) if !Path::new(path).is_absolute() => {
            format!("sqlite://{}", base.join(path).display())
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_sqlite_paths_follow_the_config_folder() {
        let base = Path::new("/etc/flowd");
        assert_eq!(
            resolve_sqlite_path("sqlite://data/f.db", base),
            "sqlite:///etc/flowd/data/f.db"
        );
        assert_eq!(
            resolve_sqlite_path("sqlite:///var/f.db", base),
            "sqlite:///var/f.db"
        );
        assert_eq!(
            resolve_sqlite_path("postgres://u@h/db", base),
            "postgres://u@h/db"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn a_file_overrides_defaults() {
        // In a Jail, like every test that reads FLOWD_* variables, so none sees another's.
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[server]\nbind = \"127.0.0.1:9999\"\n[[flow_types]]\nname = \"x\"\nversion = 1\n[[flow_types.phases]]\nname = \"a\"\nhandler = \"noop\"\n",
            )?;
            let settings = Settings::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.server.bind, "127.0.0.1:9999");
            assert_eq!(settings.flow_types[0].phases[0].weight, 1);
            assert!(settings.database.url.ends_with("/data/flowd.db"));
            assert!(settings.database.url.starts_with("sqlite:///"));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn environment_variables_override_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nbind = \"127.0.0.1:1\"\n")?;
            jail.set_env("FLOWD_SERVER__BIND", "127.0.0.1:2");
            jail.set_env("FLOWD_DATABASE__URL", "postgres://u@h/db");
            jail.set_env("FLOWD_CONFIG", "ignored.toml");
            let settings = Settings::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.server.bind, "127.0.0.1:2");
            assert_eq!(settings.database.url, "postgres://u@h/db");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn keys_carry_a_role_and_allow_entries_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[[auth.keys]]\nkey = \"a\"\nclient_account_id = \"o\"\nengagement_id = \"o\"\nrole = \"admin\"\n[[auth.keys]]\nkey = \"t\"\nclient_account_id = \"c\"\nengagement_id = \"e\"\n[security]\nhttp_allow = [\"10.0.0.0/8\", \"svc:8080\"]\n[limits]\nmax_transitions_per_flow = 7\n",
            )?;
            let settings = Settings::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.auth.keys[0].role, Role::Admin);
            assert_eq!(settings.auth.keys[1].role, Role::Tenant);
            assert_eq!(settings.runtime_config().limits.max_transitions_per_flow, 7);
            jail.create_file("bad.toml", "[security]\nhttp_allow = [\"host:port\"]\n")?;
            assert!(matches!(
                Settings::load(Some(Path::new("bad.toml"))),
                Err(ConfigError::BadAllowEntry(_))
            ));
            Ok(())
        });
    }

    #[test]
    fn misspelled_variables_are_named() {
        assert!(unknown_variable("FLOWD_SERVER__BIND").is_none());
        assert!(unknown_variable("FLOWD_CONFIG").is_none());
        assert!(unknown_variable("PATH").is_none());
        let warning = unknown_variable("FLOWD_SERVER_BIND").expect("a warning");
        assert!(warning.contains("FLOWD_SERVER_BIND") && warning.contains("two underscores"));
        assert!(unknown_variable("FLOWD_SERVR__BIND").is_some());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn cluster_keys_are_read_and_checked() {
        figment::Jail::expect_with(|jail| {
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            let id = settings.cluster.node_id();
            assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
            assert!(id.chars().all(is_node_id_char), "{id}");
            assert_eq!(settings.cluster.heartbeat(), Duration::from_secs(1));
            assert_eq!(settings.cluster.node_timeout(), Duration::from_secs(5));
            assert_eq!(settings.cluster.control_timeout(), Duration::from_secs(10));

            jail.create_file(
                "c.toml",
                "[cluster]\nnode_id = \"node-a\"\nheartbeat_ms = 200\nnode_timeout_ms = 1000\nadvertise = \"10.0.0.5:8080\"\ncontrol_timeout_ms = 2500\n",
            )?;
            let settings = Settings::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.cluster.node_id(), "node-a");
            assert_eq!(settings.cluster.heartbeat(), Duration::from_millis(200));
            assert_eq!(settings.cluster.advertise.as_deref(), Some("10.0.0.5:8080"));
            assert_eq!(
                settings.cluster.control_timeout(),
                Duration::from_millis(2500)
            );

            for (toml, key) in [
                ("node_id = \"a b\"", "cluster.node_id"),
                ("node_id = \"\"", "cluster.node_id"),
                ("heartbeat_ms = 0", "cluster.heartbeat_ms"),
                (
                    "heartbeat_ms = 1000\nnode_timeout_ms = 1500",
                    "cluster.node_timeout_ms",
                ),
                ("advertise = \" \"", "cluster.advertise"),
                ("control_timeout_ms = 50", "cluster.control_timeout_ms"),
            ] {
                jail.create_file("bad.toml", &format!("[cluster]\n{toml}\n"))?;
                let error = Settings::load(Some(Path::new("bad.toml"))).expect_err(toml);
                let text = error.to_string();
                assert!(text.contains(key) && !text.contains('\n'), "{toml}: {text}");
            }
            jail.create_file("typo.toml", "[cluster]\nheartbeat = 5\n")?;
            assert!(matches!(
                Settings::load(Some(Path::new("typo.toml"))),
                Err(ConfigError::Invalid(_))
            ));
            jail.set_env("FLOWD_CLUSTER__NODE_ID", "from-env");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.cluster.node_id(), "from-env");
            jail.set_env("FLOWD_CLUSTER__NODE_ID", "7");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.cluster.node_id(), "7");
            Ok(())
        });
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        assert!(matches!(
            Settings::load(Some(Path::new("/nonexistent/c.toml"))),
            Err(ConfigError::Missing(_))
        ));
    }
}
