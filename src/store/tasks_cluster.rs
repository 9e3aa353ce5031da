//! Cluster mode on PostgreSQL: the task rows as every node shares them ([`SharedTasks`]), and
//! the connection that hears of results taken by other nodes (docs/cluster.md, 2.6).
//!
//! Each transition is one statement on a pooled connection, outside the persistence actor's
//! batches: its `WHERE` is the lease machine's precondition, so of two nodes racing on one task
//! at most one matches the row, and the loser reads the row back. Lease times are the
//! database's clock (`now()`), so nodes whose clocks disagree still agree on whether a lease
//! ran out. A result on a task whose flow another node owns notifies that node on
//! [`CHANNEL`] (payload `<task_id> <owner_node>`), delivered at commit; the owner's queue reads
//! the row and finishes the attempt with its own fenced write.

use std::time::Duration;

use diesel::sql_types::{Array, Double, Nullable, Text};
use diesel_async::RunQueryDsl;
use flowd_actors::ids::Tenant;
use flowd_actors::queue::{LeaseRequest, Report, SharedTasks, TasksNotified};
use flowd_actors::store::StoreError;
use flowd_actors::task::{TaskId, TaskOutcome, TaskRecord, TaskStatus};
use futures_util::future::BoxFuture;
use tracing::debug;
use uuid::Uuid;

use super::models::TaskRow;
use super::schema::sql_types::{SqlJson, SqlUuid};
use super::schema::{DbJsonRef, DbUuid};
use super::{DbStore, Pools, db_error, pool_error};

/// The channel a node that took a result on another node's task notifies on.
pub const CHANNEL: &str = "flowd_tasks";
/// Ids per read of [`SETTLED`]: a backstop read stays a bounded statement.
const SETTLED_CHUNK: usize = 5_000;

/// `lease_machine::grant` on the oldest queued task of a queue whose flow is live and owned by
/// another node; `SKIP LOCKED`: pollers on several nodes take different rows.
const LEASE_NEXT: &str = "UPDATE tasks t SET status = 'leased', lease_id = $4, worker_id = $5, \
     lease_expires_at = now() + $6 * interval '1 millisecond', updated_at = now() \
     WHERE t.id = (SELECT q.id FROM tasks q JOIN flows f ON f.id = q.flow_id \
       WHERE q.client_account_id = $1 AND q.engagement_id = $2 AND q.queue = $3 \
         AND q.status = 'queued' AND f.owner_node IS DISTINCT FROM $7 \
         AND f.status IN ('initialized', 'running', 'paused') \
       ORDER BY q.id LIMIT 1 FOR UPDATE OF q SKIP LOCKED) \
       AND t.status = 'queued' \
     RETURNING t.*";
/// `lease_machine::grant` on one task.
const LEASE: &str = "UPDATE tasks t SET status = 'leased', lease_id = $2, worker_id = $3, \
     lease_expires_at = now() + $4 * interval '1 millisecond', updated_at = now() \
     WHERE t.id = $1 AND t.status = 'queued' RETURNING t.*";
/// `lease_machine::admit`, as a condition: `tenant`'s task, leased under `lease_id`, not run out.
const LIVE_LEASE: &str = "t.id = $1 AND t.client_account_id = $2 AND t.engagement_id = $3 \
     AND t.status = 'leased' AND t.lease_id = $4 AND t.lease_expires_at > now()";
/// `lease_machine::requeue` of a lease nobody received.
const REQUEUE: &str = "UPDATE tasks SET status = 'queued', lease_id = NULL, worker_id = NULL, \
     lease_expires_at = NULL, updated_at = now() \
     WHERE id = $1 AND status = 'leased' AND lease_id = $2";
/// `lease_machine::withdraw`.
const WITHDRAW: &str = "UPDATE tasks t SET status = 'withdrawn', updated_at = now() \
     WHERE t.id = $1 AND t.status IN ('queued', 'leased') RETURNING t.*";
