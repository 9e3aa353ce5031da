//! Each table's commit columns, written once: every column's name, SQL type and where a planned
//! row's value comes from ([`commit_row!`]). Both backends' commit statements are written from
//! these descriptions: SQLite binds row by row ([`CommitRow::bind_values`]), PostgreSQL column by
//! column ([`CommitRow::bind_columns`]), so a column added or renamed is one line here (and
//! its schema and migrations).
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
use diesel::sql_types::{Array, BigInt, Double, HasSqlType, Integer, Nullable, Text};
use diesel::sqlite::Sqlite;

use super::models::{
    EventWrite, FailureWrite, FlowChange, NewFlow, NewFlowType, PhaseWrite, TaskWrite,
};
use super::schema::sql_types::{SqlJson, SqlTime, SqlUuid};

/// Rows per read query, at most (`IN` lists of ids).
pub const MAX_ROWS: usize = 1000;

/// A (name, version) is written once; re-registering the same version changes nothing.
pub const FLOW_TYPE_CONFLICT: &str = " ON CONFLICT (name, version) DO NOTHING";

/// A phase row carries the whole phase: insert it, or overwrite the stored one (both backends).
pub const PHASE_CONFLICT: &str = " ON CONFLICT (flow_id, position) DO UPDATE SET name = excluded.name, \
     status = excluded.status, attempt = excluded.attempt, started_at = excluded.started_at, \
     finished_at = excluded.finished_at, output = excluded.output, error = excluded.error";

/// A task write inserts the task, or moves the stored one along: only what a lease, a heartbeat
/// or a result changes is overwritten; what the task is (queue, flow, phase, attempt, payload,
/// tenant, creation time) stays as first written (both backends). A new id that repeats a
/// stored `(flow_id, phase, attempt)` is not caught here: it breaks that unique key and the
/// batch is refused.
pub const TASK_CONFLICT: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
     lease_id = excluded.lease_id, worker_id = excluded.worker_id, \
     lease_expires_at = excluded.lease_expires_at, result = excluded.result, \
     updated_at = excluded.updated_at";

/// A planned row of one table, described once by [`commit_row!`]: the statements of both
/// backends are written from its columns.
pub trait CommitRow: Sized {
    /// The table the row goes to.
    const TABLE: &'static str;
    /// Its columns, in bind order; the first is the key an update matches rows by.
    const COLUMNS: &'static [&'static str];
    /// What an insert of the row does when its key is taken (both backends); empty: it fails.
    const CONFLICT: &'static str;
    /// PostgreSQL: binds the values of every row, one array per column, after `statement`'s
    /// head.
    fn bind_columns<'f>(rows: &'f [Self], statement: Columns<'f>) -> Columns<'f>;
    /// SQLite: binds the row's values, comma-separated, in column order.
    fn bind_values<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()>;
    /// SQLite: `column = ?, …` for every column not in `skip`, in column order.
    fn bind_assignments<'b>(
        &'b self,
        skip: &[&str],
        out: &mut AstPass<'_, 'b, Sqlite>,
    ) -> QueryResult<()>;
}

/// Describes a row type's table: `Row<'_>: "table", CONFLICT => |r| { column: SqlType = value,
/// … }`, each value a reference into the row `r` (or a `&'static str`).
macro_rules! commit_row {
    ($(#[$doc:meta])* $row:ty: $table:literal, $conflict:expr => |$r:ident| {
        $($column:ident: $sql:ty = $value:expr,)+
    }) => {
        $(#[$doc])*
        impl CommitRow for $row {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [&'static str] = &[$(stringify!($column)),+];
            const CONFLICT: &'static str = $conflict;

            fn bind_columns<'f>(rows: &'f [Self], statement: Columns<'f>) -> Columns<'f> {
                statement$(.bind::<$sql, _>(rows.iter().map(|$r| $value).collect::<Vec<_>>()))+
            }

            fn bind_values<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
                let $r = self;
                let mut first = true;
                $(
                    if !std::mem::take(&mut first) {
                        out.push_sql(", ");
                    }
                    out.push_bind_param::<$sql, _>($value)?;
                )+
                Ok(())
            }

            fn bind_assignments<'b>(
                &'b self,
                skip: &[&str],
                out: &mut AstPass<'_, 'b, Sqlite>,
            ) -> QueryResult<()> {
                let $r = self;
                let mut first = true;
                $(
                    if !skip.contains(&stringify!($column)) {
                        if !std::mem::take(&mut first) {
                            out.push_sql(", ");
                        }
                        out.push_sql(concat!(stringify!($column), " = "));
                        out.push_bind_param::<$sql, _>($value)?;
                    }
                )+
                Ok(())
            }
        }
    };
}

