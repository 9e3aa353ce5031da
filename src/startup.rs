//! Builds the whole application — store, runtime, HTTP server — so the binary, tests and
//! examples start exactly the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use flowd_actors::Runtime;
use flowd_actors::error::RuntimeError;
use flowd_actors::handler::HandlerSet;
use flowd_actors::store::StoreError;
use tracing_actix_web::TracingLogger;

use crate::configuration::Settings;
use crate::http::{self, auth::KeyRing, errors};
use crate::store::DbStore;
use crate::telemetry::RequestSpan;

/// Why the application could not start. Each message is whole (it names what failed and
/// why), so none of them chains a `source` that would print the same text again.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database refused to open or migrate.
    #[error("database {target}: {error}")]
    Database { target: String, error: StoreError },
    /// PostgreSQL does not accept connections at the configured host and port.
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    DatabaseUnreachable { target: String, reason: String },
    /// The runtime could not start, e.g. a configured flow type is refused.
    #[error("{0}")]
    Runtime(RuntimeError),
    /// A flow type in the configuration is invalid; nothing has started yet.
    #[error("flow type `{name}` in the configuration is invalid: {error}")]
    InvalidFlowType {
        name: String,
        error: flowd_actors::definition::DefinitionError,
    },
    /// The listen address is taken, not ours or malformed.
    #[error("cannot listen on {bind}: {reason}")]
    Bind {
        bind: String,
        reason: std::io::Error,
    },
    /// `[faults] enabled = true` in a build without fault injection: refused, not ignored.
    #[error(
        "`faults.enabled` is on, but this flowd was built without fault injection (the cargo \
         feature `faults`, for tests and chaos runs): turn it off"
    )]
    FaultsNotBuilt,
}

impl From<RuntimeError> for StartupError {
    fn from(error: RuntimeError) -> Self {
        Self::Runtime(error)
    }
}

/// Where a database URL points, for messages: the SQLite file, or PostgreSQL's `host:port`
/// (never the user or password).
pub fn database_target(url: &str) -> String {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return path.to_owned();
    }
    postgres_target(url).unwrap_or_else(|| "(PostgreSQL)".to_owned())
}

/// `host:port` of a `postgres://user:pw@host:port/db` URL; the port defaults to 5432.
fn postgres_target(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return None;
    }
    let has_port = match host_port.rsplit_once(':') {
        Some((_, port)) => !port.contains(']'),
        None => false,
    };
    Some(if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    })
}

/// Fault injection exists only in a build with the cargo feature `faults` (`built`); a config
/// that asks for it anywhere else fails startup instead of running without it.
fn check_faults(requested: bool, built: bool) -> Result<(), StartupError> {
    if requested && !built {
        return Err(StartupError::FaultsNotBuilt);
    }
    Ok(())
}

/// Fails fast, with the host, port and the operating system's reason, when PostgreSQL does not
/// accept TCP connections; the driver's own error says only "error connecting to server".
async fn check_postgres_reachable(url: &str) -> Result<(), StartupError> {
    let Some(target) = postgres_target(url) else {
        return Ok(());
    };
    let connect = actix_web::rt::net::TcpStream::connect(target.clone());
    match actix_web::rt::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(StartupError::DatabaseUnreachable {
            target,
            reason: error.to_string(),
        }),
        Err(_) => Err(StartupError::DatabaseUnreachable {
            target,
            reason: "no answer within 5 s".to_owned(),
        }),
    }
}

/// A started flowd: the runtime is running and the server is bound.
pub struct Application {
    address: SocketAddr,
    server: Server,
    runtime: Runtime,
}

