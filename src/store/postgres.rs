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
use super::{Plan, TxError, bulk};

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
/// connection with [`WRITER_PLANNER`]. Once migrated by [`connect`].
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

fn migrate(url: &str) -> Result<(), StoreError> {
    use diesel::Connection;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Unavailable(format!("migrating PostgreSQL failed: {e}")))?;
    Ok(())
}

/// Writes a planned batch inside the caller's transaction, a few multi-row statements per table:
/// on PostgreSQL every statement is a network round trip, so a batch of a thousand transitions
/// costs a handful of them rather than thousands. Their texts come in a few shapes
/// ([`bulk::shaped_chunks`]), so each stays prepared on the connection, and they are pipelined:
/// each is sent without waiting for the one before it, and PostgreSQL still runs them in order.
/// A one-transition commit is BEGIN, one round trip for its statements, and COMMIT.
pub(super) async fn write_plan(c: &mut AsyncPgConnection, plan: &Plan<'_>) -> Result<(), TxError> {
    let conn: &AsyncPgConnection = c;
    // Each sent statement, with the rows it must touch when that is checked (flow updates).
    let mut sent: Vec<(BoxFuture<'_, QueryResult<usize>>, Option<usize>)> = Vec::new();
    for chunk in bulk::shaped_chunks(&plan.flow_types) {
        let mut q = bulk::Rows::insert(
            "flow_types",
            bulk::FLOW_TYPE_COLUMNS,
            chunk.len(),
            bulk::FLOW_TYPE_CONFLICT,
        );
        for r in chunk {
            q = q
                .bind::<Text, _>(r.name)
                .bind::<Integer, _>(r.version)
                .bind::<SqlJson, _>(DbJsonRef(&r.definition))
                .bind::<SqlTime, _>(plan.now);
        }
        sent.push((q.execute(&mut &*conn), None));
    }

    for chunk in bulk::shaped_chunks(&plan.new_flows) {
        let mut q = bulk::Rows::insert("flows", bulk::FLOW_COLUMNS, chunk.len(), "");
        for r in chunk {
            let f = r.flow;
            q = q
                .bind::<SqlUuid, _>(DbUuid(f.id.0))
                .bind::<Text, _>(f.flow_type.as_str())
                .bind::<Integer, _>(r.flow_type_version)
                .bind::<Text, _>(f.status.as_str())
                .bind::<Nullable<Text>, _>(f.current_phase.as_deref())
                .bind::<Nullable<Text>, _>(f.next_phase.as_deref())
                .bind::<Double, _>(f.progress_percentage)
                .bind::<SqlJson, _>(DbJsonRef(&f.input))
                .bind::<Nullable<SqlUuid>, _>(f.parent_flow_id.map(|p| DbUuid(p.0)))
                .bind::<SqlUuid, _>(DbUuid(f.master_flow_id.0))
                .bind::<Text, _>(f.client_account_id.as_str())
                .bind::<Text, _>(f.engagement_id.as_str())
                .bind::<Nullable<Text>, _>(f.created_by.as_deref())
                .bind::<Nullable<Text>, _>(f.idempotency_key.as_deref())
                .bind::<BigInt, _>(r.last_seq)
                .bind::<SqlTime, _>(DbTime(f.created_at))
                .bind::<SqlTime, _>(DbTime(f.updated_at));
        }
        sent.push((q.execute(&mut &*conn), None));
    }

    for chunk in bulk::shaped_chunks(&plan.flow_changes) {
        let mut q = bulk::Rows::update_flows(chunk.len());
        for r in chunk {
            let u = r.update;
            q = q
                .bind::<SqlUuid, _>(r.id)
                .bind::<Text, _>(u.status.as_str())
                .bind::<Nullable<Text>, _>(u.current_phase.as_deref())
                .bind::<Nullable<Text>, _>(u.next_phase.as_deref())
                .bind::<Double, _>(u.progress_percentage)
                .bind::<BigInt, _>(r.last_seq)
                .bind::<SqlTime, _>(DbTime(u.updated_at));
        }
        // Keyed by id and deduplicated, so each change matches exactly one row.
        sent.push((q.execute(&mut &*conn), Some(chunk.len())));
    }

    for chunk in bulk::shaped_chunks(&plan.phases) {
        let mut q = bulk::Rows::insert(
            "phase_runs",
            bulk::PHASE_COLUMNS,
            chunk.len(),
            bulk::PHASE_CONFLICT,
        );
        for r in chunk {
            let p = r.phase;
            q = q
                .bind::<SqlUuid, _>(r.flow_id)
                .bind::<Integer, _>(r.position)
                .bind::<Text, _>(p.name.as_str())
                .bind::<Text, _>(p.status.as_str())
                .bind::<Integer, _>(r.attempt)
                .bind::<Nullable<SqlTime>, _>(p.started_at.map(DbTime))
                .bind::<Nullable<SqlTime>, _>(p.finished_at.map(DbTime))
                .bind::<Nullable<SqlJson>, _>(r.output)
                .bind::<Nullable<Text>, _>(p.error.as_deref());
        }
        sent.push((q.execute(&mut &*conn), None));
    }

    for chunk in bulk::shaped_chunks(&plan.events) {
        let mut q = bulk::Rows::insert("events", bulk::EVENT_COLUMNS, chunk.len(), "");
        for r in chunk {
            let e = r.event;
            q = q
                .bind::<BigInt, _>(e.id)
                .bind::<SqlUuid, _>(DbUuid(e.flow_id.0))
                .bind::<BigInt, _>(r.seq)
                .bind::<SqlUuid, _>(DbUuid(e.master_flow_id.0))
                .bind::<Text, _>(e.client_account_id.as_str())
                .bind::<Text, _>(e.engagement_id.as_str())
                .bind::<Text, _>(e.flow_type.as_str())
                .bind::<Text, _>(e.kind.as_str())
                .bind::<Text, _>(e.status.as_str())
                .bind::<Nullable<Text>, _>(e.current_phase.as_deref())
                .bind::<Nullable<Text>, _>(e.next_phase.as_deref())
                .bind::<Double, _>(e.progress_percentage)
                .bind::<Nullable<Text>, _>(e.error.as_deref())
                .bind::<SqlTime, _>(DbTime(e.at));
        }
        sent.push((q.execute(&mut &*conn), None));
    }

    for chunk in bulk::shaped_chunks(&plan.failures) {
        let mut q = bulk::Rows::insert("failures", bulk::FAILURE_COLUMNS, chunk.len(), "");
        for r in chunk {
            let f = r.failure;
            q = q
                .bind::<SqlUuid, _>(DbUuid(f.flow_id.0))
                .bind::<SqlUuid, _>(DbUuid(f.master_flow_id.0))
                .bind::<Nullable<Text>, _>(f.phase.as_deref())
                .bind::<Integer, _>(r.attempt)
                .bind::<Text, _>(f.error_kind.as_str())
                .bind::<Text, _>(f.message.as_str())
                .bind::<SqlJson, _>(DbJsonRef(&f.diagnostic))
                .bind::<SqlTime, _>(DbTime(f.at));
        }
        sent.push((q.execute(&mut &*conn), None));
    }

    // Deduplicated by id in the plan: one statement may not upsert a row twice.
    for chunk in bulk::shaped_chunks(&plan.tasks) {
        let mut q = bulk::Rows::insert(
            "tasks",
            bulk::TASK_COLUMNS,
            chunk.len(),
            bulk::TASK_CONFLICT,
        );
        for r in chunk {
            let t = r.task;
            q = q
                .bind::<SqlUuid, _>(r.id)
                .bind::<Text, _>(t.queue.as_str())
                .bind::<SqlUuid, _>(r.flow_id)
                .bind::<SqlUuid, _>(r.master_flow_id)
                .bind::<Text, _>(t.phase.as_str())
                .bind::<Integer, _>(r.attempt)
                .bind::<Text, _>(t.client_account_id.as_str())
                .bind::<Text, _>(t.engagement_id.as_str())
                .bind::<SqlJson, _>(r.payload)
                .bind::<Text, _>(t.status.as_str())
                .bind::<Nullable<SqlUuid>, _>(r.lease_id)
                .bind::<Nullable<Text>, _>(t.worker_id.as_deref())
                .bind::<Nullable<SqlTime>, _>(r.lease_expires_at)
                .bind::<Nullable<SqlJson>, _>(r.result)
                .bind::<SqlTime, _>(r.created_at)
                .bind::<SqlTime, _>(r.updated_at);
        }
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
