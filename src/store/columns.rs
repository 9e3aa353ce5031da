//! Each table's commit columns, in bind order: the one description both backends' commit
//! statements are written from (SQLite's column lists are checked against it in its tests).
//!
//! And PostgreSQL's commit statements: one per table per batch, whatever the batch's size. Each
//! column is bound as one array and `unnest` turns the arrays back into rows, so a statement's
//! text depends only on its table: the connection keeps it prepared, PostgreSQL receives a
//! dozen parameters instead of thousands, and builds no expression per row as it does for a
//! long `VALUES` list.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{Array, HasSqlType};

/// Rows per read query, at most (`IN` lists of ids).
pub const MAX_ROWS: usize = 1000;

/// Columns of a `flow_types` insert, in bind order.
pub const FLOW_TYPE_COLUMNS: &[&str] = &["name", "version", "definition", "created_at"];

/// A (name, version) is written once; re-registering the same version changes nothing.
pub const FLOW_TYPE_CONFLICT: &str = " ON CONFLICT (name, version) DO NOTHING";

/// Columns of a `flows` insert, in bind order.
pub const FLOW_COLUMNS: &[&str] = &[
    "id",
    "flow_type",
    "flow_type_version",
    "status",
    "current_phase",
    "next_phase",
    "progress_percentage",
    "input",
    "parent_flow_id",
    "master_flow_id",
    "client_account_id",
    "engagement_id",
    "created_by",
    "idempotency_key",
    "last_seq",
    "created_at",
    "updated_at",
];

/// Columns of a `phase_runs` upsert, in bind order.
pub const PHASE_COLUMNS: &[&str] = &[
    "flow_id",
    "position",
    "name",
    "status",
    "attempt",
    "started_at",
    "finished_at",
    "output",
    "error",
];

/// A phase row carries the whole phase: insert it, or overwrite the stored one (both backends).
pub const PHASE_CONFLICT: &str = " ON CONFLICT (flow_id, position) DO UPDATE SET name = excluded.name, \
     status = excluded.status, attempt = excluded.attempt, started_at = excluded.started_at, \
     finished_at = excluded.finished_at, output = excluded.output, error = excluded.error";

/// Columns of an `events` insert, in bind order.
pub const EVENT_COLUMNS: &[&str] = &[
    "id",
    "flow_id",
    "seq",
    "master_flow_id",
    "client_account_id",
    "engagement_id",
    "flow_type",
    "kind",
    "status",
    "current_phase",
    "next_phase",
    "progress_percentage",
    "error",
    "at",
    "status_reason",
];

/// Columns of a `failures` insert, in bind order; the database assigns `id`.
pub const FAILURE_COLUMNS: &[&str] = &[
    "flow_id",
    "master_flow_id",
    "phase",
    "attempt",
    "error_kind",
    "message",
    "diagnostic",
    "at",
];

/// Columns of a `tasks` upsert, in bind order.
pub const TASK_COLUMNS: &[&str] = &[
    "id",
    "queue",
    "flow_id",
    "master_flow_id",
    "phase",
    "attempt",
    "client_account_id",
    "engagement_id",
    "payload",
    "status",
    "lease_id",
    "worker_id",
    "lease_expires_at",
    "result",
    "created_at",
    "updated_at",
];

/// A task write inserts the task, or moves the stored one along: only what a lease, a heartbeat
/// or a result changes is overwritten; what the task is (queue, flow, phase, attempt, payload,
/// tenant, creation time) stays as first written (both backends). A new id that repeats a
/// stored `(flow_id, phase, attempt)` is not caught here: it breaks that unique key and the
/// batch is refused.
pub const TASK_CONFLICT: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
     lease_id = excluded.lease_id, worker_id = excluded.worker_id, \
     lease_expires_at = excluded.lease_expires_at, result = excluded.result, \
     updated_at = excluded.updated_at";

/// Columns of a flow update, in bind order: the key, then the columns a transition changes.
pub const FLOW_CHANGE_COLUMNS: &[&str] = &[
    "id",
    "status",
    "current_phase",
    "next_phase",
    "progress_percentage",
    "last_seq",
    "updated_at",
];

