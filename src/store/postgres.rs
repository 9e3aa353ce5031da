//! PostgreSQL: the scale-out backend, through tokio-postgres (no libpq).

use diesel::ConnectionError;
use diesel::QueryResult;
use diesel_async::RunQueryDsl;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::ManagerConfig;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use flowd_actors::store::StoreError;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, try_join_all};

use super::columns::Columns;
use super::{Plan, TxError};

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

/// Planner settings of the commit connection. Its statements reach rows by primary key only, but
/// each is prepared once and keeps the plan made then. Made while `flows` was nearly empty, the
/// flows update kept a hash join over a sequential scan of the whole table long after the table
/// had grown (628 scans reading 5.6 million rows in one 20,000-flow benchmark run). Without
/// sequential scans, hash and merge joins, every plan on this connection is a lookup by key,
/// whatever the table's size when it was made.
const WRITER_PLANNER: &str =
    "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// The commit connection: a pool of one, which reconnects after a failure like any pool, each
/// connection with `WRITER_PLANNER`. Once migrated by [`connect`].
pub fn writer(url: &str) -> Result<PgPool, StoreError> {
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(|url| {
        async move {
            let mut conn =
                <AsyncPgConnection as diesel_async::AsyncConnection>::establish(url).await?;
            conn.batch_execute(WRITER_PLANNER)
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    Pool::builder(AsyncDieselConnectionManager::new_with_config(url, config))
        .max_size(1)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot build the PostgreSQL writer: {e}")))
}

/// The advisory lock key under which nodes migrate, one at a time (`flowd` in ASCII).
const MIGRATION_LOCK: i64 = 0x0066_6c6f_7764;

/// Runs the pending migrations holding `pg_advisory_lock(MIGRATION_LOCK)`. Several nodes
/// starting at once on an empty database would otherwise race: `CREATE TABLE` (and diesel's own
/// `CREATE TABLE IF NOT EXISTS __diesel_schema_migrations`) fails with a unique violation on
/// `pg_type` in all but one of them. Under the lock the first node migrates and the others wait,
/// then find nothing pending. The lock is a session lock: if this process dies mid-migration the
/// connection closes and PostgreSQL releases it.
fn migrate(url: &str) -> Result<(), StoreError> {
    use diesel::Connection;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
    let lock = |conn: &mut AsyncConnectionWrapper<AsyncPgConnection>, function: &str| {
        diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("SELECT {function}($1)"))
                .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK),
            conn,
        )
        .map_err(|e| StoreError::Unavailable(format!("{function} failed: {e}")))
    };
    lock(&mut conn, "pg_advisory_lock")?;
    let migrated = conn
        .run_pending_migrations(MIGRATIONS)
        .map(drop)
        .map_err(|e| StoreError::Unavailable(format!("migrating PostgreSQL failed: {e}")));
    // Released also when the connection closes just below; unlocking first lets a waiting node
    // go on without waiting for the disconnect.
    let unlocked = lock(&mut conn, "pg_advisory_unlock");
    migrated.and(unlocked.map(drop))
}

/// Writes a planned batch inside the caller's transaction, one statement per table that has
/// rows ([`Columns`]): on PostgreSQL every statement is a network round trip, so a batch
/// of a thousand transitions costs a handful of them rather than thousands. Each text depends
/// only on its table, so it stays prepared on the connection, and the statements are
/// pipelined: each is sent without waiting for the one before it, and PostgreSQL still runs
/// them in order. A one-transition commit is BEGIN, one round trip for its statements, and
/// COMMIT.
pub(super) async fn write_plan(c: &mut AsyncPgConnection, plan: &Plan<'_>) -> Result<(), TxError> {
    let conn: &AsyncPgConnection = c;
    // Each statement, with the rows it must touch when that is checked (flow updates).
    let mut planned: Vec<(Columns<'_>, Option<usize>)> = Vec::new();
    if !plan.flow_types.is_empty() {
        planned.push((Columns::insert(&plan.flow_types), None));
    }
    if !plan.new_flows.is_empty() {
        planned.push((Columns::insert(&plan.new_flows), None));
    }
    if !plan.flow_changes.is_empty() {
        // Keyed by id and deduplicated, so each change matches exactly one row.
        let expected = Some(plan.flow_changes.len());
        planned.push((Columns::update(&plan.flow_changes), expected));
    }
    if !plan.phases.is_empty() {
        planned.push((Columns::insert(&plan.phases), None));
    }
    if !plan.events.is_empty() {
        planned.push((Columns::insert(&plan.events), None));
    }
    if !plan.failures.is_empty() {
        planned.push((Columns::insert(&plan.failures), None));
    }
    // Deduplicated by id in the plan: one statement may not upsert a row twice.
    if !plan.tasks.is_empty() {
        planned.push((Columns::insert(&plan.tasks), None));
    }
    let (statements, expected): (Vec<BoxFuture<'_, QueryResult<usize>>>, Vec<_>) = planned
        .into_iter()
        .map(|(statement, expected)| (statement.execute(&mut &*conn), expected))
        .unzip();
    // Outputs come back in the order sent, so the first error is the statement that failed,
    // not one that PostgreSQL refused afterwards because the transaction was already aborted.
    let touched = try_join_all(statements).await?;
    for (rows, expected) in touched.into_iter().zip(expected) {
        if let Some(expected) = expected.filter(|&expected| expected != rows) {
            return Err(TxError::MissingFlows(expected.saturating_sub(rows)));
        }
    }
    Ok(())
}
