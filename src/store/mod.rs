//! The diesel stores: one [`DbStore`] for SQLite and PostgreSQL.
//!
//! - [`schema`]: the shared `table!` schema and the per-backend uuid/timestamp/JSON column types.
//! - [`models`]: row structs and their conversion to and from the domain types.
//! - [`sqlite`], [`postgres`]: pool construction and embedded migrations per backend.
//!
//! Every query is written once; [`with_conn!`] expands it once per backend. The commit path
//! writes a whole batch with a handful of multi-row statements, whatever the batch size.

mod bulk;
pub mod models;
pub mod postgres;
pub mod schema;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use flowd_actors::definition::FlowType;
use flowd_actors::events::FlowEvent;
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::model::{FailureRecord, FlowState, FlowStatus};
use flowd_actors::store::{FlowQuery, FlowStore, StoreError, Write};
use futures_util::future::BoxFuture;

use self::bulk::Backend;
use self::models::{
    EventRow, EventWrite, FailureRow, FailureWrite, FlowChange, FlowRow, FlowTypeRow, NewFlow,
    NewFlowType, PhaseRow, PhaseWrite,
};
use self::schema::sql_types::{SqlJson, SqlTime, SqlUuid};
use self::schema::{DbJsonRef, DbTime, DbUuid, events, failures, flow_types, flows, phase_runs};

/// The database behind the runtime: SQLite or PostgreSQL, chosen by the URL. Cheap to clone;
/// every clone shares one pool.
#[derive(Clone)]
pub struct DbStore {
    pools: Arc<Pools>,
}

enum Pools {
    Sqlite(sqlite::SqlitePool),
    Postgres(postgres::PgPool),
}

/// Runs `$body` with `$conn` bound to a pooled connection of the store's backend and `$db` to
/// the diesel backend type, once expanded per backend. `$backend` is the [`Backend`] value,
/// for the few statements whose text differs.
macro_rules! with_conn {
    ($store:expr, |$conn:ident: $db:ident, $backend:ident| $body:expr) => {
        match &*$store.pools {
            Pools::Sqlite(pool) => {
                #[allow(unused_imports)]
                use diesel::sqlite::Sqlite as $db;
                #[allow(unused_variables)]
                let $backend = Backend::Sqlite;
                let mut pooled = pool.get().await.map_err(pool_error)?;
                let $conn: &mut sqlite::SqliteConn = &mut pooled;
                $body
            }
            Pools::Postgres(pool) => {
                #[allow(unused_imports)]
                use diesel::pg::Pg as $db;
                #[allow(unused_variables)]
                let $backend = Backend::Postgres;
                let mut pooled = pool.get().await.map_err(pool_error)?;
                let $conn: &mut diesel_async::AsyncPgConnection = &mut pooled;
                $body
            }
        }
    };
}

impl DbStore {
    /// Opens the database named by `url` (`sqlite://path` or `postgres://…`), creating a SQLite
    /// file's folder, builds a pool of `pool_size` connections and runs the embedded migrations.
    pub async fn connect(url: &str, pool_size: usize) -> Result<DbStore, StoreError> {
        let pools = if sqlite::is_sqlite_url(url) {
            Pools::Sqlite(sqlite::connect(url, pool_size).await?)
        } else if postgres::is_postgres_url(url) {
            Pools::Postgres(postgres::connect(url, pool_size).await?)
        } else {
            return Err(StoreError::Unavailable(format!(
                "unsupported database url `{url}`: expected sqlite://… or postgres://…"
            )));
        };
        Ok(DbStore {
            pools: Arc::new(pools),
        })
    }