commit_row! {
    /// `flow_types`: a definition, stored once per (name, version).
    NewFlowType<'_>: "flow_types", FLOW_TYPE_CONFLICT => |r| {
        name: Text = r.name,
        version: Integer = &r.version,
        definition: SqlJson = &r.definition,
        created_at: SqlTime = &r.created_at,
    }
}

commit_row! {
    /// `flows`: a created flow.
    NewFlow<'_>: "flows", "" => |r| {
        id: SqlUuid = &r.id,
        flow_type: Text = &r.flow.flow_type,
        flow_type_version: Integer = &r.flow_type_version,
        status: Text = r.flow.status.as_str(),
        current_phase: Nullable<Text> = &r.flow.current_phase,
        next_phase: Nullable<Text> = &r.flow.next_phase,
        progress_percentage: Double = &r.flow.progress_percentage,
        input: SqlJson = &r.input,
        parent_flow_id: Nullable<SqlUuid> = &r.parent_flow_id,
        master_flow_id: SqlUuid = &r.master_flow_id,
        client_account_id: Text = &r.flow.client_account_id,
        engagement_id: Text = &r.flow.engagement_id,
        created_by: Nullable<Text> = &r.flow.created_by,
        idempotency_key: Nullable<Text> = &r.flow.idempotency_key,
        last_seq: BigInt = &r.last_seq,
        created_at: SqlTime = &r.created_at,
        updated_at: SqlTime = &r.updated_at,
        owner_node: Nullable<Text> = &r.owner_node,
        owner_epoch: BigInt = &r.owner_epoch,
    }
}

commit_row! {
    /// `flows`, updated by a transition: the key, the columns a transition changes, then the
    /// fence ([`FLOW_FENCE`]), which is matched, never set.
    FlowChange<'_>: "flows", "" => |r| {
        id: SqlUuid = &r.id,
        status: Text = r.update.status.as_str(),
        current_phase: Nullable<Text> = &r.update.current_phase,
        next_phase: Nullable<Text> = &r.update.next_phase,
        progress_percentage: Double = &r.update.progress_percentage,
        last_seq: BigInt = &r.last_seq,
        updated_at: SqlTime = &r.updated_at,
        owner_node: Nullable<Text> = &r.owner_node,
        owner_epoch: BigInt = &r.owner_epoch,
    }
}

/// The columns of [`FlowChange`] that fence the update: the owner and its epoch must match the
/// stored row (PostgreSQL, [`Columns::fenced_update`]); SQLite, single-node, neither sets nor
/// matches them.
pub const FLOW_FENCE: &[&str] = &["owner_node", "owner_epoch"];

commit_row! {
    /// `phase_runs`: a whole phase, inserted or overwritten.
    PhaseWrite<'_>: "phase_runs", PHASE_CONFLICT => |r| {
        flow_id: SqlUuid = &r.flow_id,
        position: Integer = &r.position,
        name: Text = &r.phase.name,
        status: Text = r.phase.status.as_str(),
        attempt: Integer = &r.attempt,
        started_at: Nullable<SqlTime> = &r.started_at,
        finished_at: Nullable<SqlTime> = &r.finished_at,
        output: Nullable<SqlJson> = &r.output,
        error: Nullable<Text> = &r.phase.error,
    }
}

commit_row! {
    /// `events`: one committed event.
    EventWrite<'_>: "events", "" => |r| {
        id: BigInt = &r.event.id,
        flow_id: SqlUuid = &r.flow_id,
        seq: BigInt = &r.seq,
        master_flow_id: SqlUuid = &r.master_flow_id,
        client_account_id: Text = &r.event.client_account_id,
        engagement_id: Text = &r.event.engagement_id,
        flow_type: Text = &r.event.flow_type,
        kind: Text = r.event.kind.as_str(),
        status: Text = r.event.status.as_str(),
        current_phase: Nullable<Text> = &r.event.current_phase,
        next_phase: Nullable<Text> = &r.event.next_phase,
        progress_percentage: Double = &r.event.progress_percentage,
        error: Nullable<Text> = &r.event.error,
        at: SqlTime = &r.at,
        status_reason: Nullable<Text> = &r.status_reason,
    }
}

commit_row! {
    /// `failures`: a journal entry; the database assigns its `id`.
    FailureWrite<'_>: "failures", "" => |r| {
        flow_id: SqlUuid = &r.flow_id,
        master_flow_id: SqlUuid = &r.master_flow_id,
        phase: Nullable<Text> = &r.failure.phase,
        attempt: Integer = &r.attempt,
        error_kind: Text = &r.failure.error_kind,
        message: Text = &r.failure.message,
        diagnostic: SqlJson = &r.diagnostic,
        at: SqlTime = &r.at,
    }
}

