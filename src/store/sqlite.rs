//! SQLite: the embedded default. A file database in WAL mode, one writer (the persistence actor)
//! and any number of readers, each pooled connection set up with the same pragmas.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl, SqliteConnection};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use flowd_actors::store::StoreError;
use futures_util::FutureExt;

use super::schema::{DbJsonRef, DbTime, DbUuid, failures, flow_types, flows};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
use diesel::sqlite::Sqlite;

use super::models::{EventWrite, FlowChange, PhaseWrite, TaskWrite};
use super::schema::sql_types::{SqlJson, SqlTime, SqlUuid};
use super::{Plan, TxError, columns};

/// The async connection type of the SQLite pool: a blocking connection driven on tokio's
/// blocking threads.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// The SQLite pool.
pub type SqlitePool = Pool<SqliteConn>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Set on every connection: WAL lets readers run beside the writer; `busy_timeout` makes a
/// second writer wait instead of failing; `synchronous=NORMAL` suits connections that never
/// commit (readers, the checkpointer); the writer's own setting comes from [`SqliteSync`]. No
/// table has a foreign key any more (the write plan checks a batch's flow rows; see the
/// `plan_checks_flow_rows` migration), so `foreign_keys` stays off, SQLite's default. Checkpoints run on a thread of their own ([`super::sqlite_checkpoint`]);
/// the large auto-checkpoint (about 40 MB of WAL) is only a safety net should that thread fall
/// behind.
pub(super) const PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                       PRAGMA synchronous = NORMAL; \
                       PRAGMA wal_autocheckpoint = 10000;";

/// Page cache of each reader: small, since the OS caches the file too and the pool has many
/// connections; a cache per connection is kept for its life, so 32 MB each would hold memory
/// long after a backlog drained.
const READER_CACHE: &str = "PRAGMA cache_size = -4096;";

/// How commits to SQLite's WAL are synced: what a commit survives once it is acked.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Every commit is fsynced before it is acked; it survives a process crash, an OS crash
    /// and a power loss. The default. The commit connection runs `synchronous=NORMAL` and the
    /// store fsyncs the WAL file itself ([`WalSync`]) before the writer acks, so the next batch
    /// commits while the last one's fsync is in flight (`synchronous=FULL` would fsync inside
    /// `COMMIT` and hold the writer for it).
    #[default]
    Full,
    /// `synchronous=NORMAL` alone: commits are fsynced at checkpoints only; a commit survives
    /// a process crash, but the last ones before an OS crash or power loss can be lost. Faster.
    Normal,
}

/// The commit connection's own pragmas: `synchronous=NORMAL` with either [`SqliteSync`] (for
/// `Full`, the store adds its fsync of the WAL before acks), and a large page cache: the
/// indexes it updates stay hot.
const WRITER_PRAGMAS: &str = "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768;";

/// Makes commits of a `synchronous=NORMAL` connection durable: in WAL mode `COMMIT` has
/// written the transaction's frames into the WAL file, so an fsync of that file (through any
/// descriptor) makes them survive an OS crash or power loss; checkpoints sync the WAL and the
/// database file themselves in this mode. The first sync also syncs the folder, so the WAL
/// file's own entry survives.
pub struct WalSync {
    wal: PathBuf,
    folder: PathBuf,
    folder_synced: AtomicBool,
}

impl WalSync {
    /// For the database file at `database`.
    pub fn new(database: &Path) -> Self {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let folder = match database.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        Self {
            wal: PathBuf::from(wal),
            folder,
            folder_synced: AtomicBool::new(false),
        }
    }

