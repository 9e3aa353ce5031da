//! The text of PostgreSQL's multi-row commit statements. A batch of a thousand transitions is a
//! handful of statements instead of thousands of network round trips.

use std::fmt::Write as _;

/// Rows per statement, at most; bounds statement size and preparation cost.
pub const MAX_ROWS: usize = 1000;

/// Bound parameters per statement, at most: under PostgreSQL's 65535.
const MAX_BINDS: usize = 30_000;

/// How many rows of `columns` parameters one statement may carry.
pub fn rows_per_statement(columns: usize) -> usize {
    (MAX_BINDS / columns.max(1)).clamp(1, MAX_ROWS)
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

/// `($1, $2, …), ($n, …)` for `rows` rows of `columns` parameters.
fn push_values(sql: &mut String, rows: usize, columns: usize) {
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            n += 1;
            // Writing to a String cannot fail.
            let _ = write!(sql, "${n}");
        }
        sql.push(')');
    }
}

/// `INSERT INTO table (columns) VALUES (…), (…)` followed by `suffix`.
pub fn insert(table: &str, columns: &[&str], rows: usize, suffix: &str) -> String {
    let mut sql = String::with_capacity(64 + rows * columns.len() * 8);
    let _ = write!(sql, "INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    push_values(&mut sql, rows, columns.len());
    sql.push_str(suffix);
    sql
}

/// One `UPDATE … FROM (VALUES …)` for `rows` flow changes, binding [`FLOW_CHANGE_COLUMNS`].
/// PostgreSQL types the `VALUES` columns from the bound parameters' types.
pub fn update_flows(rows: usize) -> String {
    let mut sql = String::with_capacity(300 + rows * FLOW_CHANGE_COLUMNS.len() * 8);
    let _ = write!(
        sql,
        "WITH v ({}) AS (VALUES ",
        FLOW_CHANGE_COLUMNS.join(", ")
    );
    push_values(&mut sql, rows, FLOW_CHANGE_COLUMNS.len());
    sql.push_str(
        ") UPDATE flows SET status = v.status, current_phase = v.current_phase, \
         next_phase = v.next_phase, progress_percentage = v.progress_percentage, \
         last_seq = v.last_seq, updated_at = v.updated_at FROM v WHERE flows.id = v.id",
    );
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_across_rows() {
        assert_eq!(
            insert("t", &["a", "b"], 2, " X"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) X"
        );
        assert!(update_flows(2).contains("VALUES ($1, $2, $3, $4, $5, $6, $7), ($8, "));
    }

    #[test]
    fn keeps_statements_under_the_bind_limit() {
        for columns in [1, 4, 7, 9, 14, 16, 17] {
            assert!(rows_per_statement(columns) * columns <= 65_535);
        }
    }
}
