//! The diesel stores: one [`DbStore`] for SQLite and PostgreSQL.
//!
//! - [`schema`]: the shared `table!` schema and the per-backend uuid/timestamp/JSON column types.
//! - [`models`]: row structs and their conversion to and from the domain types.
//! - [`sqlite`], [`postgres`]: pool construction and embedded migrations per backend.
//! - `plan`: the commit plan, a batch turned into rows per table.
//! - `columns`: each table's commit columns, and PostgreSQL's array-bound commit statements.
//! - `nodes`: the `nodes` table of cluster mode, written by the node actor.
//! - [`listen`]: cluster mode's `LISTEN flowd_events` connection, waking the event tail.
//!
//! Every read is written once; `with_conn!` expands it once per backend. The commit path is
//! planned once (`plan::Plan`) and then written the way each backend is fastest: on SQLite with
//! cached statements of one or 32 rows in one blocking call, on PostgreSQL with one statement per
//! table whose columns are bound as arrays (see `sqlite::write_plan` and
//! `postgres::write_plan`).

mod columns;
mod controls;
pub mod listen;
pub mod models;
mod nodes;
mod plan;
pub mod postgres;
pub mod schema;
pub mod sqlite;
mod sqlite_checkpoint;
pub mod tasks_cluster;

use std::collections::HashMap;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;
use flowd_actors::definition::FlowType;
use flowd_actors::events::FlowEvent;
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::model::{FailureRecord, FlowState, FlowStatus};
use flowd_actors::store::{CommitReceipt, FlowQuery, FlowStore, StoreError, Write};
use flowd_actors::task::{TaskId, TaskRecord};
use futures_util::future::BoxFuture;

use self::models::{EventRow, FailureRow, FlowRow, FlowTypeRow, PhaseRow, TaskRow};
use self::plan::Plan;
use self::schema::{DbTime, DbUuid, events, failures, flow_types, flows, phase_runs, tasks};

/// The database behind the runtime: SQLite or PostgreSQL, chosen by the URL. Cheap to clone;
/// every clone shares the same pools (reads, commits).
#[derive(Clone)]
pub struct DbStore {
    pools: Arc<Pools>,
    /// This node's id: on PostgreSQL, the owner of the flows it creates, the fence of its
    /// updates, and whose flows it resumes (docs/cluster.md). SQLite is single-node and
    /// ignores it.
    node: Arc<str>,
}

/// The node id of a store not told its node ([`DbStore::with_node`]): tools and tests that
/// run one process.
pub const LOCAL_NODE: &str = "local";

enum Pools {
    /// Reads share `pool`; commits use `writer`, a connection of their own (see
    /// [`sqlite::writer`]); a thread checkpoints the WAL while the store lives.
    Sqlite {
        pool: sqlite::SqlitePool,
        writer: sqlite::SqlitePool,
        _checkpoints: sqlite_checkpoint::Checkpointer,
        /// Set for [`sqlite::SqliteSync::Full`]: commits are durable once it has synced.
        wal_sync: Option<Arc<sqlite::WalSync>>,
    },
    /// Reads share `pool`; commits, one at a time from the persistence actor, use `writer`, a
    /// single connection, so the prepared commit statements live on one server backend only.
    Postgres {
        pool: postgres::PgPool,
        writer: postgres::PgPool,
    },
}

/// Runs `$body` with `$conn` bound to a pooled connection of the store's backend and `$db` to
/// the diesel backend type, once expanded per backend.
macro_rules! with_conn {
    ($store:expr, |$conn:ident: $db:ident| $body:expr) => {
        match &*$store.pools {
            Pools::Sqlite { pool, .. } => {
                #[allow(unused_imports)]
                use diesel::sqlite::Sqlite as $db;
                let mut pooled = pool.get().await.map_err(pool_error)?;
                let $conn: &mut sqlite::SqliteConn = &mut pooled;
                $body
            }
            Pools::Postgres { pool, .. } => {
                #[allow(unused_imports)]
                use diesel::pg::Pg as $db;
                let mut pooled = pool.get().await.map_err(pool_error)?;
                let $conn: &mut diesel_async::AsyncPgConnection = &mut pooled;
                $body
            }
        }
    };
}