/// `lease_machine::unclaimed`'s withdrawal: only a task nobody leased.
const WITHDRAW_QUEUED: &str = "UPDATE tasks t SET status = 'withdrawn', updated_at = now() \
     WHERE t.id = $1 AND t.status = 'queued' RETURNING t.*";
/// `lease_machine::resubmit`.
const RESUBMIT: &str = "UPDATE tasks t SET status = 'queued', lease_id = NULL, worker_id = NULL, \
     lease_expires_at = NULL, updated_at = now() \
     WHERE t.id = $1 AND t.status = 'withdrawn' RETURNING t.*";
/// `lease_machine::expire`, for the tasks of this node's flows, by the database's clock.
const EXPIRE_DUE: &str = "UPDATE tasks t SET status = 'expired', updated_at = now() \
     FROM flows f \
     WHERE t.status = 'leased' AND t.lease_expires_at <= now() \
       AND f.id = t.flow_id AND f.owner_node = $1 \
     RETURNING t.*";
/// Tasks among `$1` finished by any node.
const SETTLED: &str = "SELECT t.* FROM tasks t \
     WHERE t.id = ANY($1) AND t.status IN ('completed', 'failed', 'expired')";

/// A worker polled a queue on this node now.
const POLLED: &str = "INSERT INTO queue_polls (client_account_id, engagement_id, queue, node_id, \
     polled_at) VALUES ($1, $2, $3, $4, now()) \
     ON CONFLICT (client_account_id, engagement_id, queue, node_id) \
     DO UPDATE SET polled_at = excluded.polled_at";
/// A worker polled a queue on any node within `$4` ms.
const POLLED_WITHIN: &str = "SELECT EXISTS (SELECT 1 FROM queue_polls \
     WHERE client_account_id = $1 AND engagement_id = $2 AND queue = $3 \
       AND polled_at >= now() - $4 * interval '1 millisecond') AS seen";

/// The answer of [`POLLED_WITHIN`].
#[derive(diesel::QueryableByName)]
struct Seen {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    seen: bool,
}

fn heartbeat_sql() -> String {
    format!(
        "UPDATE tasks t SET lease_expires_at = now() + $5 * interval '1 millisecond', \
         updated_at = now() WHERE {LIVE_LEASE} RETURNING t.*"
    )
}

/// The result, and the notification of the flow's owner when it is another node (sent at
/// commit). The notifying CTE is read by the final `SELECT`, or PostgreSQL would skip it.
fn finish_sql() -> String {
    format!(
        "WITH done AS (UPDATE tasks t SET status = $5, result = $6, updated_at = now() \
           WHERE {LIVE_LEASE} RETURNING t.*), \
         told AS (SELECT pg_notify('{CHANNEL}', done.id::text || ' ' || f.owner_node) \
           FROM done JOIN flows f ON f.id = done.flow_id \
           WHERE f.owner_node IS NOT NULL AND f.owner_node <> $7) \
         SELECT done.* FROM done, (SELECT count(*) FROM told) AS n"
    )
}

fn millis(length: Duration) -> f64 {
    length.as_secs_f64() * 1000.0
}

fn records(rows: Vec<TaskRow>) -> Result<Vec<TaskRecord>, StoreError> {
    rows.into_iter().map(TaskRow::into_record).collect()
}

fn first(rows: Vec<TaskRow>) -> Result<Option<TaskRecord>, StoreError> {
    rows.into_iter()
        .next()
        .map(TaskRow::into_record)
        .transpose()
}

impl DbStore {
    /// A pooled PostgreSQL connection; the shared task rows exist only there.
    async fn task_conn(
        &self,
    ) -> Result<
        diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>,
        StoreError,
    > {
        match &*self.pools {
            Pools::Postgres { pool, .. } => pool.get().await.map_err(pool_error),
            Pools::Sqlite { .. } => Err(StoreError::Unavailable(
                "shared task rows need PostgreSQL".into(),
            )),
        }
    }

