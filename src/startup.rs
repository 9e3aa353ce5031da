//! Builds the whole application — store, runtime, HTTP server — so the binary, tests and
//! examples start exactly the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use flowd_actors::Runtime;
use flowd_actors::cluster::{Cluster, ClusterError, NodeConfig, NodeStore};
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
    /// Another process holds the SQLite database: SQLite is single-node.
    #[error(
        "database {path} is in use by another flowd process (it holds {lock}); SQLite is \
         single-node: stop that process, or use PostgreSQL to run several nodes"
    )]
    DatabaseInUse { path: String, lock: String },
    /// This node could not register in the `nodes` table.
    #[error("cannot join the cluster of the database: {0}")]
    Cluster(ClusterError),
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

/// Takes `<db>.lock` beside a SQLite database, exclusively, for as long as the returned file
/// lives (the process's life, through [`Application`]): a second flowd on the same file finds
/// it held and refuses to start, before it migrates or writes anything. The operating system
/// releases the lock when the process ends in any way, SIGKILL included, so a crash never
/// leaves a stale lock behind. Not for PostgreSQL, whose nodes share a database by design.
fn lock_sqlite(url: &str) -> Result<Option<std::fs::File>, StartupError> {
    if !crate::store::sqlite::is_sqlite_url(url) {
        return Ok(None);
    }
    let path = crate::store::sqlite::path_of(url);
    if path.as_os_str().is_empty() || path.to_string_lossy().starts_with(':') {
        return Ok(None); // an in-memory database belongs to this process alone
    }
    let mut lock = path.clone().into_os_string();
    lock.push(".lock");
    let lock = std::path::PathBuf::from(lock);
    let unavailable = |what: String| StartupError::Database {
        target: path.display().to_string(),
        error: StoreError::Unavailable(what),
    };
    if let Some(parent) = lock.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", parent.display())))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| unavailable(format!("cannot open {}: {e}", lock.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartupError::DatabaseInUse {
            path: path.display().to_string(),
            lock: lock.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(unavailable(format!("cannot lock {}: {e}", lock.display())))
        }
    }
}

/// How often a node of a PostgreSQL cluster reads other nodes' events even without a
/// notification (docs/cluster.md, 2.5): a notification is lost when the listening connection
/// drops.
const CLUSTER_EVENTS_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a node waiting for another node's reply to a control reads it without a
/// notification (docs/cluster.md, 2.6).
const CONTROL_REPLY_BACKSTOP: std::time::Duration = std::time::Duration::from_millis(500);

