//! The `nodes` table ([`NodeStore`]): written by the node actor, not the persistence actor
//! (the trait says why), each write one statement on a pooled connection.
//!
//! Times come from PostgreSQL's clock (`now()`), so the nodes of a cluster are judged by one
//! clock whatever their own say. On SQLite the database runs in this process, whose clock is
//! the database's.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel_async::RunQueryDsl;
use flowd_actors::cluster::{NodeList, NodeRecord, NodeRegistration, NodeStore};
use flowd_actors::ids::FlowId;
use flowd_actors::store::StoreError;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::schema::sql_types::{SqlTime, SqlUuid};
use super::schema::{DbTime, DbUuid};
use super::{DbStore, Pools, db_error, pool_error};

/// One row as read by [`LIST_PG`] / [`LIST_SQLITE`].
#[derive(diesel::QueryableByName)]
struct NodeRow {
    #[diesel(sql_type = Text)]
    node_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    advertise: Option<String>,
    #[diesel(sql_type = SqlTime)]
    started_at: DbTime,
    #[diesel(sql_type = SqlTime)]
    heartbeat_at: DbTime,
    #[diesel(sql_type = Nullable<SqlTime>)]
    stopped_at: Option<DbTime>,
    #[diesel(sql_type = BigInt)]
    heartbeats: i64,
    #[diesel(sql_type = BigInt)]
    missed_heartbeats: i64,
}

impl NodeRow {
    fn into_record(self) -> NodeRecord {
        NodeRecord {
            node_id: self.node_id,
            advertise: self.advertise,
            started_at: self.started_at.0,
            heartbeat_at: self.heartbeat_at.0,
            stopped_at: self.stopped_at.map(|t| t.0),
            heartbeats: u64::try_from(self.heartbeats).unwrap_or(0),
            missed_heartbeats: u64::try_from(self.missed_heartbeats).unwrap_or(0),
        }
    }
}

/// The database's clock.
#[derive(diesel::QueryableByName)]
struct Clock {
    #[diesel(sql_type = SqlTime)]
    now: DbTime,
}

const REGISTER_PG: &str = "INSERT INTO nodes (node_id, advertise, incarnation, started_at, \
     heartbeat_at, stopped_at, heartbeats, missed_heartbeats) \
     VALUES ($1, $2, $3, now(), now(), NULL, 0, 0) \
     ON CONFLICT (node_id) DO UPDATE SET advertise = EXCLUDED.advertise, \
     incarnation = EXCLUDED.incarnation, started_at = EXCLUDED.started_at, \
     heartbeat_at = EXCLUDED.heartbeat_at, stopped_at = NULL, heartbeats = 0, \
     missed_heartbeats = 0";
const REGISTER_SQLITE: &str = "INSERT INTO nodes (node_id, advertise, incarnation, started_at, \
     heartbeat_at, stopped_at, heartbeats, missed_heartbeats) \
     VALUES (?1, ?2, ?3, ?4, ?4, NULL, 0, 0) \
     ON CONFLICT (node_id) DO UPDATE SET advertise = excluded.advertise, \
     incarnation = excluded.incarnation, started_at = excluded.started_at, \
     heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, heartbeats = 0, \
     missed_heartbeats = 0";
const HEARTBEAT_PG: &str = "UPDATE nodes SET heartbeat_at = now(), heartbeats = $3, \
     missed_heartbeats = $4 WHERE node_id = $1 AND incarnation = $2";
const HEARTBEAT_SQLITE: &str = "UPDATE nodes SET heartbeat_at = ?5, heartbeats = ?3, \
     missed_heartbeats = ?4 WHERE node_id = ?1 AND incarnation = ?2";
const STOP_PG: &str = "UPDATE nodes SET stopped_at = now() WHERE node_id = $1 AND incarnation = $2";
const STOP_SQLITE: &str =
    "UPDATE nodes SET stopped_at = ?3 WHERE node_id = ?1 AND incarnation = ?2";
const FORGET_PG: &str =
    "DELETE FROM nodes WHERE heartbeat_at < now() - make_interval(secs => $1::float8 / 1000)";
const FORGET_SQLITE: &str = "DELETE FROM nodes WHERE heartbeat_at < ?1";
const LIST: &str = "SELECT node_id, advertise, started_at, heartbeat_at, stopped_at, heartbeats, \
     missed_heartbeats FROM nodes ORDER BY node_id";