    /// Fsyncs the WAL file: every commit that returned before the call becomes durable.
    /// Blocking; run it off the async threads.
    pub fn sync(&self) -> std::io::Result<()> {
        std::fs::File::open(&self.wal)?.sync_data()?;
        if !self.folder_synced.load(Ordering::Relaxed) {
            std::fs::File::open(&self.folder)?.sync_all()?;
            self.folder_synced.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The file path of a `sqlite://path` (or `sqlite:path`) URL.
pub fn path_of(url: &str) -> PathBuf {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    PathBuf::from(path)
}

/// Creates the database file's folder, migrates the database and builds the readers' pool.
pub async fn connect(url: &str, pool_size: usize) -> Result<SqlitePool, StoreError> {
    let path = path_of(url);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    let path_text = utf8_path(url)?;

    // Migrations are synchronous; keep them off the (possibly current-thread) runtime.
    let migrate_path = path_text.clone();
    tokio::task::spawn_blocking(move || migrate(&migrate_path))
        .await
        .map_err(|e| StoreError::Unavailable(format!("migration task failed: {e}")))??;
    pool(path_text, pool_size, READER_CACHE)
}

/// The persistence actor's connection, a pool of one beside the readers' pool of
/// [`connect`]: readers holding every pooled connection (listings, stream catch-ups) never hold
/// up a commit, and the commit statements stay prepared on this one connection. Call after
/// [`connect`], which migrates.
pub fn writer(url: &str) -> Result<SqlitePool, StoreError> {
    pool(utf8_path(url)?, 1, WRITER_PRAGMAS)
}

/// The path of a `sqlite://` URL as text, which is what the connection manager takes.
fn utf8_path(url: &str) -> Result<String, StoreError> {
    let path = path_of(url);
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Unavailable(format!("{} is not a UTF-8 path", path.display())))
}

/// A pool of up to `size` connections to the (migrated) database at `path`, each set up with
/// [`PRAGMAS`], then `extra_pragmas`.
fn pool(path: String, size: usize, extra_pragmas: &'static str) -> Result<SqlitePool, StoreError> {
    let mut config = ManagerConfig::<SqliteConn>::default();
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        async move {
            let mut conn = SqliteConn::establish(&url).await?;
            conn.batch_execute(PRAGMAS)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            conn.batch_execute(extra_pragmas)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    // A local file does not drop connections: skip the test query on every checkout.
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path, config);
    Pool::builder(manager)
        .max_size(size.max(1))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot build the SQLite pool: {e}")))
}

fn migrate(path: &str) -> Result<(), StoreError> {
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {path}: {e}")))?;
    conn.batch_execute(PRAGMAS)
        .map_err(|e| StoreError::Unavailable(format!("cannot set up {path}: {e}")))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Unavailable(format!("migrating {path} failed: {e}")))?;
    Ok(())
}

/// Whether `url` names a SQLite database.
pub fn is_sqlite_url(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Writes a planned batch on a blocking SQLite connection, inside the caller's transaction.
///
/// SQLite runs in this process, so a statement costs no round trip, only its preparation and
/// setup: every statement is cached, all run inside one trip to a blocking thread, and events
/// and phase rows, the most numerous, go [`ROWS_PER_STATEMENT`] to a statement. (Uncached
/// multi-row statements of every length, as PostgreSQL used to get, were several times slower
/// than cached single-row ones at 1000 transitions in the first session.)
pub(super) fn write_plan(conn: &mut SqliteConnection, plan: &Plan<'_>) -> Result<(), TxError> {
    use diesel::prelude::*;

    for r in &plan.flow_types {
        diesel::insert_into(flow_types::table)
            .values((
                flow_types::name.eq(r.name),
                flow_types::version.eq(r.version),
                flow_types::definition.eq(DbJsonRef(&r.definition)),
                flow_types::created_at.eq(plan.now),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
    }
    for r in &plan.new_flows {
        let f = r.flow;
        diesel::insert_into(flows::table)
            .values((
                flows::id.eq(DbUuid(f.id.0)),
                flows::flow_type.eq(f.flow_type.as_str()),
                flows::flow_type_version.eq(r.flow_type_version),
                flows::status.eq(f.status.as_str()),
                flows::current_phase.eq(f.current_phase.as_deref()),
                flows::next_phase.eq(f.next_phase.as_deref()),
                flows::progress_percentage.eq(f.progress_percentage),
                flows::input.eq(DbJsonRef(&f.input)),
                flows::parent_flow_id.eq(f.parent_flow_id.map(|p| DbUuid(p.0))),
                flows::master_flow_id.eq(DbUuid(f.master_flow_id.0)),
                flows::client_account_id.eq(f.client_account_id.as_str()),
                flows::engagement_id.eq(f.engagement_id.as_str()),
                flows::created_by.eq(f.created_by.as_deref()),
                flows::idempotency_key.eq(f.idempotency_key.as_deref()),
                flows::last_seq.eq(r.last_seq),
                flows::created_at.eq(DbTime(f.created_at)),
                flows::updated_at.eq(DbTime(f.updated_at)),
            ))
            .execute(conn)?;
    }
    let mut missing = 0;
    for change in &plan.flow_changes {
        // Most transitions keep the status; only those that change it rewrite its two indexes.
        let updated = match UpdateFlow::<false>(change).execute(conn)? {
            0 => UpdateFlow::<true>(change).execute(conn)?,
            kept => kept,
        };
        missing += 1 - updated.min(1);
    }
    if missing > 0 {
        return Err(TxError::MissingFlows(missing));
    }
    for chunk in in_chunks(&plan.phases) {
        UpsertPhases(chunk).execute(conn)?;
    }
    for chunk in in_chunks(&plan.events) {
        InsertEvents(chunk).execute(conn)?;
    }
    for r in &plan.failures {
        let f = r.failure;
        diesel::insert_into(failures::table)
            .values((
                failures::flow_id.eq(DbUuid(f.flow_id.0)),
                failures::master_flow_id.eq(DbUuid(f.master_flow_id.0)),
                failures::phase.eq(f.phase.as_deref()),
                failures::attempt.eq(r.attempt),
                failures::error_kind.eq(f.error_kind.as_str()),
                failures::message.eq(f.message.as_str()),
                failures::diagnostic.eq(DbJsonRef(&f.diagnostic)),
                failures::at.eq(DbTime(f.at)),
            ))
            .execute(conn)?;
    }
    for task in &plan.tasks {
        UpsertTask(task).execute(conn)?;
    }
    Ok(())
}

/// Rows per multi-row statement. A batch's events and phase rows go in statements of this many
/// rows, the rest one by one: SQLite opens the table's and its indexes' cursors once per
/// statement rather than once per row, and with two row counts each statement has two texts,
/// both kept prepared.
///
/// These statements say `OR FAIL`: a multi-row statement that may abort halfway (the default
/// `ABORT` on a constraint) makes SQLite copy every page it touches into a statement journal, so
/// that the abort can undo just that statement. Any failure rolls the whole batch back anyway,
/// so `FAIL` (stop where it failed) loses nothing, and the statements skip that copy.
const ROWS_PER_STATEMENT: usize = 32;

/// `rows` in chunks of [`ROWS_PER_STATEMENT`], then one by one.
fn in_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let chunks = rows.chunks_exact(ROWS_PER_STATEMENT);
    let rest = chunks.remainder();
    chunks.chain(rest.chunks(1))
}

/// `INSERT INTO events … VALUES (…), (…)` for a chunk of events ([`in_chunks`]). Cached by its
/// text.
struct InsertEvents<'p, 'a>(&'p [EventWrite<'a>]);

impl QueryId for InsertEvents<'_, '_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Sqlite> for InsertEvents<'_, '_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("INSERT OR FAIL INTO events (");
        out.push_sql(EVENT_COLUMN_LIST);
        out.push_sql(") VALUES ");
        for (i, row) in self.0.iter().enumerate() {
            let e = row.event;
            out.push_sql(if i == 0 { "(" } else { "), (" });
            out.push_bind_param::<BigInt, _>(&e.id)?;
            out.push_sql(", ");
            out.push_bind_param::<SqlUuid, _>(&row.flow_id)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&row.seq)?;
            out.push_sql(", ");
            out.push_bind_param::<SqlUuid, _>(&row.master_flow_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&e.client_account_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&e.engagement_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&e.flow_type)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, str>(e.kind.as_str())?;
            out.push_sql(", ");
            out.push_bind_param::<Text, str>(e.status.as_str())?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&e.current_phase)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&e.next_phase)?;
            out.push_sql(", ");
            out.push_bind_param::<Double, _>(&e.progress_percentage)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&e.error)?;
            out.push_sql(", ");
            out.push_bind_param::<SqlTime, _>(&row.at)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&row.status_reason)?;
        }
        out.push_sql(")");
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for InsertEvents<'_, '_> {}

