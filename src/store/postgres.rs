//! PostgreSQL: the scale-out backend, through tokio-postgres (no libpq).

use diesel::ConnectionError;
use diesel_async::RunQueryDsl;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::ManagerConfig;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use flowd_actors::store::StoreError;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, try_join, try_join_all, try_join5};

use std::collections::HashSet;

use diesel::prelude::*;
use uuid::Uuid;

use super::columns::{Columns, FLOW_FENCE, Returning};
use super::models::FailureWrite;
use super::schema::sql_types::SqlUuid;
use super::schema::{DbUuid, event_ids, flows};
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
/// whatever the table's size when it was made. The one-row `event_ids` counter has nothing to
/// look up by key: its scan keeps the penalty cost of a disabled sequential scan, which would
/// make PostgreSQL compile each numbering statement with JIT (100 ms a commit); JIT is off, as
/// it cannot pay off for statements of a few rows.
///
/// A commit's transaction waits on this process only between its two pipelined trips, for
/// microseconds; a process paused there (SIGSTOP, a starved machine) would hold its flow rows
/// locked, and the claims of a takeover skip locked rows. After 5 s idle in a transaction the
/// server ends the session and its locks go: the paused node's commit fails when it wakes.
const WRITER_PLANNER: &str = "SET enable_seqscan = off; SET enable_hashjoin = off; \
     SET enable_mergejoin = off; SET jit = off; \
     SET idle_in_transaction_session_timeout = 5000";

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

/// Commits a planned batch in one transaction, one statement per table that has rows
/// ([`Columns`]): on PostgreSQL every statement is a network round trip, so a batch of a
/// thousand transitions costs a handful of them rather than thousands. Each text depends only
/// on its table, so it stays prepared on the connection, and the statements are pipelined:
/// each is sent without waiting for the one before it, and PostgreSQL still runs them in
/// order. `BEGIN` and `COMMIT` are pipelined with them, so a batch is two round trips.
///
/// The first trip opens the transaction and writes the flow rows. Their update is fenced
/// ([`Columns::fenced_update`]): it changes only rows still owned by this node under the
/// write's epoch and returns their ids. A flow it did not change was taken over by another
/// node: the second trip leaves out that flow's phase, event and failure rows and journals the
/// fence instead, so its transition commits nothing and fails alone while the batch commits
/// (docs/cluster.md, 2.2).
///
/// Events are numbered last ([`EVENT_IDS`]): the counter row moves past the events actually
/// written, the events are inserted with those ids, and `pg_notify` announces the batch's last
/// id on [`EVENTS_CHANNEL`]; the row lock taken there is held until the COMMIT that ends the
/// second trip, so ids are assigned in commit order across every node, without gaps
/// (docs/cluster.md, 2.4).
///
/// Returns the ids of the fenced flows and the id of the first event written. On an error the
/// transaction may still be open: the caller must roll it back (or give the connection up).
pub(super) async fn commit_plan(
    c: &mut AsyncPgConnection,
    plan: &mut Plan<'_>,
) -> Result<(HashSet<Uuid>, Option<i64>), TxError> {
    let conn: &AsyncPgConnection = c;
    let mut first: Vec<BoxFuture<'_, QueryResult<usize>>> =
        vec![diesel::sql_query("BEGIN").execute(&mut &*conn)];
    if !plan.flow_types.is_empty() {
        first.push(Columns::insert(&plan.flow_types).execute(&mut &*conn));
    }
    if !plan.new_flows.is_empty() {
        first.push(Columns::insert(&plan.new_flows).execute(&mut &*conn));
    }
    let update: BoxFuture<'_, QueryResult<Vec<DbUuid>>> = if plan.flow_changes.is_empty() {
        Box::pin(async { Ok(Vec::new()) })
    } else {
        let update = Columns::fenced_update(&plan.flow_changes, FLOW_FENCE);
        Box::pin(Returning::<SqlUuid>::new(update).load::<DbUuid>(&mut &*conn))
    };
    // Outputs come back in the order sent, so the first error is the statement that failed,
    // not one that PostgreSQL refused afterwards because the transaction was already aborted.
    let (_, updated) = try_join(try_join_all(first), update).await?;
    let mut fenced = HashSet::new();
    let mut journal = Vec::new();
    if updated.len() < plan.flow_changes.len() {
        // Keyed by id and deduplicated in the plan, so each change matches at most one row.
        let updated: HashSet<Uuid> = updated.into_iter().map(|id| id.0).collect();
        let unmatched: Vec<DbUuid> = plan
            .flow_changes
            .iter()
            .map(|change| change.id)
            .filter(|id| !updated.contains(&id.0))
            .collect();
        let stored: Vec<DbUuid> = flows::table
            .filter(flows::id.eq_any(&unmatched))
            .select(flows::id)
            .load(&mut &*conn)
            .await?;
        if stored.len() < unmatched.len() {
            // A transition of a flow that does not exist: a bug, refused as before.
            return Err(TxError::MissingFlows(unmatched.len() - stored.len()));
        }
        fenced = stored.into_iter().map(|id| id.0).collect();
        journal = plan.fenced_journal(&fenced);
        plan.leave_out(&fenced);
    }
    let journal: Vec<FailureWrite<'_>> = journal
        .iter()
        .filter_map(|failure| FailureWrite::from_domain(failure).ok())
        .collect();
    let mut rest: Vec<BoxFuture<'_, QueryResult<usize>>> = Vec::new();
    if !plan.phases.is_empty() {
        rest.push(Columns::insert(&plan.phases).execute(&mut &*conn));
    }
    if !plan.failures.is_empty() {
        rest.push(Columns::insert(&plan.failures).execute(&mut &*conn));
    }
    if !journal.is_empty() {
        rest.push(Columns::insert(&journal).execute(&mut &*conn));
    }
    // Deduplicated by id in the plan: one statement may not upsert a row twice.
    if !plan.tasks.is_empty() {
        rest.push(Columns::insert(&plan.tasks).execute(&mut &*conn));
    }
    if plan.events.is_empty() {
        rest.push(diesel::sql_query("COMMIT").execute(&mut &*conn));
        try_join_all(rest).await?;
        return Ok((fenced, None));
    }
    let count = i64::try_from(plan.events.len()).unwrap_or(i64::MAX);
    let counter = diesel::update(event_ids::table)
        .set(event_ids::last.eq(event_ids::last + count))
        .returning(event_ids::last)
        .get_result::<i64>(&mut &*conn);
    let events = Columns::insert_numbered(&plan.events, EVENT_IDS).execute(&mut &*conn);
    let notify = diesel::sql_query(NOTIFY_EVENTS).execute(&mut &*conn);
    let commit = diesel::sql_query("COMMIT").execute(&mut &*conn);
    let (_, last, _, _, _) = try_join5(try_join_all(rest), counter, events, notify, commit).await?;
    Ok((fenced, Some(last - count + 1)))
}

/// Ends a transaction [`commit_plan`] left open by an error (a warning, not an error, when
/// its pipelined COMMIT already ended it).
pub(super) async fn roll_back(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::sql_query("ROLLBACK").execute(conn).await
}

/// The one-row counter events are numbered from.
const EVENT_IDS: &str = "event_ids";

/// The channel on which every committed batch announces its last event id, delivered at
/// commit and in commit order: how other nodes learn that events are there to read.
pub const EVENTS_CHANNEL: &str = "flowd_events";

/// Announces the batch's last event id on [`EVENTS_CHANNEL`] (the counter row, already moved).
const NOTIFY_EVENTS: &str = "SELECT pg_notify('flowd_events', last::text) FROM event_ids";
