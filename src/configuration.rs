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
    /// A value is malformed or of the wrong type.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// An `[security] http_allow` entry is not understood.
    #[error("invalid configuration: {0}")]
    BadAllowEntry(#[from] crate::handlers::targets::BadEntry),
}

/// Sections that `FLOWD_<SECTION>__<KEY>` variables may override; other `FLOWD_*` variables
/// (e.g. `FLOWD_CONFIG`, `FLOWD_TEST_POSTGRES_URL`) are not configuration keys.
const SECTIONS: [&str; 9] = [
    "server", "database", "health", "auth", "log", "faults", "limits", "security", "metrics",
];

/// Everything flowd reads from its configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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

/// Fault injection, for chaos runs and fault tests; never on in production.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    /// Adds the `panic` and `block` handlers and `POST /v1/flows/{id}/faults/freeze`.
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
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
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
        let (file, base) = match path {
            Some(path) if !path.exists() => return Err(ConfigError::Missing(path.to_owned())),
            Some(path) => (Some(path.to_owned()), folder_of(path)),
            None => {
                let default = PathBuf::from("config.toml");
                let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                (default.exists().then_some(default), base)
            }
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
        Ok(settings)
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
    fn a_missing_explicit_file_is_an_error() {
        assert!(matches!(
            Settings::load(Some(Path::new("/nonexistent/c.toml"))),
            Err(ConfigError::Missing(_))
        ));
    }
}