/// `UPDATE flows … WHERE id = ?` for one flow. diesel never caches the statements of its own
/// `update` and upsert builders (their text may vary with the changeset); this one has a fixed
/// text per `SETS_STATUS` and a static query id, so SQLite prepares each once per connection.
///
/// SQLite rewrites the entries of every index on a column the `SET` list names, whether or not
/// its value changes, and `status` is in two of `flows`' indexes. So the update comes in two
/// forms: `SETS_STATUS = false` leaves `status` out of the `SET` list and matches only a row
/// whose status already is the new one (0 rows otherwise); `true` sets it.
struct UpdateFlow<'p, 'a, const SETS_STATUS: bool>(&'p FlowChange<'a>);

/// The static query id of [`UpdateFlow`].
struct UpdateFlowId<const SETS_STATUS: bool>;

impl<const SETS_STATUS: bool> QueryId for UpdateFlow<'_, '_, SETS_STATUS> {
    type QueryId = UpdateFlowId<SETS_STATUS>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const SETS_STATUS: bool> QueryFragment<Sqlite> for UpdateFlow<'_, '_, SETS_STATUS> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let change = self.0;
        let update = change.update;
        out.push_sql("UPDATE flows SET ");
        if SETS_STATUS {
            out.push_sql("status = ");
            out.push_bind_param::<Text, str>(update.status.as_str())?;
            out.push_sql(", ");
        }
        out.push_sql("current_phase = ");
        out.push_bind_param::<Nullable<Text>, _>(&update.current_phase)?;
        out.push_sql(", next_phase = ");
        out.push_bind_param::<Nullable<Text>, _>(&update.next_phase)?;
        out.push_sql(", progress_percentage = ");
        out.push_bind_param::<Double, _>(&update.progress_percentage)?;
        out.push_sql(", last_seq = ");
        out.push_bind_param::<BigInt, _>(&change.last_seq)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<SqlTime, _>(&change.updated_at)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<SqlUuid, _>(&change.id)?;
        if !SETS_STATUS {
            out.push_sql(" AND status = ");
            out.push_bind_param::<Text, str>(update.status.as_str())?;
        }
        Ok(())
    }
}