const CLOCK_PG: &str = "SELECT now() AS now";

/// The claim round of the takeover (see [`NodeStore::claim_flows`]): `$1` this node, `$2` the
/// node timeout in milliseconds, `$3` node ids known dead, `$4` the largest share. Owners
/// are judged by the database's clock; the epoch bump is in the claiming statement itself.
const CLAIM_PG: &str = "WITH live AS ( \
       SELECT node_id FROM nodes \
       WHERE stopped_at IS NULL AND heartbeat_at >= now() - $2 * interval '1 millisecond' \
         AND node_id <> ALL($3) \
     ), share AS ( \
       SELECT LEAST($4, GREATEST(1, CEIL(count(*)::float8 \
                / GREATEST(1, (SELECT count(*) FROM live)))))::bigint AS n \
       FROM flows f \
       WHERE f.status IN ('initialized', 'running', 'paused') \
         AND f.owner_node <> $1 AND f.owner_node NOT IN (SELECT node_id FROM live) \
     ), orphans AS ( \
       SELECT f.id FROM flows f \
       WHERE f.status IN ('initialized', 'running', 'paused') \
         AND f.owner_node <> $1 AND f.owner_node NOT IN (SELECT node_id FROM live) \
       ORDER BY f.id \
       LIMIT (SELECT n FROM share) \
       FOR UPDATE OF f SKIP LOCKED \
     ) \
     UPDATE flows f SET owner_node = $1, owner_epoch = f.owner_epoch + 1 \
     FROM orphans WHERE f.id = orphans.id \
     RETURNING f.id AS id, f.owner_epoch AS owner_epoch";

/// One claimed flow, as [`CLAIM_PG`] returns it.
#[derive(diesel::QueryableByName)]
struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    id: DbUuid,
    #[diesel(sql_type = BigInt)]
    owner_epoch: i64,
}

