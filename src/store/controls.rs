//! The `flow_controls` table ([`ControlStore`]): controls of flows another node owns
//! (docs/cluster.md, 2.6). PostgreSQL only: a SQLite store is single-node and never routes a
//! control away. Each method is one statement on a pooled connection; the notifications are
//! sent by the same statement, so they leave at its commit.

use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use flowd_actors::controls::{
    CHANNEL, ControlReply, ControlRequest, ControlStore, TakenControl, Withdrawal, command_name,
    parse_command,
};
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::store::StoreError;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::{DbStore, Pools, db_error, pool_error};

/// Stores the request and wakes the owner, at commit.
const REQUEST: &str = "WITH stored AS ( \
       INSERT INTO flow_controls (id, flow_id, client_account_id, engagement_id, command, \
         owner_node, requested_by) \
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING owner_node \
     ) SELECT pg_notify($8, 'apply:' || owner_node) AS notified FROM stored";
const REPLY_OF: &str = "SELECT reply, taken_by, applied_at IS NOT NULL AS answered \
     FROM flow_controls WHERE id = $1";
/// Withdraws a control not answered yet; `taken_by` says whether someone may be applying it.
const WITHDRAW: &str = "UPDATE flow_controls SET applied_at = now() \
     WHERE id = $1 AND applied_at IS NULL RETURNING reply, taken_by, true AS answered";
const FORGET: &str = "DELETE FROM flow_controls WHERE id = $1";
const FORGET_OLD: &str =
    "DELETE FROM flow_controls WHERE requested_at < now() - $1 * interval '1 millisecond'";
/// Controls of flows `$1` owns now, not answered, and not taken by the flow's owner: nobody
/// took them, or a node that lost the flow did (and died before answering). Rows another node
/// is taking at this moment are skipped, not waited for.
const TAKE: &str = "WITH mine AS ( \
       SELECT c.id FROM flow_controls c JOIN flows f ON f.id = c.flow_id \
       WHERE c.applied_at IS NULL AND f.owner_node = $1 \
         AND (c.taken_by IS NULL OR c.taken_by <> $1) \
       ORDER BY c.id LIMIT $2 \
       FOR UPDATE OF c SKIP LOCKED \
     ) \
     UPDATE flow_controls c SET taken_by = $1, taken_at = now() FROM mine \
     WHERE c.id = mine.id \
     RETURNING c.id, c.flow_id, c.client_account_id, c.engagement_id, c.command";
/// The reply, if the row is still this node's and not withdrawn; wakes the requester.
const REPLY: &str = "WITH answered AS ( \
       UPDATE flow_controls SET applied_at = now(), reply = $3 \
       WHERE id = $1 AND taken_by = $2 AND applied_at IS NULL RETURNING id \
     ) SELECT pg_notify($4, 'reply:' || id::text) AS notified FROM answered";
/// A failed flow changes owner, under a new epoch, only if nothing changed since it was read.
const ADOPT_FAILED: &str = "UPDATE flows SET owner_node = $4, owner_epoch = owner_epoch + 1 \
     WHERE id = $1 AND status = 'failed' AND owner_node IS NOT DISTINCT FROM $2 \
       AND owner_epoch = $3 \
     RETURNING owner_epoch";

#[derive(diesel::QueryableByName)]
struct Notified {
    #[diesel(sql_type = Nullable<Text>)]
    #[allow(dead_code)]
    notified: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct ReplyRow {
    #[diesel(sql_type = Nullable<Jsonb>)]
    reply: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Text>)]
    taken_by: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    answered: bool,
}

#[derive(diesel::QueryableByName)]
struct TakenRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    flow_id: Uuid,
    #[diesel(sql_type = Text)]
    client_account_id: String,
    #[diesel(sql_type = Text)]
    engagement_id: String,
    #[diesel(sql_type = Text)]
    command: String,
}

#[derive(diesel::QueryableByName)]
struct Epoch {
    #[diesel(sql_type = BigInt)]
    owner_epoch: i64,
}

fn single_node() -> StoreError {
    StoreError::Unavailable("controls are routed between nodes on PostgreSQL only".into())
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("flow_controls: {what}"))
}

/// The control's row as `REPLY_OF` reads it, while it is there.
async fn reply_row(
    conn: &mut diesel_async::AsyncPgConnection,
    id: Uuid,
) -> Result<Option<ReplyRow>, StoreError> {
    let rows: Vec<ReplyRow> = diesel::sql_query(REPLY_OF)
        .bind::<SqlUuid, _>(id)
        .load(conn)
        .await
        .map_err(db_error)?;
    Ok(rows.into_iter().next())
}

fn reply_of(value: serde_json::Value) -> Result<ControlReply, StoreError> {
    serde_json::from_value(value).map_err(corrupt)
}

impl DbStore {
    fn pg(&self) -> Result<&super::postgres::PgPool, StoreError> {
        match &*self.pools {
            Pools::Postgres { pool, .. } => Ok(pool),
            Pools::Sqlite { .. } => Err(single_node()),
        }
    }