commit_row! {
    /// `tasks`: a task inserted, or moved along ([`TASK_CONFLICT`]).
    TaskWrite<'_>: "tasks", TASK_CONFLICT => |r| {
        id: SqlUuid = &r.id,
        queue: Text = &r.task.queue,
        flow_id: SqlUuid = &r.flow_id,
        master_flow_id: SqlUuid = &r.master_flow_id,
        phase: Text = &r.task.phase,
        attempt: Integer = &r.attempt,
        client_account_id: Text = &r.task.client_account_id,
        engagement_id: Text = &r.task.engagement_id,
        payload: SqlJson = &r.payload,
        status: Text = r.task.status.as_str(),
        lease_id: Nullable<SqlUuid> = &r.lease_id,
        worker_id: Nullable<Text> = &r.task.worker_id,
        lease_expires_at: Nullable<SqlTime> = &r.lease_expires_at,
        result: Nullable<SqlJson> = &r.result,
        created_at: SqlTime = &r.created_at,
        updated_at: SqlTime = &r.updated_at,
    }
}

/// A statement over many rows, bound column by column: `head`, `unnest($1, $2, …)`, `tail`.
/// Unlike diesel's `sql_query`, which is prepared and closed again at every use, it lets the
/// connection cache it: its text depends only on its table.
pub struct Columns<'f> {
    head: String,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'f>>,
    tail: String,
}

impl<'f> Columns<'f> {
    /// `INSERT INTO table (columns) SELECT * FROM unnest(…)` and the table's conflict clause,
    /// binding every row of `rows`.
    pub fn insert<R: CommitRow>(rows: &'f [R]) -> Self {
        let statement = Self {
            head: format!(
                "INSERT INTO {} ({}) SELECT * FROM ",
                R::TABLE,
                R::COLUMNS.join(", ")
            ),
            binds: Vec::with_capacity(R::COLUMNS.len()),
            tail: R::CONFLICT.to_owned(),
        };
        R::bind_columns(rows, statement)
    }

    /// `INSERT INTO table (columns) SELECT …` of `rows` whose first column, the id, is
    /// numbered in the statement from the counter row `counter.last` (already moved past
    /// them): the rows get the ids up to `last`, in order, whatever ids they carry.
    pub fn insert_numbered<R: CommitRow>(rows: &'f [R], counter: &str) -> Self {
        let values: Vec<String> = R::COLUMNS[1..].iter().map(|c| format!("v.{c}")).collect();
        let statement = Self {
            head: format!(
                "INSERT INTO {} ({}) SELECT n.last - count(*) OVER () + v.ord, {} FROM {counter} n, ",
                R::TABLE,
                R::COLUMNS.join(", "),
                values.join(", ")
            ),
            binds: Vec::with_capacity(R::COLUMNS.len()),
            tail: format!(
                " WITH ORDINALITY AS v ({}, ord){}",
                R::COLUMNS.join(", "),
                R::CONFLICT
            ),
        };
        R::bind_columns(rows, statement)
    }

    /// One `UPDATE … FROM unnest(…)` of `rows` that changes a row only while its `fence`
    /// columns hold the values of the update, matched by the first column and setting the
    /// others, and returns the keys it changed: the caller learns which rows were fenced off
    /// in the same statement that wrote the others.
    pub fn fenced_update<R: CommitRow>(rows: &'f [R], fence: &[&str]) -> Self {
        let (key, rest) = R::COLUMNS.split_first().expect("a table has a key");
        let set: Vec<String> = rest
            .iter()
            .filter(|c| !fence.contains(c))
            .map(|c| format!("{c} = v.{c}"))
            .collect();
        let matched: String = std::iter::once(key)
            .chain(fence)
            .map(|c| format!(" AND {t}.{c} = v.{c}", t = R::TABLE))
            .collect();
        let statement = Self {
            head: format!("UPDATE {} SET {} FROM ", R::TABLE, set.join(", ")),
            binds: Vec::with_capacity(R::COLUMNS.len()),
            tail: format!(
                " AS v ({}) WHERE{} RETURNING {}.{key}",
                R::COLUMNS.join(", "),
                &matched[4..],
                R::TABLE
            ),
        };
        R::bind_columns(rows, statement)
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

/// A [`Columns`] statement whose `RETURNING` yields one column of SQL type `ST`, so that it
/// can be `load`ed.
pub struct Returning<'f, ST> {
    statement: Columns<'f>,
    sql_type: PhantomData<ST>,
}

impl<'f, ST> Returning<'f, ST> {
    /// `statement`, read back as rows of `ST` (its text must end in `RETURNING` one column).
    pub fn new(statement: Columns<'f>) -> Self {
        Self {
            statement,
            sql_type: PhantomData,
        }
    }
}

impl<ST> QueryFragment<Pg> for Returning<'_, ST> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.statement.walk_ast(out)
    }
}