    /// Which backend this store talks to, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match &*self.pools {
            Pools::Sqlite(_) => "sqlite",
            Pools::Postgres(_) => "postgres",
        }
    }

    async fn commit_batch(&self, batch: &[Write]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Everything that can fail without the database fails here, before the transaction.
        let plan = Plan::of(batch)?;
        let plan = &plan;
        with_conn!(self, |conn: Db, backend| {
            conn.transaction(async |c| {
                let per = bulk::rows_per_statement(bulk::FLOW_TYPE_COLUMNS.len());
                for chunk in plan.flow_types.chunks(per) {
                    let sql = bulk::insert(
                        backend,
                        "flow_types",
                        bulk::FLOW_TYPE_COLUMNS,
                        chunk.len(),
                        bulk::FLOW_TYPE_CONFLICT,
                    );
                    let mut q = diesel::sql_query(sql).into_boxed::<Db>();
                    for r in chunk {
                        q = q
                            .bind::<Text, _>(r.name)
                            .bind::<Integer, _>(r.version)
                            .bind::<SqlJson, _>(DbJsonRef(&r.definition))
                            .bind::<SqlTime, _>(plan.now);
                    }
                    q.execute(&mut *c).await?;
                }

                let per = bulk::rows_per_statement(bulk::FLOW_COLUMNS.len());
                for chunk in plan.new_flows.chunks(per) {
                    let sql = bulk::insert(backend, "flows", bulk::FLOW_COLUMNS, chunk.len(), "");
                    let mut q = diesel::sql_query(sql).into_boxed::<Db>();
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
                    q.execute(&mut *c).await?;
                }

                let per = bulk::rows_per_statement(bulk::FLOW_CHANGE_COLUMNS.len());
                for chunk in plan.flow_changes.chunks(per) {
                    let mut q = diesel::sql_query(bulk::update_flows(backend, chunk.len()))
                        .into_boxed::<Db>();
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
                    let updated = q.execute(&mut *c).await?;
                    // Keyed by id and deduplicated, so each change matches exactly one row.
                    if updated != chunk.len() {
                        return Err(TxError::MissingFlows(chunk.len().saturating_sub(updated)));
                    }
                }

                let per = bulk::rows_per_statement(bulk::PHASE_COLUMNS.len());
                for chunk in plan.phases.chunks(per) {
                    let sql = bulk::insert(
                        backend,
                        "phase_runs",
                        bulk::PHASE_COLUMNS,
                        chunk.len(),
                        bulk::PHASE_CONFLICT,
                    );
                    let mut q = diesel::sql_query(sql).into_boxed::<Db>();
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
                            .bind::<Nullable<SqlJson>, _>(r.output())
                            .bind::<Nullable<Text>, _>(p.error.as_deref());
                    }
                    q.execute(&mut *c).await?;
                }

                let per = bulk::rows_per_statement(bulk::EVENT_COLUMNS.len());
                for chunk in plan.events.chunks(per) {
                    let sql = bulk::insert(backend, "events", bulk::EVENT_COLUMNS, chunk.len(), "");
                    let mut q = diesel::sql_query(sql).into_boxed::<Db>();
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
                    q.execute(&mut *c).await?;
                }

                let per = bulk::rows_per_statement(bulk::FAILURE_COLUMNS.len());
                for chunk in plan.failures.chunks(per) {
                    let sql =
                        bulk::insert(backend, "failures", bulk::FAILURE_COLUMNS, chunk.len(), "");
                    let mut q = diesel::sql_query(sql).into_boxed::<Db>();
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
                    q.execute(&mut *c).await?;
                }
                Ok::<(), TxError>(())
            })
            .await
            .map_err(TxError::into_store_error)
        })
    }

    async fn load_one(&self, id: FlowId) -> Result<Option<FlowState>, StoreError> {
        with_conn!(self, |conn: Db, backend| {
            let row = flows::table
                .find(DbUuid(id.0))
                .select(FlowRow::as_select())
                .first(conn)
                .await
                .optional()
                .map_err(db_error)?;
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
        let id = with_conn!(self, |conn: Db, backend| {
            flows::table
                .filter(flows::client_account_id.eq(&tenant.client_account_id))
                .filter(flows::engagement_id.eq(&tenant.engagement_id))
                .filter(flows::idempotency_key.eq(key))
                .select(flows::id)
                .first::<DbUuid>(conn)
                .await
                .optional()
                .map_err(db_error)?
        });
        match id {
            Some(id) => self.load_one(FlowId(id.0)).await,
            None => Ok(None),
        }
    }

    async fn list(&self, query: &FlowQuery) -> Result<Vec<FlowState>, StoreError> {
        with_conn!(self, |conn: Db, backend| {
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
            for chunk in ids.chunks(bulk::MAX_ROWS) {
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
        with_conn!(self, |conn: Db, backend| {
            let rows = flows::table
                .filter(flows::status.eq_any(&active))
                .order(flows::id)
                .select(FlowRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?;
            let phases = phase_runs::table
                .filter(
                    phase_runs::flow_id.eq_any(
                        flows::table
                            .filter(flows::status.eq_any(&active))
                            .select(flows::id),
                    ),
                )
                .order((phase_runs::flow_id, phase_runs::position))
                .select(PhaseRow::as_select())
                .load(conn)
                .await
                .map_err(db_error)?;
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
        let rows: Vec<EventRow> = with_conn!(self, |conn: Db, backend| {
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
        let rows: Vec<EventRow> = with_conn!(self, |conn: Db, backend| {
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

    async fn failures_of(&self, flow_id: FlowId) -> Result<Vec<FailureRecord>, StoreError> {
        let rows: Vec<FailureRow> = with_conn!(self, |conn: Db, backend| {
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
        let rows: Vec<FlowTypeRow> = with_conn!(self, |conn: Db, backend| {
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
        let max: Option<i64> = with_conn!(self, |conn: Db, backend| {
            events::table
                .select(diesel::dsl::max(events::id))
                .first(conn)
                .await
                .map_err(db_error)?
        });
        Ok(max.unwrap_or(0))
    }

    async fn round_trip(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn: Db, backend| {
            diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                .get_result::<i32>(conn)
                .await
                .map_err(db_error)?;
        });
        Ok(())
    }
}

impl FlowStore for DbStore {
    fn commit<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.commit_batch(batch))
    }

    fn load_flow_types(&self) -> BoxFuture<'_, Result<Vec<FlowType>, StoreError>> {
        Box::pin(self.flow_types())
    }

    fn load_active_flows(&self) -> BoxFuture<'_, Result<Vec<FlowState>, StoreError>> {
        Box::pin(self.active())
    }

    fn load_flow(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowState>, StoreError>> {
        Box::pin(self.load_one(id))
    }

    fn find_by_idempotency_key<'a>(
        &'a self,
        tenant: &'a Tenant,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowState>, StoreError>> {
        Box::pin(self.by_idempotency_key(tenant, key))
    }

    fn list_flows<'a>(
        &'a self,
        query: &'a FlowQuery,
    ) -> BoxFuture<'a, Result<Vec<FlowState>, StoreError>> {
        Box::pin(self.list(query))
    }

    fn flow_events(
        &self,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        Box::pin(self.events_of_flow(flow_id, after, limit))
    }

    fn tenant_events<'a>(
        &'a self,
        tenant: &'a Tenant,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FlowEvent>, StoreError>> {
        Box::pin(self.events_of_tenant(tenant, after, limit))
    }

    fn failures(&self, flow_id: FlowId) -> BoxFuture<'_, Result<Vec<FailureRecord>, StoreError>> {
        Box::pin(self.failures_of(flow_id))
    }

    fn max_event_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(self.max_id())
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.round_trip())
    }
}

/// A batch turned into rows, grouped by statement. Later writes to the same flow row or phase
/// row replace earlier ones: each write carries the whole row, so only the last one matters,
/// and one multi-row statement may not touch a row twice.
struct Plan<'a> {
    flow_types: Vec<NewFlowType<'a>>,
    new_flows: Vec<NewFlow<'a>>,
    flow_changes: Vec<FlowChange<'a>>,
    phases: Vec<PhaseWrite<'a>>,
    events: Vec<EventWrite<'a>>,
    failures: Vec<FailureWrite<'a>>,
    now: DbTime,
}

impl<'a> Plan<'a> {
    fn of(batch: &'a [Write]) -> Result<Self, StoreError> {
        let mut plan = Plan {
            flow_types: Vec::new(),
            new_flows: Vec::new(),
            flow_changes: Vec::new(),
            phases: Vec::new(),
            events: Vec::new(),
            failures: Vec::new(),
            now: DbTime(flowd_actors::model::now()),
        };
        let mut change_index: HashMap<FlowId, usize> = HashMap::new();
        let mut phase_index: HashMap<(FlowId, usize), usize> = HashMap::new();
        let mut put_phase =
            |plan: &mut Plan<'a>, write: PhaseWrite<'a>, key: (FlowId, usize)| match phase_index
                .get(&key)
            {
                Some(&i) => plan.phases[i] = write,
                None => {
                    phase_index.insert(key, plan.phases.len());
                    plan.phases.push(write);
                }
            };
        for write in batch {
            match write {
                Write::FlowType(flow_type) => {
                    plan.flow_types.push(NewFlowType::from_domain(flow_type)?)
                }
                Write::Transition(t) => {
                    if let Some(created) = &t.create {
                        // The created row already is the state after the transition.
                        plan.new_flows.push(NewFlow::from_domain(created)?);
                        for (position, phase) in created.phases.iter().enumerate() {
                            let row = PhaseWrite::from_domain(created.id, position, phase)?;
                            put_phase(&mut plan, row, (created.id, position));
                        }
                    } else {
                        let change = FlowChange::from_domain(t.flow_id, &t.flow)?;
                        match change_index.get(&t.flow_id) {
                            Some(&i) => plan.flow_changes[i] = change,
                            None => {
                                change_index.insert(t.flow_id, plan.flow_changes.len());
                                plan.flow_changes.push(change);
                            }
                        }
                        for (position, phase) in &t.phases {
                            let row = PhaseWrite::from_domain(t.flow_id, *position, phase)?;
                            put_phase(&mut plan, row, (t.flow_id, *position));
                        }
                    }
                    for event in &t.events {
                        plan.events.push(EventWrite::from_domain(event)?);
                    }
                    if let Some(failure) = &t.failure {
                        plan.failures.push(FailureWrite::from_domain(failure)?);
                    }
                }
            }
        }
        Ok(plan)
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
/// undecodable values are corrupt data, everything else (closed connections, a locked SQLite
/// file, serialization failures) may succeed on a retry.
fn db_error(error: DieselError) -> StoreError {
    match error {
        DieselError::DatabaseError(
            kind @ (DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation),
            info,
        ) => StoreError::Conflict(format!("{kind:?}: {}", info.message())),
        DieselError::DatabaseError(_, info) => StoreError::Unavailable(info.message().to_owned()),
        DieselError::DeserializationError(e) => StoreError::Corrupt(e.to_string()),
        DieselError::SerializationError(e) => {
            StoreError::Conflict(format!("value not storable: {e}"))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn pool_error(error: diesel_async::pooled_connection::deadpool::PoolError) -> StoreError {
    StoreError::Unavailable(error.to_string())
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
