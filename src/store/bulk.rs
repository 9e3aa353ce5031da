//! PostgreSQL's multi-row commit statements. A batch of a thousand transitions is a handful of
//! statements instead of thousands of network round trips, and each statement's text depends
//! only on its table and row count, so the connection keeps it prepared.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;

/// Rows per read query, at most (`IN` lists of ids).
pub const MAX_ROWS: usize = 1000;

/// The row counts a statement may have, largest first. Every chunk of a batch has one of them,
/// so a table has at most nine statement texts, each prepared once per connection rather than
/// parsed again on every commit.
const SHAPES: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// Cuts `rows` into chunks whose lengths are all [`SHAPES`], the largest that fit first.
pub fn shaped_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = SHAPES.iter().copied().find(|&size| size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

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

/// What follows the `VALUES` rows of a flow update, binding [`FLOW_CHANGE_COLUMNS`].
/// PostgreSQL types the `VALUES` columns from the bound parameters' types.
const UPDATE_FLOWS_TAIL: &str = ") UPDATE flows SET status = v.status, \
     current_phase = v.current_phase, next_phase = v.next_phase, \
     progress_percentage = v.progress_percentage, last_seq = v.last_seq, \
     updated_at = v.updated_at FROM v WHERE flows.id = v.id";

/// A multi-row statement: `head`, the rows of bound values as `($1, $2), ($3, $4)`, `tail`.
/// Unlike diesel's `sql_query`, which is prepared and closed again at every use, it lets the
/// connection cache it: its text depends only on its table and its row count.
pub struct Rows<'f> {
    head: String,
    columns: usize,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'f>>,
    tail: &'static str,
}

impl<'f> Rows<'f> {
    /// `INSERT INTO table (columns) VALUES (…), (…)` followed by `tail`, for `rows` rows.
    pub fn insert(table: &str, columns: &[&str], rows: usize, tail: &'static str) -> Self {
        Self {
            head: format!("INSERT INTO {table} ({}) VALUES ", columns.join(", ")),
            columns: columns.len(),
            binds: Vec::with_capacity(rows * columns.len()),
            tail,
        }
    }

    /// One `UPDATE … FROM (VALUES …)` for `rows` flow changes, binding [`FLOW_CHANGE_COLUMNS`].
    pub fn update_flows(rows: usize) -> Self {
        Self {
            head: format!("WITH v ({}) AS (VALUES ", FLOW_CHANGE_COLUMNS.join(", ")),
            columns: FLOW_CHANGE_COLUMNS.len(),
            binds: Vec::with_capacity(rows * FLOW_CHANGE_COLUMNS.len()),
            tail: UPDATE_FLOWS_TAIL,
        }
    }

    /// Adds the next value, row by row and column by column.
    pub fn bind<ST, V>(mut self, value: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'f,
        ST: Send + 'f,
    {
        self.binds.push(Box::new(Bind {
            value,
            sql_type: PhantomData::<ST>,
        }));
        self
    }
}

impl QueryFragment<Pg> for Rows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(&self.head);
        for (i, bind) in self.binds.iter().enumerate() {
            out.push_sql(match (i, i % self.columns) {
                (0, _) => "(",
                (_, 0) => "), (",
                _ => ", ",
            });
            bind.walk_ast(out.reborrow())?;
        }
        out.push_sql(")");
        out.push_sql(self.tail);
        Ok(())
    }
}

/// Cached by its text: no static id.
impl QueryId for Rows<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// One bound value of [`Rows`] and its SQL type.
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
    fn numbers_placeholders_across_rows() {
        let rows = Rows::insert("t", &["a", "b"], 2, " X")
            .bind::<Integer, _>(1)
            .bind::<Text, _>("one")
            .bind::<Integer, _>(2)
            .bind::<Text, _>("two");
        let sql = diesel::debug_query::<Pg, _>(&rows).to_string();
        assert!(
            sql.starts_with("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) X --"),
            "{sql}"
        );
        assert!(
            diesel::query_builder::QueryFragment::<Pg>::is_safe_to_cache_prepared(&rows, &Pg)
                .expect("cacheable")
        );
    }

    #[test]
    fn cuts_batches_into_few_shapes() {
        for len in [0, 1, 7, 255, 256, 498, 1000, 2049] {
            let rows: Vec<usize> = (0..len).collect();
            let chunks: Vec<&[usize]> = shaped_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "{len} rows, in order, each once");
            assert!(chunks.iter().all(|c| SHAPES.contains(&c.len())));
            // At most one chunk of each size below the largest.
            assert!(
                chunks.len() < len / SHAPES[0] + SHAPES.len(),
                "{len}: {}",
                chunks.len()
            );
        }
    }

    #[test]
    fn keeps_statements_under_the_bind_limit() {
        let widest = [
            FLOW_TYPE_COLUMNS,
            FLOW_COLUMNS,
            PHASE_COLUMNS,
            EVENT_COLUMNS,
            FAILURE_COLUMNS,
            TASK_COLUMNS,
            FLOW_CHANGE_COLUMNS,
        ]
        .iter()
        .map(|columns| columns.len())
        .max()
        .unwrap_or(0);
        assert!(SHAPES[0] * widest <= 65_535);
    }
}