    /// Runs one of the one-id statements above.
    async fn on_task(&self, sql: &str, task_id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let mut conn = self.task_conn().await?;
        let rows: Vec<TaskRow> = diesel::sql_query(sql)
            .bind::<SqlUuid, _>(DbUuid(task_id.0))
            .load(&mut conn)
            .await
            .map_err(db_error)?;
        first(rows)
    }
}

impl SharedTasks for DbStore {
    fn lease_next<'a>(
        &'a self,
        tenant: &'a Tenant,
        queue: &'a str,
        lease: LeaseRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            let rows: Vec<TaskRow> = diesel::sql_query(LEASE_NEXT)
                .bind::<Text, _>(&tenant.client_account_id)
                .bind::<Text, _>(&tenant.engagement_id)
                .bind::<Text, _>(queue)
                .bind::<SqlUuid, _>(DbUuid(lease.lease_id))
                .bind::<Nullable<Text>, _>(lease.worker_id)
                .bind::<Double, _>(millis(lease.length))
                .bind::<Text, _>(self.node_id())
                .load(&mut conn)
                .await
                .map_err(db_error)?;
            first(rows)
        })
    }

    fn lease<'a>(
        &'a self,
        task_id: TaskId,
        lease: LeaseRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            let rows: Vec<TaskRow> = diesel::sql_query(LEASE)
                .bind::<SqlUuid, _>(DbUuid(task_id.0))
                .bind::<SqlUuid, _>(DbUuid(lease.lease_id))
                .bind::<Nullable<Text>, _>(lease.worker_id)
                .bind::<Double, _>(millis(lease.length))
                .load(&mut conn)
                .await
                .map_err(db_error)?;
            first(rows)
        })
    }

    fn report<'a>(
        &'a self,
        tenant: &'a Tenant,
        task_id: TaskId,
        lease_id: Uuid,
        report: &'a Report,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            let (status, outcome) = match report {
                Report::Heartbeat { extend } => {
                    let rows: Vec<TaskRow> = diesel::sql_query(heartbeat_sql())
                        .bind::<SqlUuid, _>(DbUuid(task_id.0))
                        .bind::<Text, _>(&tenant.client_account_id)
                        .bind::<Text, _>(&tenant.engagement_id)
                        .bind::<SqlUuid, _>(DbUuid(lease_id))
                        .bind::<Double, _>(millis(*extend))
                        .load(&mut conn)
                        .await
                        .map_err(db_error)?;
                    return first(rows);
                }
                Report::Complete { output, next_phase } => (
                    TaskStatus::Completed,
                    TaskOutcome::Succeeded {
                        output: output.clone(),
                        next_phase: next_phase.clone(),
                    },
                ),
                Report::Fail { error, retryable } => (
                    TaskStatus::Failed,
                    TaskOutcome::Failed {
                        message: error.clone(),
                        retryable: *retryable,
                    },
                ),
            };
            let rows: Vec<TaskRow> = diesel::sql_query(finish_sql())
                .bind::<SqlUuid, _>(DbUuid(task_id.0))
                .bind::<Text, _>(&tenant.client_account_id)
                .bind::<Text, _>(&tenant.engagement_id)
                .bind::<SqlUuid, _>(DbUuid(lease_id))
                .bind::<Text, _>(status.as_str())
                .bind::<SqlJson, _>(DbJsonRef(&outcome.to_stored()))
                .bind::<Text, _>(self.node_id())
                .load(&mut conn)
                .await
                .map_err(db_error)?;
            first(rows)
        })
    }

    fn requeue(&self, task_id: TaskId, lease_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            let changed = diesel::sql_query(REQUEUE)
                .bind::<SqlUuid, _>(DbUuid(task_id.0))
                .bind::<SqlUuid, _>(DbUuid(lease_id))
                .execute(&mut conn)
                .await
                .map_err(db_error)?;
            Ok(changed > 0)
        })
    }

    fn withdraw(
        &self,
        task_id: TaskId,
        only_queued: bool,
    ) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>> {
        let sql = if only_queued {
            WITHDRAW_QUEUED
        } else {
            WITHDRAW
        };
        Box::pin(self.on_task(sql, task_id))
    }

    fn resubmit(&self, task_id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>> {
        Box::pin(self.on_task(RESUBMIT, task_id))
    }

    fn expire_due(&self) -> BoxFuture<'_, Result<Vec<TaskRecord>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            let rows: Vec<TaskRow> = diesel::sql_query(EXPIRE_DUE)
                .bind::<Text, _>(self.node_id())
                .load(&mut conn)
                .await
                .map_err(db_error)?;
            records(rows)
        })
    }

    fn polled<'a>(
        &'a self,
        tenant: &'a Tenant,
        queue: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            diesel::sql_query(POLLED)
                .bind::<Text, _>(&tenant.client_account_id)
                .bind::<Text, _>(&tenant.engagement_id)
                .bind::<Text, _>(queue)
                .bind::<Text, _>(self.node_id())
                .execute(&mut conn)
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn polled_within<'a>(
        &'a self,
        tenant: &'a Tenant,
        queue: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            let seen: Seen = diesel::sql_query(POLLED_WITHIN)
                .bind::<Text, _>(&tenant.client_account_id)
                .bind::<Text, _>(&tenant.engagement_id)
                .bind::<Text, _>(queue)
                .bind::<Double, _>(millis(window))
                .get_result(&mut conn)
                .await
                .map_err(db_error)?;
            Ok(seen.seen)
        })
    }

    fn settled<'a>(
        &'a self,
        ids: &'a [TaskId],
    ) -> BoxFuture<'a, Result<Vec<TaskRecord>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.task_conn().await?;
            let mut settled = Vec::new();
            for chunk in ids.chunks(SETTLED_CHUNK) {
                let chunk: Vec<DbUuid> = chunk.iter().map(|id| DbUuid(id.0)).collect();
                let rows: Vec<TaskRow> = diesel::sql_query(SETTLED)
                    .bind::<Array<SqlUuid>, _>(chunk)
                    .load(&mut conn)
                    .await
                    .map_err(db_error)?;
                settled.extend(records(rows)?);
            }
            Ok(settled)
        })
    }
}

