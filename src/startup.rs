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

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
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
        let store = DbStore::connect_with_sync(
            &settings.database.url,
            settings.database.pool_size,
            settings.database.sync,
        )
        .await?;
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
                .wrap(TracingLogger::<http::auth::RedactedRootSpan>::new())
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
        let bind_error = |source| StartupError::Bind {
            bind: settings.server.bind.clone(),
            source,
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