impl DbStore {
    /// Opens the database named by `url` (`sqlite://path` or `postgres://…`), creating a SQLite
    /// file's folder, builds a pool of `pool_size` connections for reads plus one for commits,
    /// and runs the embedded migrations.
    pub async fn connect(url: &str, pool_size: usize) -> Result<DbStore, StoreError> {
        Self::connect_with_sync(url, pool_size, sqlite::SqliteSync::default()).await
    }

    /// Like [`DbStore::connect`], with SQLite's commits synced as `sync` says (PostgreSQL
    /// keeps its own server settings).
    pub async fn connect_with_sync(
        url: &str,
        pool_size: usize,
        sync: sqlite::SqliteSync,
    ) -> Result<DbStore, StoreError> {
        let pools = if sqlite::is_sqlite_url(url) {
            let pool = sqlite::connect(url, pool_size).await?;
            let path = sqlite::path_of(url);
            let checkpoints =
                sqlite_checkpoint::Checkpointer::start(&path.to_string_lossy(), sqlite::PRAGMAS)?;
            Pools::Sqlite {
                pool,
                writer: sqlite::writer(url)?,
                _checkpoints: checkpoints,
                wal_sync: (sync == sqlite::SqliteSync::Full)
                    .then(|| Arc::new(sqlite::WalSync::new(&path))),
            }
        } else if postgres::is_postgres_url(url) {
            Pools::Postgres {
                pool: postgres::connect(url, pool_size).await?,
                writer: postgres::writer(url)?,
            }
        } else {
            return Err(StoreError::Unavailable(format!(
                "unsupported database url `{url}`: expected sqlite://… or postgres://…"
            )));
        };
        Ok(DbStore {
            pools: Arc::new(pools),
            node: Arc::from(LOCAL_NODE),
        })
    }

    /// The same store, writing as node `node_id` (the `[cluster] node_id`): on PostgreSQL it
    /// owns the flows it creates and resumes only its own.
    pub fn with_node(mut self, node_id: &str) -> Self {
        self.node = Arc::from(node_id);
        self
    }

    /// The node this store writes as.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The owner written into created flows and matched by updates: this node on PostgreSQL,
    /// nobody on single-node SQLite.
    fn owner(&self) -> Option<&str> {
        match &*self.pools {
            Pools::Sqlite { .. } => None,
            Pools::Postgres { .. } => Some(&self.node),
        }
    }