impl Application {
    /// Starts flowd with the built-in handlers (and the fault-injection ones when enabled).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let mut handlers = HandlerSet::with_builtins();
        crate::handlers::register(&mut handlers, &settings.security);
        #[cfg(feature = "faults")]
        if settings.faults.enabled {
            tracing::warn!("fault injection is enabled: never do this in production");
            flowd_actors::builtin::register_faults(&mut handlers);
        }
        Self::build_with_handlers(settings, handlers).await
    }

    /// Starts flowd with extra Rust handlers registered by the embedding program.
    pub async fn build_with_handlers(
        settings: Settings,
        handlers: HandlerSet,
    ) -> Result<Self, StartupError> {
        check_faults(settings.faults.enabled, cfg!(feature = "faults"))?;
        // Configured flow types before anything starts, so the message can name the type.
        // `child_flows` and `external` are added by the runtime itself.
        for flow_type in &settings.flow_types {
            let known =
                |name: &str| handlers.contains(name) || matches!(name, "child_flows" | "external");
            flow_type
                .validate(known)
                .map_err(|error| StartupError::InvalidFlowType {
                    name: flow_type.name.clone(),
                    error,
                })?;
        }
        // The address first: when it is taken, say so before anything else has started.
        std::net::TcpListener::bind(&settings.server.bind).map_err(|reason| {
            StartupError::Bind {
                bind: settings.server.bind.clone(),
                reason,
            }
        })?;
        let url = &settings.database.url;
        check_postgres_reachable(url).await?;
        let store =
            DbStore::connect_with_sync(url, settings.database.pool_size, settings.database.sync)
                .await
                .map_err(|error| StartupError::Database {
                    target: database_target(url),
                    error,
                })?;
        tracing::info!(backend = store.backend_name(), "database ready");
        let runtime = Runtime::start(
            settings.runtime_config(),
            Arc::new(store),
            handlers,
            settings.flow_types.clone(),
        )
        .await?;
        let runtime_data = web::Data::new(runtime.clone());
        let keys = web::Data::new(KeyRing::new(&settings));
        let max_body = settings.server.max_body_bytes;
        let faults_enabled = settings.faults.enabled;
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<RequestSpan>::new())
                .app_data(runtime_data.clone())
                .app_data(keys.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(max_body)
                        .error_handler(|e, _| errors::json_error(e).into()),
                )
                .app_data(
                    web::QueryConfig::default().error_handler(|e, _| errors::query_error(e).into()),
                )
                .app_data(web::PayloadConfig::default().limit(max_body))
                .configure(|config| http::routes(config, faults_enabled))
                .default_service(web::to(http::not_found))
        });
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers.max(1));
        }
        let bind_error = |reason| StartupError::Bind {
            bind: settings.server.bind.clone(),
            reason,
        };
        // Small frames (websocket events) must not wait for delayed ACKs; bursts of
        // subscribers connecting at once must not find the accept queue full.
        let server = server
            .tcp_nodelay(true)
            .backlog(4096)
            .bind(&settings.server.bind)
            .map_err(bind_error)?;
        let address = server.addrs().first().copied().ok_or_else(|| {
            bind_error(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no address bound",
            ))
        })?;
        let server = server.run();
        Ok(Self {
            address,
            server,
            runtime,
        })
    }

    /// The bound address (useful with port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The runtime, for embedding programs.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Serves until the process is told to stop (SIGINT/SIGTERM).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_without_the_feature_are_refused_in_one_line() {
        assert!(check_faults(false, false).is_ok());
        assert!(check_faults(false, true).is_ok());
        assert!(check_faults(true, true).is_ok());
        let refused = check_faults(true, false).expect_err("no fault injection built in");
        let message = refused.to_string();
        assert!(message.contains("faults.enabled"), "{message}");
        assert!(message.contains("cargo feature `faults`"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn database_targets_name_host_and_port_never_the_password() {
        assert_eq!(
            database_target("postgres://u:secret@db.local:5433/flowd"),
            "db.local:5433"
        );
        assert_eq!(
            database_target("postgresql://u@10.0.0.1/flowd"),
            "10.0.0.1:5432"
        );
        assert_eq!(database_target("postgres://[::1]:6000/x"), "[::1]:6000");
        assert_eq!(database_target("postgres://[::1]/x"), "[::1]:5432");
        assert_eq!(database_target("sqlite:///var/f.db"), "/var/f.db");
    }
}