/// Cached by its text, like [`Columns`].
impl<ST> QueryId for Returning<'_, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST: diesel::sql_types::SqlType + diesel::sql_types::SingleValue> diesel::query_builder::Query
    for Returning<'_, ST>
{
    type SqlType = ST;
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
    use super::*;

    /// A two-column table to look at the statements with.
    struct Pair {
        a: i32,
        b: String,
    }

    commit_row! {
        /// `t`: a key and a value.
        Pair: "t", " X" => |r| {
            a: Integer = &r.a,
            b: Text = &r.b,
        }
    }

    fn pairs() -> Vec<Pair> {
        vec![
            Pair {
                a: 1,
                b: "one".into(),
            },
            Pair {
                a: 2,
                b: "two".into(),
            },
        ]
    }

    #[test]
    fn binds_one_array_per_column() {
        let rows = pairs();
        let columns = Columns::insert(&rows);
        let sql = diesel::debug_query::<Pg, _>(&columns).to_string();
        assert!(
            sql.starts_with(
                "INSERT INTO t (a, b) SELECT * FROM unnest($1, $2) X -- binds: [[1, 2], [\"one\", \"two\"]]"
            ),
            "{sql}"
        );
        assert!(
            diesel::query_builder::QueryFragment::<Pg>::is_safe_to_cache_prepared(&columns, &Pg)
                .expect("cacheable")
        );
    }

    #[test]
    fn numbers_rows_from_a_counter() {
        let rows = pairs();
        let sql = diesel::debug_query::<Pg, _>(&Columns::insert_numbered(&rows, "c")).to_string();
        assert!(
            sql.starts_with(
                "INSERT INTO t (a, b) SELECT n.last - count(*) OVER () + v.ord, v.b FROM c n, \
                 unnest($1, $2) WITH ORDINALITY AS v (a, b, ord) X --"
            ),
            "{sql}"
        );
    }

    #[test]
    fn updates_by_the_first_column() {
        let rows = pairs();
        let sql = diesel::debug_query::<Pg, _>(&Columns::fenced_update(&rows, &[])).to_string();
        assert!(
            sql.starts_with(
                "UPDATE t SET b = v.b FROM unnest($1, $2) AS v (a, b) WHERE t.a = v.a \
                 RETURNING t.a --"
            ),
            "{sql}"
        );
    }

    #[test]
    fn updates_flows_only_under_their_owner_and_epoch() {
        let sql =
            diesel::debug_query::<Pg, _>(&Columns::fenced_update::<FlowChange>(&[], FLOW_FENCE))
                .to_string();
        assert!(
            sql.starts_with(
                "UPDATE flows SET status = v.status, current_phase = v.current_phase, \
                 next_phase = v.next_phase, progress_percentage = v.progress_percentage, \
                 last_seq = v.last_seq, updated_at = v.updated_at \
                 FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9) AS v (id, status, current_phase, \
                 next_phase, progress_percentage, last_seq, updated_at, owner_node, owner_epoch) \
                 WHERE flows.id = v.id AND flows.owner_node = v.owner_node \
                 AND flows.owner_epoch = v.owner_epoch RETURNING flows.id --"
            ),
            "{sql}"
        );
    }

    /// A row's SQLite values, as a statement of their own.
    struct Values<'p>(&'p Pair, Option<&'static [&'static str]>);

    impl QueryFragment<Sqlite> for Values<'_> {
        fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
            match self.1 {
                None => self.0.bind_values(&mut out),
                Some(skip) => self.0.bind_assignments(skip, &mut out),
            }
        }
    }

    #[test]
    fn binds_a_rows_values_in_column_order() {
        let rows = pairs();
        let sql = diesel::debug_query::<Sqlite, _>(&Values(&rows[1], None)).to_string();
        assert_eq!(sql, "?, ? -- binds: [2, \"two\"]");
        let sql = diesel::debug_query::<Sqlite, _>(&Values(&rows[1], Some(&[]))).to_string();
        assert_eq!(sql, "a = ?, b = ? -- binds: [2, \"two\"]");
        let sql = diesel::debug_query::<Sqlite, _>(&Values(&rows[1], Some(&["a"]))).to_string();
        assert_eq!(sql, "b = ? -- binds: [\"two\"]");
    }

    #[test]
    fn every_table_is_described_once_with_distinct_columns() {
        for columns in [
            NewFlowType::COLUMNS,
            NewFlow::COLUMNS,
            FlowChange::COLUMNS,
            PhaseWrite::COLUMNS,
            EventWrite::COLUMNS,
            FailureWrite::COLUMNS,
            TaskWrite::COLUMNS,
        ] {
            let mut sorted = columns.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), columns.len(), "{columns:?}");
        }
    }
}
