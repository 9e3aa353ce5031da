//! What tests, the load harness and the chaos run need around a real flowd, written once:
//! a throw-away database per test or run ([`TestDatabase`]) and the real `flowd` binary as a
//! child process on a free port ([`TestServer`]).
//!
//! Behind the `testing` cargo feature, so a server build carries none of it. The crate's own
//! tests and examples turn it on through a dev-dependency on the crate itself (see
//! `Cargo.toml`), so `cargo test` and `cargo run --example …` need no extra flags.

mod database;
mod server;

pub use database::{Backend, TestDatabase, postgres_admin_url};
pub use server::{ServerLogs, TestServer, server_binary};

/// Why a test database or server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// The scratch directory could not be made.
    #[error("no temp dir: {0}")]
    TempDir(#[source] std::io::Error),
    /// `psql` could not run, or refused a statement on the admin database.
    #[error("psql on {admin}: {detail}")]
    Psql { admin: String, detail: String },
    /// The admin URL has no database path to put the throw-away database's name in.
    #[error("PostgreSQL admin URL without a database path: {0}")]
    AdminUrl(String),
    /// A backend name other than `sqlite` or `postgres`.
    #[error("unknown backend `{0}`: expected `sqlite` or `postgres`")]
    UnknownBackend(String),
    /// The `flowd` binary is not where a build puts it.
    #[error(
        "no flowd binary at {0}: build the server first (`cargo build --bin flowd`, or \
         `--release` for release examples)"
    )]
    NoBinary(std::path::PathBuf),
    /// The binary did not start, or its first line was not the listening line.
    #[error("flowd did not start: {0}")]
    Start(String),
}