/// What precedes the `unnest` of a flow update, whose columns are [`FLOW_CHANGE_COLUMNS`].
const UPDATE_FLOWS_HEAD: &str = "UPDATE flows SET status = v.status, \
     current_phase = v.current_phase, next_phase = v.next_phase, \
     progress_percentage = v.progress_percentage, last_seq = v.last_seq, \
     updated_at = v.updated_at FROM ";

/// A statement over many rows, bound column by column: `head`, `unnest($1, $2, …)`, `tail`.
/// Unlike diesel's `sql_query`, which is prepared and closed again at every use, it lets the
/// connection cache it: its text depends only on its table.
pub struct Columns<'f> {
    head: String,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'f>>,
    tail: String,
}

impl<'f> Columns<'f> {
    /// `INSERT INTO table (columns) SELECT * FROM unnest(…)` followed by `tail`.
    pub fn insert(table: &str, columns: &[&str], tail: &str) -> Self {
        Self {
            head: format!(
                "INSERT INTO {table} ({}) SELECT * FROM ",
                columns.join(", ")
            ),
            binds: Vec::with_capacity(columns.len()),
            tail: tail.to_owned(),
        }
    }

    /// One `UPDATE … FROM unnest(…)` of flow rows by id, binding [`FLOW_CHANGE_COLUMNS`].
    pub fn update_flows() -> Self {
        Self {
            head: UPDATE_FLOWS_HEAD.to_owned(),
            binds: Vec::with_capacity(FLOW_CHANGE_COLUMNS.len()),
            tail: format!(
                " AS v ({}) WHERE flows.id = v.id",
                FLOW_CHANGE_COLUMNS.join(", ")
            ),
        }
    }

    /// Adds the next column: one value per row, every column the same length.
    pub fn bind<ST, V>(mut self, column: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<Array<ST>, Pg> + Send + 'f,
        ST: Send + 'static,
    {
        self.binds.push(Box::new(Bind {
            value: column,
            sql_type: PhantomData::<Array<ST>>,
        }));
        self
    }
}

impl QueryFragment<Pg> for Columns<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(&self.head);
        out.push_sql("unnest(");
        for (i, bind) in self.binds.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            bind.walk_ast(out.reborrow())?;
        }
        out.push_sql(")");
        out.push_sql(&self.tail);
        Ok(())
    }
}

/// Cached by its text: no static id.
impl QueryId for Columns<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// One bound value of [`Columns`] and its SQL type.
struct Bind<ST, V> {
    value: V,
    sql_type: PhantomData<ST>,
}

impl<ST, V> QueryFragment<Pg> for Bind<ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, V>(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Integer, Text};

    use super::*;

    #[test]
    fn binds_one_array_per_column() {
        let columns = Columns::insert("t", &["a", "b"], " X")
            .bind::<Integer, _>(vec![1, 2])
            .bind::<Text, _>(vec!["one", "two"]);
        let sql = diesel::debug_query::<Pg, _>(&columns).to_string();
        assert!(
            sql.starts_with("INSERT INTO t (a, b) SELECT * FROM unnest($1, $2) X --"),
            "{sql}"
        );
        assert!(
            diesel::query_builder::QueryFragment::<Pg>::is_safe_to_cache_prepared(&columns, &Pg)
                .expect("cacheable")
        );
    }

    #[test]
    fn updates_flows_from_named_columns() {
        let update = FLOW_CHANGE_COLUMNS
            .iter()
            .fold(Columns::update_flows(), |q, _| {
                q.bind::<Integer, _>(Vec::<i32>::new())
            });
        let sql = diesel::debug_query::<Pg, _>(&update).to_string();
        assert!(
            sql.starts_with(
                "UPDATE flows SET status = v.status, current_phase = v.current_phase, \
                 next_phase = v.next_phase, progress_percentage = v.progress_percentage, \
                 last_seq = v.last_seq, updated_at = v.updated_at \
                 FROM unnest($1, $2, $3, $4, $5, $6, $7) AS v (id, status, current_phase, \
                 next_phase, progress_percentage, last_seq, updated_at) WHERE flows.id = v.id --"
            ),
            "{sql}"
        );
    }
}