    /// Which backend this store talks to, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match &*self.pools {
            Pools::Sqlite { .. } => "sqlite",
            Pools::Postgres { .. } => "postgres",
        }
    }

    /// Commits `batch`; with `synced`, a SQLite store that syncs its WAL itself also syncs it
    /// before returning, on the same blocking thread.
    async fn commit_batch(
        &self,
        batch: &[Write],
        synced: bool,
    ) -> Result<CommitReceipt, StoreError> {
        if batch.is_empty() {
            return Ok(CommitReceipt::default());
        }
        match &*self.pools {
            Pools::Sqlite {
                writer, wal_sync, ..
            } => {
                // The whole transaction in one trip to a blocking thread; that closure must own
                // its data, hence the copy of the batch (cheap next to the writes themselves).
                let owned = batch.to_vec();
                let wal_sync = wal_sync.clone().filter(|_| synced);
                let mut conn = writer.get().await.map_err(pool_error)?;
                conn.spawn_blocking(move |conn| {
                    let committed = Plan::of(&owned, None).and_then(|plan| {
                        conn.transaction(|c| sqlite::write_plan(c, &plan))
                            .map_err(TxError::into_store_error)
                    });
                    if committed.is_ok()
                        && let Some(wal_sync) = wal_sync
                        && let Err(error) = wal_sync.sync()
                    {
                        // As in the persistence actor: after a failed fsync nothing more may be
                        // acked; recovery starts from the disk.
                        tracing::error!(%error, "fsync of the SQLite WAL failed; stopping the process");
                        std::process::abort();
                    }
                    Ok(committed)
                })
                .await
                .map_err(db_error)??;
                // Single-node: nothing is fenced, the writer's event ids stand.
                Ok(CommitReceipt::default())
            }
            Pools::Postgres { writer, .. } => {
                // Everything that can fail without the database fails here, before the transaction.
                let mut plan = Plan::of(batch, self.owner())?;
                let plan = &mut plan;
                let mut conn = writer.get().await.map_err(pool_error)?;
                let committed = postgres::commit_plan(&mut conn, plan).await;
                let (fenced, first_event_id) = match committed {
                    Ok(committed) => committed,
                    Err(error) => {
                        // BEGIN and COMMIT are pipelined with the statements, outside diesel's
                        // transaction manager: a connection that cannot say its transaction
                        // ended is not given back to the pool.
                        if postgres::roll_back(&mut conn).await.is_err() {
                            drop(diesel_async::pooled_connection::deadpool::Object::take(
                                conn,
                            ));
                        }
                        return Err(error.into_store_error());
                    }
                };
                Ok(CommitReceipt {
                    fenced: fenced_positions(batch, &fenced),
                    first_event_id,
                })
            }
        }
    }

    async fn stale_active(
        &self,
        updated_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<Vec<FlowId>, StoreError> {
        let active = active_statuses();
        let owner = self.owner();
        let ids: Vec<DbUuid> = with_conn!(self, |conn: Db| {
            let mut q = flows::table
                .filter(flows::status.eq_any(&active))
                .filter(flows::updated_at.lt(DbTime(updated_before)))
                .into_boxed::<Db>();
            if let Some(owner) = owner {
                q = q.filter(flows::owner_node.eq(owner));
            }
            q.order(flows::id)
                .limit(i64::from(limit))
                .select(flows::id)
                .load(conn)
                .await
                .map_err(db_error)?
        });
        Ok(ids.into_iter().map(|id| FlowId(id.0)).collect())
    }

    /// Which of `ids` are owned by another node (PostgreSQL; SQLite owns every flow).
    async fn lost(&self, ids: &[FlowId]) -> Result<Vec<FlowId>, StoreError> {
        let (Some(owner), Pools::Postgres { pool, .. }) = (self.owner(), &*self.pools) else {
            return Ok(Vec::new());
        };
        let mut conn = pool.get().await.map_err(pool_error)?;
        let mut lost = Vec::new();
        for chunk in ids.chunks(columns::MAX_ROWS) {
            let chunk: Vec<DbUuid> = chunk.iter().map(|id| DbUuid(id.0)).collect();
            let part: Vec<DbUuid> = flows::table
                .filter(flows::id.eq_any(&chunk))
                .filter(flows::owner_node.ne(owner))
                .select(flows::id)
                .load(&mut conn)
                .await
                .map_err(db_error)?;
            lost.extend(part.into_iter().map(|id| FlowId(id.0)));
        }
        Ok(lost)
    }

    async fn load_one(&self, id: FlowId) -> Result<Option<FlowState>, StoreError> {
        with_conn!(self, |conn: Db| {
            // Reads of one row by key use `load`, not diesel's `first`: `first` binds its
            // `LIMIT 1` as a parameter, and SQLite re-prepares a statement whose `LIMIT` is a
            // parameter each time that is bound, which diesel does at every execution of a
            // cached statement (`sqlite3Reprepare` at every read). A key matches one row anyway.
            let row = flows::table
                .find(DbUuid(id.0))
                .select(FlowRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
                .pop();
            let Some(row) = row else {
                return Ok(None);
            };
            let phases = phase_runs::table
                .filter(phase_runs::flow_id.eq(DbUuid(id.0)))
                .order(phase_runs::position)
                .select(PhaseRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?;
            let mut flows = with_phases(vec![row], phases)?;
            Ok(flows.pop())
        })
    }

    async fn by_idempotency_key(
        &self,
        tenant: &Tenant,
        key: &str,
    ) -> Result<Option<FlowState>, StoreError> {
        let id = with_conn!(self, |conn: Db| {
            flows::table
                .filter(flows::client_account_id.eq(&tenant.client_account_id))
                .filter(flows::engagement_id.eq(&tenant.engagement_id))
                .filter(flows::idempotency_key.eq(key))
                .select(flows::id)
                .load::<DbUuid>(conn)
                .await
                .map_err(db_error)?
                .pop()
        });
        match id {
            Some(id) => self.load_one(FlowId(id.0)).await,
            None => Ok(None),
        }
    }

    async fn list(&self, query: &FlowQuery) -> Result<Vec<FlowState>, StoreError> {
        with_conn!(self, |conn: Db| {
            let mut q = flows::table.select(FlowRow::as_select()).into_boxed::<Db>();
            if let Some(tenant) = &query.tenant {
                q = q
                    .filter(flows::client_account_id.eq(&tenant.client_account_id))
                    .filter(flows::engagement_id.eq(&tenant.engagement_id));
            }
            if let Some(status) = query.status {
                q = q.filter(flows::status.eq(status.as_str()));
            }
            if let Some(flow_type) = &query.flow_type {
                q = q.filter(flows::flow_type.eq(flow_type));
            }
            if let Some(parent) = query.parent_flow_id {
                q = q.filter(flows::parent_flow_id.eq(DbUuid(parent.0)));
            }
            if let Some(before) = query.before {
                q = q.filter(flows::id.lt(DbUuid(before.0)));
            }
            let rows = q
                .order(flows::id.desc())
                .limit(i64::from(query.limit))
                .load(conn)
                .await
                .map_err(db_error)?;
            let mut phases = Vec::new();
            let ids: Vec<DbUuid> = rows.iter().map(|r| r.id).collect();
            for chunk in ids.chunks(columns::MAX_ROWS) {
                let mut part = phase_runs::table
                    .filter(phase_runs::flow_id.eq_any(chunk))
                    .order((phase_runs::flow_id, phase_runs::position))
                    .select(PhaseRow::as_select())
                    .load(conn)
                    .await
                    .map_err(db_error)?;
                phases.append(&mut part);
            }
            with_phases(rows, phases)
        })
    }

    async fn active(&self) -> Result<Vec<FlowState>, StoreError> {
        let active = active_statuses();
        let owner = self.owner();
        if let (Some(owner), Pools::Postgres { pool, .. }) = (owner, &*self.pools) {
            // Active flows stored before flows had owners: the first node to boot takes them.
            let mut conn = pool.get().await.map_err(pool_error)?;
            let adopted = diesel::update(
                flows::table
                    .filter(flows::owner_node.is_null())
                    .filter(flows::status.eq_any(&active)),
            )
            .set((
                flows::owner_node.eq(owner),
                flows::owner_epoch.eq(flows::owner_epoch + 1),
            ))
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
            if adopted > 0 {
                tracing::info!(flows = adopted, "active flows without an owner taken over");
            }
        }
        with_conn!(self, |conn: Db| {
            let mut q = flows::table
                .filter(flows::status.eq_any(&active))
                .into_boxed::<Db>();
            if let Some(owner) = owner {
                q = q.filter(flows::owner_node.eq(owner));
            }
            let rows = q
                .order(flows::id)
                .select(FlowRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?;
            let mut phases = Vec::new();
            let ids: Vec<DbUuid> = rows.iter().map(|r| r.id).collect();
            for chunk in ids.chunks(columns::MAX_ROWS) {
                let mut part = phase_runs::table
                    .filter(phase_runs::flow_id.eq_any(chunk))
                    .order((phase_runs::flow_id, phase_runs::position))
                    .select(PhaseRow::as_select())
                    .load(conn)
                    .await
                    .map_err(db_error)?;
                phases.append(&mut part);
            }
            with_phases(rows, phases)
        })
    }

    async fn events_of_flow(
        &self,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<FlowEvent>, StoreError> {
        // No stored seq can exceed i64::MAX, so there is nothing after such a value.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let rows: Vec<EventRow> = with_conn!(self, |conn: Db| {
            events::table
                .filter(events::flow_id.eq(DbUuid(flow_id.0)))
                .filter(events::seq.gt(after))
                .order(events::seq)
                .limit(i64::from(limit))
                .select(EventRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
        });
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn events_of_tenant(
        &self,
        tenant: &Tenant,
        after: i64,
        limit: u32,
    ) -> Result<Vec<FlowEvent>, StoreError> {
        let rows: Vec<EventRow> = with_conn!(self, |conn: Db| {
            events::table
                .filter(events::client_account_id.eq(&tenant.client_account_id))
                .filter(events::engagement_id.eq(&tenant.engagement_id))
                .filter(events::id.gt(after))
                .order(events::id)
                .limit(i64::from(limit))
                .select(EventRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
        });
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn events_of_tree(
        &self,
        master_flow_id: FlowId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<FlowEvent>, StoreError> {
        let rows: Vec<EventRow> = with_conn!(self, |conn: Db| {
            events::table
                .filter(events::master_flow_id.eq(DbUuid(master_flow_id.0)))
                .filter(events::id.gt(after))
                .order(events::id)
                .limit(i64::from(limit))
                .select(EventRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
        });
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn events_of_all(&self, after: i64, limit: u32) -> Result<Vec<FlowEvent>, StoreError> {
        let rows: Vec<EventRow> = with_conn!(self, |conn: Db| {
            events::table
                .filter(events::id.gt(after))
                .order(events::id)
                .limit(i64::from(limit))
                .select(EventRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
        });
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn task_by_id(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let row: Option<TaskRow> = with_conn!(self, |conn: Db| {
            tasks::table
                .find(DbUuid(id.0))
                .select(TaskRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
                .pop()
        });
        row.map(TaskRow::into_record).transpose()
    }

    async fn task_of_attempt(
        &self,
        flow_id: FlowId,
        phase: &str,
        attempt: u32,
    ) -> Result<Option<TaskRecord>, StoreError> {
        // No stored attempt exceeds i32::MAX, so there is no task for such an attempt.
        let Ok(attempt) = i32::try_from(attempt) else {
            return Ok(None);
        };
        let row: Option<TaskRow> = with_conn!(self, |conn: Db| {
            tasks::table
                .filter(tasks::flow_id.eq(DbUuid(flow_id.0)))
                .filter(tasks::phase.eq(phase))
                .filter(tasks::attempt.eq(attempt))
                .select(TaskRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
                .pop()
        });
        row.map(TaskRow::into_record).transpose()
    }

    async fn failures_of(&self, flow_id: FlowId) -> Result<Vec<FailureRecord>, StoreError> {
        let rows: Vec<FailureRow> = with_conn!(self, |conn: Db| {
            failures::table
                .filter(failures::flow_id.eq(DbUuid(flow_id.0)))
                .order(failures::id)
                .select(FailureRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
        });
        rows.into_iter().map(FailureRow::into_record).collect()
    }

    async fn flow_types(&self) -> Result<Vec<FlowType>, StoreError> {
        let rows: Vec<FlowTypeRow> = with_conn!(self, |conn: Db| {
            flow_types::table
                .order((flow_types::name, flow_types::version))
                .select(FlowTypeRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?
        });
        rows.into_iter().map(FlowTypeRow::into_flow_type).collect()
    }

    async fn max_id(&self) -> Result<i64, StoreError> {
        let max: Option<i64> = with_conn!(self, |conn: Db| {
            events::table
                .select(diesel::dsl::max(events::id))
                .get_result(conn)
                .await
                .map_err(db_error)?
        });
        Ok(max.unwrap_or(0))
    }

    async fn status_counts(&self) -> Result<Vec<(FlowStatus, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = with_conn!(self, |conn: Db| {
            flows::table
                .group_by(flows::status)
                .select((flows::status, diesel::dsl::count_star()))
                .load(conn)
                .await
                .map_err(db_error)?
        });
        status_counts_from(rows)
    }

    async fn tenant_status_counts(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<(FlowStatus, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = with_conn!(self, |conn: Db| {
            flows::table
                .filter(flows::client_account_id.eq(&tenant.client_account_id))
                .filter(flows::engagement_id.eq(&tenant.engagement_id))
                .group_by(flows::status)
                .select((flows::status, diesel::dsl::count_star()))
                .load(conn)
                .await
                .map_err(db_error)?
        });
        status_counts_from(rows)
    }

    async fn round_trip(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn: Db| {
            diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                .get_result::<i32>(conn)
                .await
                .map_err(db_error)?;
        });
        Ok(())
    }
}

/// Positions in `batch` of the transitions of `fenced` flows (a create is never fenced: it
/// inserts a new id).
fn fenced_positions(batch: &[Write], fenced: &std::collections::HashSet<uuid::Uuid>) -> Vec<usize> {
    if fenced.is_empty() {
        return Vec::new();
    }
    batch
        .iter()
        .enumerate()
        .filter_map(|(position, write)| match write {
            Write::Transition(t) if t.create.is_none() && fenced.contains(&t.flow_id.0) => {
                Some(position)
            }
            _ => None,
        })
        .collect()
}

impl FlowStore for DbStore {
    fn commit<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.commit_batch(batch, false).await.map(drop) })
    }

    fn commit_synced<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.commit_batch(batch, true).await.map(drop) })
    }

    fn commit_receipted<'a>(
        &'a self,
        batch: &'a [Write],
        synced: bool,
    ) -> BoxFuture<'a, Result<CommitReceipt, StoreError>> {
        Box::pin(self.commit_batch(batch, synced))
    }

    fn load_flow_types(&self) -> BoxFuture<'_, Result<Vec<FlowType>, StoreError>> {
        Box::pin(read_retrying(move || self.flow_types()))
    }

    fn load_active_flows(&self) -> BoxFuture<'_, Result<Vec<FlowState>, StoreError>> {
        Box::pin(read_retrying(move || self.active()))
    }

    fn stale_active_flows(
        &self,
        updated_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowId>, StoreError>> {
        Box::pin(read_retrying(move || {
            self.stale_active(updated_before, limit)
        }))
    }

    fn load_flow(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowState>, StoreError>> {
        Box::pin(read_retrying(move || self.load_one(id)))
    }

    fn not_owned<'a>(
        &'a self,
        ids: &'a [FlowId],
    ) -> BoxFuture<'a, Result<Vec<FlowId>, StoreError>> {
        Box::pin(read_retrying(move || self.lost(ids)))
    }

    fn owns(&self, flow: &FlowState) -> bool {
        match self.owner() {
            None => true,
            Some(owner) => flow.owner_node.as_deref() == Some(owner),
        }
    }

    fn find_by_idempotency_key<'a>(
        &'a self,
        tenant: &'a Tenant,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowState>, StoreError>> {
        Box::pin(read_retrying(move || self.by_idempotency_key(tenant, key)))
    }

    fn list_flows<'a>(
        &'a self,
        query: &'a FlowQuery,
    ) -> BoxFuture<'a, Result<Vec<FlowState>, StoreError>> {
        Box::pin(read_retrying(move || self.list(query)))
    }

    fn flow_events(
        &self,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        Box::pin(read_retrying(move || {
            self.events_of_flow(flow_id, after, limit)
        }))
    }

    fn tree_events(
        &self,
        master_flow_id: FlowId,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        Box::pin(read_retrying(move || {
            self.events_of_tree(master_flow_id, after, limit)
        }))
    }

    fn load_task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>> {
        Box::pin(read_retrying(move || self.task_by_id(id)))
    }

    fn find_task<'a>(
        &'a self,
        flow_id: FlowId,
        phase: &'a str,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        Box::pin(read_retrying(move || {
            self.task_of_attempt(flow_id, phase, attempt)
        }))
    }

    fn tenant_events<'a>(
        &'a self,
        tenant: &'a Tenant,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FlowEvent>, StoreError>> {
        Box::pin(read_retrying(move || {
            self.events_of_tenant(tenant, after, limit)
        }))
    }

    fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        Box::pin(read_retrying(move || self.events_of_all(after, limit)))
    }

    fn failures(&self, flow_id: FlowId) -> BoxFuture<'_, Result<Vec<FailureRecord>, StoreError>> {
        Box::pin(read_retrying(move || self.failures_of(flow_id)))
    }

    fn max_event_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(read_retrying(move || self.max_id()))
    }

    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(FlowStatus, u64)>, StoreError>> {
        Box::pin(read_retrying(move || self.status_counts()))
    }

    fn count_by_status_of<'a>(
        &'a self,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<Vec<(FlowStatus, u64)>, StoreError>> {
        Box::pin(read_retrying(move || self.tenant_status_counts(tenant)))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.round_trip())
    }

    fn commits_need_sync(&self) -> bool {
        matches!(
            &*self.pools,
            Pools::Sqlite {
                wal_sync: Some(_),
                ..
            }
        )
    }

    fn sync_commits(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let Pools::Sqlite {
                wal_sync: Some(wal_sync),
                ..
            } = &*self.pools
            else {
                return Ok(());
            };
            let wal_sync = wal_sync.clone();
            tokio::task::spawn_blocking(move || wal_sync.sync())
                .await
                .map_err(|e| StoreError::Unavailable(format!("the WAL sync task failed: {e}")))?
                .map_err(|e| StoreError::Unavailable(format!("fsync of the WAL failed: {e}")))
        })
    }

    fn release_memory(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // SQLite keeps each connection's page cache for its life; PostgreSQL's is the
            // server's. Only the commit connection's is large (see `sqlite::SqliteSync`).
            if let Pools::Sqlite { writer, .. } = &*self.pools
                && let Ok(mut conn) = writer.get().await
            {
                let shrunk = conn
                    .spawn_blocking(|conn| {
                        use diesel::connection::SimpleConnection;
                        conn.batch_execute("PRAGMA shrink_memory;")
                    })
                    .await;
                if let Err(error) = shrunk {
                    tracing::debug!(%error, "the writer's page cache was not released");
                }
            }
        })
    }
}