/// A started flowd: the runtime is running, the node has joined its cluster and the server is
/// bound.
pub struct Application {
    address: SocketAddr,
    server: Server,
    runtime: Runtime,
    cluster: Cluster,
    /// Held, never read: the SQLite database's `<db>.lock` (see [`lock_sqlite`]).
    _sqlite_lock: Option<std::fs::File>,
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
        // Before the database is opened (and migrated): a second process stops here.
        let sqlite_lock = lock_sqlite(url)?;
        check_postgres_reachable(url).await?;
        let store =
            DbStore::connect_with_sync(url, settings.database.pool_size, settings.database.sync)
                .await
                .map_err(|error| StartupError::Database {
                    target: database_target(url),
                    error,
                })?;
        tracing::info!(backend = store.backend_name(), "database ready");
        let store = Arc::new(store.with_node(&settings.cluster.node_id()));
        let nodes: Arc<dyn NodeStore> = store.clone();
        let cluster = Cluster::join(
            NodeConfig {
                node_id: settings.cluster.node_id(),
                advertise: settings.cluster.advertise.clone(),
                heartbeat: settings.cluster.heartbeat(),
                node_timeout: settings.cluster.node_timeout(),
            },
            nodes,
        )
        .await
        .map_err(StartupError::Cluster)?;
        let mut runtime_config = settings.runtime_config();
        // On PostgreSQL other nodes may commit events too: streams carry theirs (SQLite is
        // single-node, nothing changes there).
        let postgres = crate::store::postgres::is_postgres_url(url);
        if postgres {
            runtime_config.cluster_events = Some(CLUSTER_EVENTS_BACKSTOP);
            // Workers may lease and report on any node (docs/cluster.md, 2.6).
            let rows: Arc<dyn flowd_actors::queue::SharedTasks> = store.clone();
            runtime_config.shared_tasks = Some(flowd_actors::queue::SharedTaskRows(rows));
        }
        let runtime = match Runtime::start(
            runtime_config,
            store.clone(),
            handlers,
            settings.flow_types.clone(),
        )
        .await
        {
            Ok(runtime) => runtime,
            Err(error) => {
                // Say goodbye rather than be reported `down` as if this node had crashed.
                let _ = cluster.leave().await;
                return Err(error.into());
            }
        };
        runtime.attach_to(&cluster);
        if let Some(tail) = runtime.event_tail() {
            use crate::store::listen::{ControlsChannel, EventsChannel, Subscriber};
            use crate::store::tasks_cluster::TasksChannel;
            // Controls of flows another node owns go to their owner through the database
            // (PostgreSQL only, like the tail); flows of this node keep the local path.
            let controls: Arc<dyn flowd_actors::controls::ControlStore> = store.clone();
            let remote = runtime.route_controls(
                controls,
                flowd_actors::controls::ControlSettings {
                    node_id: settings.cluster.node_id(),
                    timeout: settings.cluster.control_timeout(),
                    poll: CONTROL_REPLY_BACKSTOP,
                },
            );
            let subscribers: Vec<Arc<dyn Subscriber>> = vec![
                Arc::new(EventsChannel(tail.clone())),
                Arc::new(ControlsChannel(remote)),
                Arc::new(TasksChannel(runtime.task_notifications())),
            ];
            crate::store::listen::start(url, subscribers);
        }
        let runtime_data = web::Data::new(runtime.clone());
        let cluster_data = web::Data::new(cluster.clone());
        let keys = web::Data::new(KeyRing::new(&settings));
        let max_body = settings.server.max_body_bytes;
        let faults_enabled = settings.faults.enabled;
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<RequestSpan>::new())
                .app_data(runtime_data.clone())
                .app_data(cluster_data.clone())
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
        // Signals are handled in `run_until_stopped`: actix's own handling stops the whole
        // system 300 ms after the server, too early to tell the cluster this node stopped.
        let server = server
            .disable_signals()
            .tcp_nodelay(true)
            .backlog(4096)
            .on_connect(limit_unacknowledged_writes)
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
            cluster,
            _sqlite_lock: sqlite_lock,
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

    /// This node's membership of the cluster, for embedding programs.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Serves until the process is told to stop, as actix-web would by itself: SIGTERM stops
    /// gracefully (requests in flight finish), SIGINT and SIGQUIT at once. Then marks this node
    /// stopped, so the cluster reports a goodbye, not a crash.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        use actix_web::rt::signal::unix::{SignalKind, signal};
        let (mut term, mut int, mut quit) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::quit())?,
        );
        // The SQLite lock stays held until this returns, i.e. until the process exits.
        let Self {
            mut server,
            cluster,
            _sqlite_lock: _held_until_exit,
            ..
        } = self;
        let handle = server.handle();
        let graceful = tokio::select! {
            served = &mut server => return leave(&cluster, served).await,
            _ = term.recv() => true,
            _ = int.recv() => false,
            _ = quit.recv() => false,
        };
        tracing::info!(graceful, "stop signal received; shutting down");
        // The server future runs the stop command: drive both.
        let (_, served) = futures_util::future::join(handle.stop(graceful), server).await;
        leave(&cluster, served).await
    }
}

/// Marks this node stopped; `served` is passed through. Bounded in time: a process told to
/// stop exits even when the database does not answer (the node then reads as `down`).
async fn leave(cluster: &Cluster, served: std::io::Result<()>) -> std::io::Result<()> {
    let deadline = std::time::Duration::from_secs(3);
    match actix_web::rt::time::timeout(deadline, cluster.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "the node's row was not marked stopped"),
        Err(_) => tracing::warn!("the node's row was not marked stopped within 3 s"),
    }
    served
}

/// How long what the server wrote may go unacknowledged, or a peer's receive window stay
/// closed, before the kernel drops the connection. A websocket stream ends when its client
/// stops reading (`http::ws`), and any response can meet such a client; without this limit
/// the connection would wait forever to flush what it holds, with its buffers.
const UNACKNOWLEDGED_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Sets [`UNACKNOWLEDGED_WRITE_LIMIT`] (`TCP_USER_TIMEOUT`) on each accepted connection.
fn limit_unacknowledged_writes(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    #[cfg(target_os = "linux")]
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Err(error) =
            socket2::SockRef::from(stream).set_tcp_user_timeout(Some(UNACKNOWLEDGED_WRITE_LIMIT))
    {
        tracing::debug!(%error, "TCP_USER_TIMEOUT not set on a connection");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = connection;
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
