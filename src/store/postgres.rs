//! PostgreSQL: the scale-out backend, through tokio-postgres (no libpq).

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use flowd_actors::store::StoreError;

/// The PostgreSQL pool.
pub type PgPool = Pool<AsyncPgConnection>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Migrates the database and builds the pool.
pub async fn connect(url: &str, pool_size: usize) -> Result<PgPool, StoreError> {
    let migrate_url = url.to_owned();
    // `AsyncMigrationHarness` calls `block_in_place`, which panics on the current-thread runtime
    // of `#[actix_web::main]`; a blocking task with the sync wrapper works on every runtime.
    tokio::task::spawn_blocking(move || migrate(&migrate_url))
        .await
        .map_err(|e| StoreError::Unavailable(format!("migration task failed: {e}")))??;

    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    Pool::builder(manager)
        .max_size(pool_size.max(1))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot build the PostgreSQL pool: {e}")))
}

fn migrate(url: &str) -> Result<(), StoreError> {
    use diesel::Connection;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Unavailable(format!("migrating PostgreSQL failed: {e}")))?;
    Ok(())
}
