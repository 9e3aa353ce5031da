//! PostgreSQL: the scale-out backend, through tokio-postgres (no libpq).

use diesel::ConnectionError;
use diesel::QueryResult;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
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

use super::schema::sql_types::{SqlJson, SqlTime, SqlUuid};
use super::schema::{DbJsonRef, DbTime, DbUuid};
use super::{Plan, TxError, columns};

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
            diesel::sql_query(format!("SELECT {function}($1)")).bind::<BigInt, _>(MIGRATION_LOCK),
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
/// rows ([`columns::Columns`]): on PostgreSQL every statement is a network round trip, so a batch
/// of a thousand transitions costs a handful of them rather than thousands. Each text depends
/// only on its table, so it stays prepared on the connection, and the statements are
/// pipelined: each is sent without waiting for the one before it, and PostgreSQL still runs
/// them in order. A one-transition commit is BEGIN, one round trip for its statements, and
/// COMMIT.
pub(super) async fn write_plan(c: &mut AsyncPgConnection, plan: &Plan<'_>) -> Result<(), TxError> {
    let conn: &AsyncPgConnection = c;
    // Each sent statement, with the rows it must touch when that is checked (flow updates).
    let mut sent: Vec<(BoxFuture<'_, QueryResult<usize>>, Option<usize>)> = Vec::new();
    let rows = &plan.flow_types;
    if !rows.is_empty() {
        let q = columns::Columns::insert(
            "flow_types",
            columns::FLOW_TYPE_COLUMNS,
            columns::FLOW_TYPE_CONFLICT,
        )
        .bind::<Text, _>(column(rows, |r| r.name))
        .bind::<Integer, _>(column(rows, |r| r.version))
        .bind::<SqlJson, _>(column(rows, |r| DbJsonRef(&r.definition)))
        .bind::<SqlTime, _>(column(rows, |_| plan.now));
        sent.push((q.execute(&mut &*conn), None));
    }

    let rows = &plan.new_flows;
    if !rows.is_empty() {
        let q = columns::Columns::insert("flows", columns::FLOW_COLUMNS, "")
            .bind::<SqlUuid, _>(column(rows, |r| DbUuid(r.flow.id.0)))
            .bind::<Text, _>(column(rows, |r| r.flow.flow_type.as_str()))
            .bind::<Integer, _>(column(rows, |r| r.flow_type_version))
            .bind::<Text, _>(column(rows, |r| r.flow.status.as_str()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.flow.current_phase.as_deref()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.flow.next_phase.as_deref()))
            .bind::<Double, _>(column(rows, |r| r.flow.progress_percentage))
            .bind::<SqlJson, _>(column(rows, |r| DbJsonRef(&r.flow.input)))
            .bind::<Nullable<SqlUuid>, _>(column(rows, |r| {
                r.flow.parent_flow_id.map(|p| DbUuid(p.0))
            }))
            .bind::<SqlUuid, _>(column(rows, |r| DbUuid(r.flow.master_flow_id.0)))
            .bind::<Text, _>(column(rows, |r| r.flow.client_account_id.as_str()))
            .bind::<Text, _>(column(rows, |r| r.flow.engagement_id.as_str()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.flow.created_by.as_deref()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.flow.idempotency_key.as_deref()))
            .bind::<BigInt, _>(column(rows, |r| r.last_seq))
            .bind::<SqlTime, _>(column(rows, |r| DbTime(r.flow.created_at)))
            .bind::<SqlTime, _>(column(rows, |r| DbTime(r.flow.updated_at)));
        sent.push((q.execute(&mut &*conn), None));
    }

    let rows = &plan.flow_changes;
    if !rows.is_empty() {
        let q = columns::Columns::update_flows()
            .bind::<SqlUuid, _>(column(rows, |r| r.id))
            .bind::<Text, _>(column(rows, |r| r.update.status.as_str()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.update.current_phase.as_deref()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.update.next_phase.as_deref()))
            .bind::<Double, _>(column(rows, |r| r.update.progress_percentage))
            .bind::<BigInt, _>(column(rows, |r| r.last_seq))
            .bind::<SqlTime, _>(column(rows, |r| r.updated_at));
        // Keyed by id and deduplicated, so each change matches exactly one row.
        sent.push((q.execute(&mut &*conn), Some(rows.len())));
    }

    let rows = &plan.phases;
    if !rows.is_empty() {
        let q = columns::Columns::insert(
            "phase_runs",
            columns::PHASE_COLUMNS,
            columns::PHASE_CONFLICT,
        )
        .bind::<SqlUuid, _>(column(rows, |r| r.flow_id))
        .bind::<Integer, _>(column(rows, |r| r.position))
        .bind::<Text, _>(column(rows, |r| r.phase.name.as_str()))
        .bind::<Text, _>(column(rows, |r| r.phase.status.as_str()))
        .bind::<Integer, _>(column(rows, |r| r.attempt))
        .bind::<Nullable<SqlTime>, _>(column(rows, |r| r.started_at))
        .bind::<Nullable<SqlTime>, _>(column(rows, |r| r.finished_at))
        .bind::<Nullable<SqlJson>, _>(column(rows, |r| r.output))
        .bind::<Nullable<Text>, _>(column(rows, |r| r.phase.error.as_deref()));
        sent.push((q.execute(&mut &*conn), None));
    }

    let rows = &plan.events;
    if !rows.is_empty() {
        let q = columns::Columns::insert("events", columns::EVENT_COLUMNS, "")
            .bind::<BigInt, _>(column(rows, |r| r.event.id))
            .bind::<SqlUuid, _>(column(rows, |r| r.flow_id))
            .bind::<BigInt, _>(column(rows, |r| r.seq))
            .bind::<SqlUuid, _>(column(rows, |r| r.master_flow_id))
            .bind::<Text, _>(column(rows, |r| r.event.client_account_id.as_str()))
            .bind::<Text, _>(column(rows, |r| r.event.engagement_id.as_str()))
            .bind::<Text, _>(column(rows, |r| r.event.flow_type.as_str()))
            .bind::<Text, _>(column(rows, |r| r.event.kind.as_str()))
            .bind::<Text, _>(column(rows, |r| r.event.status.as_str()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.event.current_phase.as_deref()))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.event.next_phase.as_deref()))
            .bind::<Double, _>(column(rows, |r| r.event.progress_percentage))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.event.error.as_deref()))
            .bind::<SqlTime, _>(column(rows, |r| r.at))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.status_reason.as_deref()));
        sent.push((q.execute(&mut &*conn), None));
    }

    let rows = &plan.failures;
    if !rows.is_empty() {
        let q = columns::Columns::insert("failures", columns::FAILURE_COLUMNS, "")
            .bind::<SqlUuid, _>(column(rows, |r| DbUuid(r.failure.flow_id.0)))
            .bind::<SqlUuid, _>(column(rows, |r| DbUuid(r.failure.master_flow_id.0)))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.failure.phase.as_deref()))
            .bind::<Integer, _>(column(rows, |r| r.attempt))
            .bind::<Text, _>(column(rows, |r| r.failure.error_kind.as_str()))
            .bind::<Text, _>(column(rows, |r| r.failure.message.as_str()))
            .bind::<SqlJson, _>(column(rows, |r| DbJsonRef(&r.failure.diagnostic)))
            .bind::<SqlTime, _>(column(rows, |r| DbTime(r.failure.at)));
        sent.push((q.execute(&mut &*conn), None));
    }

    // Deduplicated by id in the plan: one statement may not upsert a row twice.
    let rows = &plan.tasks;
    if !rows.is_empty() {
        let q = columns::Columns::insert("tasks", columns::TASK_COLUMNS, columns::TASK_CONFLICT)
            .bind::<SqlUuid, _>(column(rows, |r| r.id))
            .bind::<Text, _>(column(rows, |r| r.task.queue.as_str()))
            .bind::<SqlUuid, _>(column(rows, |r| r.flow_id))
            .bind::<SqlUuid, _>(column(rows, |r| r.master_flow_id))
            .bind::<Text, _>(column(rows, |r| r.task.phase.as_str()))
            .bind::<Integer, _>(column(rows, |r| r.attempt))
            .bind::<Text, _>(column(rows, |r| r.task.client_account_id.as_str()))
            .bind::<Text, _>(column(rows, |r| r.task.engagement_id.as_str()))
            .bind::<SqlJson, _>(column(rows, |r| r.payload))
            .bind::<Text, _>(column(rows, |r| r.task.status.as_str()))
            .bind::<Nullable<SqlUuid>, _>(column(rows, |r| r.lease_id))
            .bind::<Nullable<Text>, _>(column(rows, |r| r.task.worker_id.as_deref()))
            .bind::<Nullable<SqlTime>, _>(column(rows, |r| r.lease_expires_at))
            .bind::<Nullable<SqlJson>, _>(column(rows, |r| r.result))
            .bind::<SqlTime, _>(column(rows, |r| r.created_at))
            .bind::<SqlTime, _>(column(rows, |r| r.updated_at));
        sent.push((q.execute(&mut &*conn), None));
    }

    let (statements, expected): (Vec<_>, Vec<_>) = sent.into_iter().unzip();
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

/// One column of `rows`, as a statement binds it.
fn column<'a, R, T>(rows: &'a [R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}