/// What can abort the commit transaction.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error(transparent)]
    Db(#[from] DieselError),
    /// A transition updates a flow that does not exist.
    #[error("{0} flow update(s) matched no stored flow")]
    MissingFlows(usize),
}

impl TxError {
    fn into_store_error(self) -> StoreError {
        match self {
            TxError::Db(e) => db_error(e),
            TxError::MissingFlows(_) => StoreError::Conflict(self.to_string()),
        }
    }
}

/// Sorts diesel errors by what the caller can do: constraint violations are refused writes,
/// undecodable values are corrupt data, a database that cannot work now (closed connections,
/// a locked or full SQLite file, a server shutting down) is unavailable and worth a retry, and
/// any other error the server answered with refused the statement's values.
fn db_error(error: DieselError) -> StoreError {
    match error {
        DieselError::DatabaseError(
            kind @ (DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation),
            info,
        ) => StoreError::Conflict(format!("{kind:?}: {}", info.message())),
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction,
            info,
        ) => StoreError::Unavailable(info.message().to_owned()),
        DieselError::DatabaseError(_, info) if is_outage(info.message()) => {
            StoreError::Unavailable(info.message().to_owned())
        }
        DieselError::DatabaseError(_, info) => StoreError::Rejected(info.message().to_owned()),
        DieselError::DeserializationError(e) => StoreError::Corrupt(e.to_string()),
        DieselError::SerializationError(e) => {
            StoreError::Conflict(format!("value not storable: {e}"))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Whether an error the database answered with says it cannot work now, rather than that it
/// refuses the statement: SQLite's full, locked or failing file; PostgreSQL's full disk, a
/// backend being terminated, a server shutting down, starting or recovering, no free slots.
/// Neither backend gives diesel a code for these, so the messages are read.
fn is_outage(message: &str) -> bool {
    const OUTAGES: [&str; 17] = [
        // SQLite
        "disk is full",
        "disk i/o error",
        "database is locked",
        "table is locked",
        "unable to open",
        "readonly database",
        "out of memory",
        // PostgreSQL
        "no space left",
        "could not extend file",
        "could not write",
        "terminating connection",
        "shutting down",
        "starting up",
        "recovery mode",
        "too many clients",
        "deadlock detected",
        "canceling statement",
    ];
    let message = message.to_ascii_lowercase();
    OUTAGES.iter().any(|outage| message.contains(outage))
}

/// Runs a read, and once more if the database seemed unavailable: a pooled connection that the
/// server closed (a restart, `pg_terminate_backend`) fails its first query, and the second try
/// takes a fresh connection. Only one retry: a database that is really down answers at once.
async fn read_retrying<T, Read, Reading>(read: Read) -> Result<T, StoreError>
where
    Read: Fn() -> Reading,
    Reading: std::future::Future<Output = Result<T, StoreError>>,
{
    match read().await {
        Err(StoreError::Unavailable(message)) => {
            tracing::debug!(%message, "read failed on a pooled connection; trying a fresh one");
            read().await
        }
        other => other,
    }
}

fn pool_error(error: diesel_async::pooled_connection::deadpool::PoolError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// `(status, count)` rows of a `GROUP BY status` as flow statuses.
fn status_counts_from(rows: Vec<(String, i64)>) -> Result<Vec<(FlowStatus, u64)>, StoreError> {
    rows.into_iter()
        .map(|(status, count)| {
            let status = status
                .parse::<FlowStatus>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((status, u64::try_from(count).unwrap_or(0)))
        })
        .collect()
}

/// Every non-terminal status: the flows to resume at boot.
fn active_statuses() -> Vec<&'static str> {
    // Every variant, so that `is_terminal` alone decides.
    [
        FlowStatus::Initialized,
        FlowStatus::Running,
        FlowStatus::Paused,
        FlowStatus::Completed,
        FlowStatus::Failed,
        FlowStatus::Cancelled,
    ]
    .into_iter()
    .filter(|s| !s.is_terminal())
    .map(FlowStatus::as_str)
    .collect()
}

/// Joins flow rows with their phase rows (ordered by flow, then position), keeping row order.
fn with_phases(rows: Vec<FlowRow>, phases: Vec<PhaseRow>) -> Result<Vec<FlowState>, StoreError> {
    let mut by_flow: HashMap<uuid::Uuid, Vec<_>> = HashMap::with_capacity(rows.len());
    for phase in phases {
        let flow_id = phase.flow_id.0;
        by_flow
            .entry(flow_id)
            .or_default()
            .push(phase.into_state()?);
    }
    rows.into_iter()
        .map(|row| {
            let phases = by_flow.remove(&row.id.0).unwrap_or_default();
            row.into_state(phases)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flowd_actors::definition::{FlowType, PhaseDefinition};

    use super::*;

    /// Commits are synced before they are acked unless told otherwise: with `full` (the
    /// default) the store asks for a sync after each commit and the sync reaches the WAL file
    /// the commit wrote (a wrong path would fail it); with `normal` there is none. Either way the
    /// commit connection itself runs `synchronous=NORMAL` (the sync is the store's own).
    #[tokio::test]
    async fn sqlite_commits_are_fsynced_by_default_and_normal_on_request() {
        use diesel::sql_types::Integer;

        #[derive(QueryableByName)]
        struct Synchronous {
            #[diesel(sql_type = Integer)]
            synchronous: i32,
        }
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, sync, synced) in [
            ("default", None, true),
            ("full", Some(sqlite::SqliteSync::Full), true),
            ("normal", Some(sqlite::SqliteSync::Normal), false),
        ] {
            let url = format!("sqlite://{}/flowd-{name}.db", dir.path().display());
            let store = match sync {
                None => DbStore::connect(&url, 1).await,
                Some(sync) => DbStore::connect_with_sync(&url, 1, sync).await,
            }
            .expect("connect");
            assert_eq!(store.commits_need_sync(), synced, "{name}");
            let batch = [Write::FlowType(FlowType {
                name: "discovery".into(),
                version: 1,
                phases: vec![PhaseDefinition::new("import", "noop")],
            })];
            store.commit(&batch).await.expect("commit");
            store.sync_commits().await.expect("sync");
            // The same, in one trip (a failed sync there would abort the test process).
            let again = [Write::FlowType(FlowType {
                name: "discovery".into(),
                version: 2,
                phases: vec![PhaseDefinition::new("import", "noop")],
            })];
            store.commit_synced(&again).await.expect("commit and sync");
            assert_eq!(store.load_flow_types().await.expect("read").len(), 2);

            let Pools::Sqlite {
                writer, wal_sync, ..
            } = &*store.pools
            else {
                unreachable!("a sqlite:// url opens SQLite");
            };
            assert_eq!(wal_sync.is_some(), synced, "{name}");
            let mut conn = writer.get().await.expect("writer");
            let read: Synchronous = diesel::sql_query("PRAGMA synchronous")
                .get_result(&mut *conn)
                .await
                .expect("pragma");
            assert_eq!(read.synchronous, 1, "{name}: the connection runs NORMAL");
        }
    }

    /// A sync of a WAL file that is not there fails rather than pretending: the writer would
    /// otherwise ack commits nobody synced.
    #[test]
    fn a_wal_sync_of_a_missing_file_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sync = sqlite::WalSync::new(&dir.path().join("missing.db"));
        assert!(sync.sync().is_err());
    }

    /// Readers holding every pooled connection must not hold up the persistence actor.
    #[tokio::test]
    async fn sqlite_commits_while_readers_hold_every_pooled_connection() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/flowd.db", dir.path().display());
        let store = DbStore::connect(&url, 2).await.expect("connect");
        let Pools::Sqlite { pool, .. } = &*store.pools else {
            unreachable!("a sqlite:// url opens SQLite");
        };
        let _held = (
            pool.get().await.expect("reader"),
            pool.get().await.expect("reader"),
        );

        let flow_type = FlowType {
            name: "discovery".into(),
            version: 1,
            phases: vec![PhaseDefinition::new("import", "noop")],
        };
        let batch = [Write::FlowType(flow_type)];
        tokio::time::timeout(Duration::from_secs(5), store.commit(&batch))
            .await
            .expect("the commit waited for a reader's connection")
            .expect("commit");
    }
}
