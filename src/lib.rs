//! flowd: the application shell around the `flowd-actors` runtime.
//!
//! - [`store`]: the diesel stores for SQLite and PostgreSQL.
pub mod store;