    async fn request(&self, request: &ControlRequest) -> Result<(), StoreError> {
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        let _: Vec<Notified> = diesel::sql_query(REQUEST)
            .bind::<SqlUuid, _>(request.id)
            .bind::<SqlUuid, _>(request.flow_id.0)
            .bind::<Text, _>(&request.tenant.client_account_id)
            .bind::<Text, _>(&request.tenant.engagement_id)
            .bind::<Text, _>(command_name(request.command))
            .bind::<Text, _>(&request.owner)
            .bind::<Text, _>(&request.requested_by)
            .bind::<Text, _>(CHANNEL)
            .load(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn reply(&self, id: Uuid) -> Result<Option<ControlReply>, StoreError> {
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        match reply_row(&mut conn, id).await? {
            Some(ReplyRow {
                reply: Some(reply), ..
            }) => reply_of(reply).map(Some),
            _ => Ok(None),
        }
    }

    async fn withdraw(&self, id: Uuid) -> Result<Withdrawal, StoreError> {
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        let withdrawn: Vec<ReplyRow> = diesel::sql_query(WITHDRAW)
            .bind::<SqlUuid, _>(id)
            .load(&mut *conn)
            .await
            .map_err(db_error)?;
        if let Some(row) = withdrawn.into_iter().next() {
            return Ok(match row.taken_by {
                None => Withdrawal::NotApplied,
                Some(node) => Withdrawal::Unknown { node },
            });
        }
        // Answered first: the reply is there.
        match reply_row(&mut conn, id).await? {
            Some(ReplyRow {
                reply: Some(reply),
                answered: true,
                ..
            }) => Ok(Withdrawal::Replied(reply_of(reply)?)),
            _ => Err(corrupt(format!("control {id} vanished before its answer"))),
        }
    }

    async fn forget_one(&self, id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        diesel::sql_query(FORGET)
            .bind::<SqlUuid, _>(id)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn forget_old(&self, older_than: std::time::Duration) -> Result<u64, StoreError> {
        let Ok(pool) = self.pg() else {
            return Ok(0);
        };
        let mut conn = pool.get().await.map_err(pool_error)?;
        let ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let deleted = diesel::sql_query(FORGET_OLD)
            .bind::<BigInt, _>(ms)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(deleted as u64)
    }

    async fn take(&self, node: &str, limit: u32) -> Result<Vec<TakenControl>, StoreError> {
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        let rows: Vec<TakenRow> = diesel::sql_query(TAKE)
            .bind::<Text, _>(node)
            .bind::<BigInt, _>(i64::from(limit))
            .load(&mut *conn)
            .await
            .map_err(db_error)?;
        rows.into_iter()
            .map(|row| {
                let command = parse_command(&row.command)
                    .ok_or_else(|| corrupt(format!("unknown command `{}`", row.command)))?;
                Ok(TakenControl {
                    id: row.id,
                    flow_id: FlowId(row.flow_id),
                    tenant: Tenant {
                        client_account_id: row.client_account_id,
                        engagement_id: row.engagement_id,
                    },
                    command,
                })
            })
            .collect()
    }

    async fn answer(&self, id: Uuid, node: &str, reply: &ControlReply) -> Result<bool, StoreError> {
        let reply = serde_json::to_value(reply).map_err(corrupt)?;
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        let rows: Vec<Notified> = diesel::sql_query(REPLY)
            .bind::<SqlUuid, _>(id)
            .bind::<Text, _>(node)
            .bind::<Jsonb, _>(&reply)
            .bind::<Text, _>(CHANNEL)
            .load(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(!rows.is_empty())
    }

    async fn adopt(
        &self,
        flow_id: FlowId,
        owner: Option<&str>,
        epoch: u64,
        node: &str,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        let rows: Vec<Epoch> = diesel::sql_query(ADOPT_FAILED)
            .bind::<SqlUuid, _>(flow_id.0)
            .bind::<Nullable<Text>, _>(owner)
            .bind::<BigInt, _>(i64::try_from(epoch).unwrap_or(i64::MAX))
            .bind::<Text, _>(node)
            .load(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .next()
            .map(|row| u64::try_from(row.owner_epoch).unwrap_or(0)))
    }
}

impl ControlStore for DbStore {
    fn request_control<'a>(
        &'a self,
        request: &'a ControlRequest,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.request(request))
    }

    fn control_reply(&self, id: Uuid) -> BoxFuture<'_, Result<Option<ControlReply>, StoreError>> {
        Box::pin(self.reply(id))
    }

    fn withdraw_control(&self, id: Uuid) -> BoxFuture<'_, Result<Withdrawal, StoreError>> {
        Box::pin(self.withdraw(id))
    }

    fn forget_control(&self, id: Uuid) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.forget_one(id))
    }

    fn take_controls<'a>(
        &'a self,
        node: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<TakenControl>, StoreError>> {
        Box::pin(self.take(node, limit))
    }

    fn reply_control<'a>(
        &'a self,
        id: Uuid,
        node: &'a str,
        reply: &'a ControlReply,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.answer(id, node, reply))
    }

    fn forget_old_controls(
        &self,
        older_than: std::time::Duration,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.forget_old(older_than))
    }

    fn adopt_failed<'a>(
        &'a self,
        flow_id: FlowId,
        owner: Option<&'a str>,
        epoch: u64,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(self.adopt(flow_id, owner, epoch, node))
    }
}
