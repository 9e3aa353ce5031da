//! SQLite: the embedded default. A file database in WAL mode, one writer (the persistence actor)
//! and any number of readers, each pooled connection set up with the same pragmas.

use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use flowd_actors::store::StoreError;
use futures_util::FutureExt;

/// The async connection type of the SQLite pool: a blocking connection driven on tokio's
/// blocking threads.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// The SQLite pool.
pub type SqlitePool = Pool<SqliteConn>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Set on every connection: WAL lets readers run beside the writer; `busy_timeout` makes a
/// second writer wait instead of failing; `synchronous=NORMAL` is durable in WAL mode except
/// for the last commits before a power loss; foreign keys are off by default in SQLite.
const PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                       PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// The file path of a `sqlite://path` (or `sqlite:path`) URL.
pub fn path_of(url: &str) -> PathBuf {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    PathBuf::from(path)
}

/// Creates the database file's folder, migrates the database and builds the pool.
pub async fn connect(url: &str, pool_size: usize) -> Result<SqlitePool, StoreError> {
    let path = path_of(url);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    let path_text = path
        .to_str()
        .ok_or_else(|| StoreError::Unavailable(format!("{} is not a UTF-8 path", path.display())))?
        .to_owned();

    // Migrations are synchronous; keep them off the (possibly current-thread) runtime.
    let migrate_path = path_text.clone();
    tokio::task::spawn_blocking(move || migrate(&migrate_path))
        .await
        .map_err(|e| StoreError::Unavailable(format!("migration task failed: {e}")))??;

    let mut config = ManagerConfig::<SqliteConn>::default();
    config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        async move {
            let mut conn = SqliteConn::establish(&url).await?;
            conn.batch_execute(PRAGMAS)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    // A local file does not drop connections: skip the test query on every checkout.
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path_text, config);
    Pool::builder(manager)
        .max_size(pool_size.max(1))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot build the SQLite pool: {e}")))
}

fn migrate(path: &str) -> Result<(), StoreError> {
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {path}: {e}")))?;
    conn.batch_execute(PRAGMAS)
        .map_err(|e| StoreError::Unavailable(format!("cannot set up {path}: {e}")))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Unavailable(format!("migrating {path} failed: {e}")))?;
    Ok(())
}

/// Whether `url` names a SQLite database.
pub fn is_sqlite_url(url: &str) -> bool {
    url.starts_with("sqlite:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn strips_the_scheme() {
        assert_eq!(
            path_of("sqlite://data/flowd.db"),
            Path::new("data/flowd.db")
        );
        assert_eq!(path_of("sqlite:///tmp/x.db"), Path::new("/tmp/x.db"));
        assert_eq!(path_of("sqlite:x.db"), Path::new("x.db"));
    }
}
