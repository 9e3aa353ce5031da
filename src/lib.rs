//! flowd: the application shell around the `flowd-actors` runtime.
//!
//! - [`cli`]: the command-line client of a running server.
//! - [`configuration`]: typed settings from `config.toml` and `FLOWD_*` variables.
//! - [`telemetry`]: the tracing subscriber.
//! - [`handlers`]: the `command` and `http` phase handlers, for phases outside the process.
//! - [`startup`]: builds store, runtime and HTTP server as one [`startup::Application`].
//! - [`store`]: the diesel stores for SQLite and PostgreSQL.
//! - [`http`]: the v1 API, problem+json errors and tenancy, its websocket progress streams
//!   ([`http::ws`]) among its resources.
//! - `testing` (cargo feature `testing`): throw-away databases and the real server as a child
//!   process, for tests and the harness.
pub mod cli;
pub mod configuration;
pub mod handlers;
pub mod http;
pub mod startup;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