impl DbStore {
    async fn claim(
        &self,
        node_id: &str,
        node_timeout: std::time::Duration,
        gone: &[String],
        max_share: u32,
    ) -> Result<Vec<(FlowId, u64)>, StoreError> {
        // SQLite is single-node: there is nobody to take over from.
        let Pools::Postgres { pool, .. } = &*self.pools else {
            return Ok(Vec::new());
        };
        let mut conn = pool.get().await.map_err(pool_error)?;
        let timeout_ms = i64::try_from(node_timeout.as_millis()).unwrap_or(i64::MAX);
        let claimed: Vec<Claimed> = diesel::sql_query(CLAIM_PG)
            .bind::<Text, _>(node_id)
            .bind::<BigInt, _>(timeout_ms)
            .bind::<Array<Text>, _>(gone)
            .bind::<BigInt, _>(i64::from(max_share))
            .load(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(claimed
            .into_iter()
            .map(|c| (FlowId(c.id.0), u64::try_from(c.owner_epoch).unwrap_or(0)))
            .collect())
    }

    async fn register_row(&self, node: &NodeRegistration) -> Result<(), StoreError> {
        let advertise = node.advertise.as_deref();
        let incarnation = DbUuid(node.incarnation);
        match &*self.pools {
            Pools::Sqlite { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(REGISTER_SQLITE)
                    .bind::<Text, _>(&node.node_id)
                    .bind::<Nullable<Text>, _>(advertise)
                    .bind::<SqlUuid, _>(incarnation)
                    .bind::<SqlTime, _>(DbTime(Utc::now()))
                    .execute(&mut *conn)
                    .await
            }
            Pools::Postgres { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(REGISTER_PG)
                    .bind::<Text, _>(&node.node_id)
                    .bind::<Nullable<Text>, _>(advertise)
                    .bind::<SqlUuid, _>(incarnation)
                    .execute(&mut *conn)
                    .await
            }
        }
        .map(drop)
        .map_err(db_error)
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        incarnation: Uuid,
        heartbeats: u64,
        missed: u64,
    ) -> Result<bool, StoreError> {
        let heartbeats = i64::try_from(heartbeats).unwrap_or(i64::MAX);
        let missed = i64::try_from(missed).unwrap_or(i64::MAX);
        let updated = match &*self.pools {
            Pools::Sqlite { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(HEARTBEAT_SQLITE)
                    .bind::<Text, _>(node_id)
                    .bind::<SqlUuid, _>(DbUuid(incarnation))
                    .bind::<BigInt, _>(heartbeats)
                    .bind::<BigInt, _>(missed)
                    .bind::<SqlTime, _>(DbTime(Utc::now()))
                    .execute(&mut *conn)
                    .await
            }
            Pools::Postgres { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(HEARTBEAT_PG)
                    .bind::<Text, _>(node_id)
                    .bind::<SqlUuid, _>(DbUuid(incarnation))
                    .bind::<BigInt, _>(heartbeats)
                    .bind::<BigInt, _>(missed)
                    .execute(&mut *conn)
                    .await
            }
        }
        .map_err(db_error)?;
        Ok(updated > 0)
    }

    async fn stop(&self, node_id: &str, incarnation: Uuid) -> Result<(), StoreError> {
        match &*self.pools {
            Pools::Sqlite { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(STOP_SQLITE)
                    .bind::<Text, _>(node_id)
                    .bind::<SqlUuid, _>(DbUuid(incarnation))
                    .bind::<SqlTime, _>(DbTime(Utc::now()))
                    .execute(&mut *conn)
                    .await
            }
            Pools::Postgres { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(STOP_PG)
                    .bind::<Text, _>(node_id)
                    .bind::<SqlUuid, _>(DbUuid(incarnation))
                    .execute(&mut *conn)
                    .await
            }
        }
        .map(drop)
        .map_err(db_error)
    }

    async fn forget(&self, silent_for: chrono::Duration) -> Result<u64, StoreError> {
        let deleted = match &*self.pools {
            Pools::Sqlite { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(FORGET_SQLITE)
                    .bind::<SqlTime, _>(DbTime(Utc::now() - silent_for))
                    .execute(&mut *conn)
                    .await
            }
            Pools::Postgres { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                diesel::sql_query(FORGET_PG)
                    .bind::<BigInt, _>(silent_for.num_milliseconds())
                    .execute(&mut *conn)
                    .await
            }
        }
        .map_err(db_error)?;
        Ok(deleted as u64)
    }

    async fn node_rows(&self) -> Result<NodeList, StoreError> {
        let (observed_at, rows): (DateTime<Utc>, Vec<NodeRow>) = match &*self.pools {
            Pools::Sqlite { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                let rows = diesel::sql_query(LIST)
                    .load(&mut *conn)
                    .await
                    .map_err(db_error)?;
                (Utc::now(), rows)
            }
            Pools::Postgres { pool, .. } => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                let rows = diesel::sql_query(LIST)
                    .load(&mut *conn)
                    .await
                    .map_err(db_error)?;
                // Read after the rows: no heartbeat read above is newer than this clock.
                let clock: Clock = diesel::sql_query(CLOCK_PG)
                    .get_result(&mut *conn)
                    .await
                    .map_err(db_error)?;
                (clock.now.0, rows)
            }
        };
        Ok(NodeList {
            observed_at,
            nodes: rows.into_iter().map(NodeRow::into_record).collect(),
        })
    }
}

impl NodeStore for DbStore {
    fn register_node<'a>(
        &'a self,
        node: &'a NodeRegistration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.register_row(node))
    }

    fn heartbeat_node<'a>(
        &'a self,
        node_id: &'a str,
        incarnation: Uuid,
        heartbeats: u64,
        missed: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.heartbeat(node_id, incarnation, heartbeats, missed))
    }

    fn stop_node<'a>(
        &'a self,
        node_id: &'a str,
        incarnation: Uuid,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.stop(node_id, incarnation))
    }

    fn forget_nodes(&self, silent_for: chrono::Duration) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.forget(silent_for))
    }

    fn list_nodes(&self) -> BoxFuture<'_, Result<NodeList, StoreError>> {
        Box::pin(super::read_retrying(move || self.node_rows()))
    }

    fn claim_flows<'a>(
        &'a self,
        node_id: &'a str,
        node_timeout: std::time::Duration,
        gone: &'a [String],
        max_share: u32,
    ) -> BoxFuture<'a, Result<Vec<(FlowId, u64)>, StoreError>> {
        Box::pin(self.claim(node_id, node_timeout, gone, max_share))
    }
}