impl<const SETS_STATUS: bool> RunQueryDsl<SqliteConnection> for UpdateFlow<'_, '_, SETS_STATUS> {}

/// Insert-or-overwrite of a chunk of phase rows ([`in_chunks`]). Cached by its text. A batch
/// holds each phase row once ([`super::Plan`]).
struct UpsertPhases<'p, 'a>(&'p [PhaseWrite<'a>]);

impl QueryId for UpsertPhases<'_, '_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Sqlite> for UpsertPhases<'_, '_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "INSERT OR FAIL INTO phase_runs (flow_id, position, name, status, attempt, started_at, \
             finished_at, output, error) VALUES ",
        );
        for (i, row) in self.0.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { "), (" });
            out.push_bind_param::<SqlUuid, _>(&row.flow_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Integer, _>(&row.position)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.phase.name)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, str>(row.phase.status.as_str())?;
            out.push_sql(", ");
            out.push_bind_param::<Integer, _>(&row.attempt)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<SqlTime>, _>(&row.started_at)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<SqlTime>, _>(&row.finished_at)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<SqlJson>, _>(&row.output)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&row.phase.error)?;
        }
        out.push_sql(")");
        out.push_sql(columns::PHASE_CONFLICT);
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for UpsertPhases<'_, '_> {}

/// Insert of one task, or update of its status, lease and result, with a fixed, cacheable text
/// (see [`UpdateFlow`]): leases and heartbeats rewrite task rows often.
struct UpsertTask<'p, 'a>(&'p TaskWrite<'a>);

/// The static query id of [`UpsertTask`].
struct UpsertTaskId;

impl QueryId for UpsertTask<'_, '_> {
    type QueryId = UpsertTaskId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for UpsertTask<'_, '_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let row = self.0;
        let task = row.task;
        out.push_sql("INSERT INTO tasks (");
        out.push_sql(TASK_COLUMN_LIST);
        out.push_sql(") VALUES (");
        out.push_bind_param::<SqlUuid, _>(&row.id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&task.queue)?;
        out.push_sql(", ");
        out.push_bind_param::<SqlUuid, _>(&row.flow_id)?;
        out.push_sql(", ");
        out.push_bind_param::<SqlUuid, _>(&row.master_flow_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&task.phase)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&row.attempt)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&task.client_account_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&task.engagement_id)?;
        out.push_sql(", ");
        out.push_bind_param::<SqlJson, _>(&row.payload)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, str>(task.status.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<SqlUuid>, _>(&row.lease_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&task.worker_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<SqlTime>, _>(&row.lease_expires_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<SqlJson>, _>(&row.result)?;
        out.push_sql(", ");
        out.push_bind_param::<SqlTime, _>(&row.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<SqlTime, _>(&row.updated_at)?;
        out.push_sql(")");
        out.push_sql(columns::TASK_CONFLICT);
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for UpsertTask<'_, '_> {}

/// The column list of [`InsertEvents`], in its bind order ([`columns::EVENT_COLUMNS`], checked by a
/// test).
const EVENT_COLUMN_LIST: &str = "id, flow_id, seq, master_flow_id, client_account_id, \
     engagement_id, flow_type, kind, status, current_phase, next_phase, progress_percentage, \
     error, at, status_reason";

/// The column list of [`UpsertTask`], in its bind order ([`columns::TASK_COLUMNS`], checked by a
/// test).
const TASK_COLUMN_LIST: &str = "id, queue, flow_id, master_flow_id, phase, attempt, \
     client_account_id, engagement_id, payload, status, lease_id, worker_id, lease_expires_at, \
     result, created_at, updated_at";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn task_upsert_binds_in_column_order() {
        assert_eq!(TASK_COLUMN_LIST, columns::TASK_COLUMNS.join(", "));
    }

    #[test]
    fn event_insert_binds_in_column_order() {
        assert_eq!(EVENT_COLUMN_LIST, columns::EVENT_COLUMNS.join(", "));
    }

    #[test]
    fn strips_the_scheme() {
        assert_eq!(
            path_of("sqlite://data/flowd.db"),
            Path::new("data/flowd.db")
        );
        assert_eq!(path_of("sqlite:///tmp/x.db"), Path::new("/tmp/x.db"));
        assert_eq!(path_of("sqlite:x.db"), Path::new("x.db"));
    }
}