/// The task id of a [`CHANNEL`] payload (`<task_id> <owner_node>`).
fn notified_task(payload: &str) -> Option<TaskId> {
    payload.split_once(' ').and_then(|(id, _)| id.parse().ok())
}

/// `flowd_tasks` on the shared listening connection ([`super::listen`]): results other nodes
/// took on this node's tasks, handed to the queue, which finishes each waiting attempt once.
/// After each (re)connect the queue reads every task it waits for once (notifications sent
/// meanwhile are lost).
pub struct TasksChannel(pub actix::Recipient<TasksNotified>);

impl super::listen::Subscriber for TasksChannel {
    fn channel(&self) -> &'static str {
        CHANNEL
    }

    fn notified(&self, payload: &str) {
        match notified_task(payload) {
            Some(task_id) => self.0.do_send(TasksNotified(Some(task_id))),
            None => {
                debug!(payload, "a task notification without a task id");
                self.0.do_send(TasksNotified(None));
            }
        }
    }

    fn connected(&self) {
        self.0.do_send(TasksNotified(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_its_task() {
        let id = TaskId::new();
        assert_eq!(notified_task(&format!("{id} node-a")), Some(id));
        assert_eq!(notified_task(&format!("{id} host with spaces-1")), Some(id));
        assert_eq!(notified_task("garbage"), None);
        assert_eq!(notified_task("not-a-uuid node"), None);
    }
}
