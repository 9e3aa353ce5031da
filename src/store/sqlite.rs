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

use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;

use super::columns::CommitRow;
use super::models::FlowChange;
use super::schema::sql_types::SqlUuid;
use super::{Plan, TxError};

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
    for row in &plan.flow_types {
        InsertRows::one(row).execute(conn)?;
    }
    for row in &plan.new_flows {
        InsertRows::one(row).execute(conn)?;
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
        InsertRows::chunk(chunk).execute(conn)?;
    }
    for chunk in in_chunks(&plan.events) {
        InsertRows::chunk(chunk).execute(conn)?;
    }
    for row in &plan.failures {
        InsertRows::one(row).execute(conn)?;
    }
    for row in &plan.tasks {
        InsertRows::one(row).execute(conn)?;
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

/// `INSERT INTO table (columns) VALUES (…), (…)` and the table's conflict clause, for rows of
/// one table described in [`super::columns`]: one row, or a chunk of them ([`in_chunks`], `OR FAIL`).
/// Cached by its text, of which each table has one per row count.
struct InsertRows<'p, R> {
    rows: &'p [R],
    or_fail: bool,
}

impl<'p, R: CommitRow> InsertRows<'p, R> {
    fn one(row: &'p R) -> Self {
        Self {
            rows: std::slice::from_ref(row),
            or_fail: false,
        }
    }

    fn chunk(rows: &'p [R]) -> Self {
        Self {
            rows,
            or_fail: true,
        }
    }
}

impl<R> QueryId for InsertRows<'_, R> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<R: CommitRow> QueryFragment<Sqlite> for InsertRows<'_, R> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(if self.or_fail {
            "INSERT OR FAIL INTO "
        } else {
            "INSERT INTO "
        });
        out.push_sql(R::TABLE);
        for (i, column) in R::COLUMNS.iter().enumerate() {
            out.push_sql(if i == 0 { " (" } else { ", " });
            out.push_sql(column);
        }
        out.push_sql(") VALUES ");
        for (i, row) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { "), (" });
            row.bind_values(&mut out)?;
        }
        out.push_sql(")");
        out.push_sql(R::CONFLICT);
        Ok(())
    }
}

impl<R: CommitRow> RunQueryDsl<SqliteConnection> for InsertRows<'_, R> {}

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
        out.push_sql("UPDATE flows SET ");
        // Single-node: the owner columns are written at create and never change.
        let skip: &[&str] = if SETS_STATUS {
            &["id", "owner_node", "owner_epoch"]
        } else {
            &["id", "status", "owner_node", "owner_epoch"]
        };
        change.bind_assignments(skip, &mut out)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<SqlUuid, _>(&change.id)?;
        if !SETS_STATUS {
            out.push_sql(" AND status = ");
            out.push_bind_param::<Text, str>(change.update.status.as_str())?;
        }
        Ok(())
    }
}

impl<const SETS_STATUS: bool> RunQueryDsl<SqliteConnection> for UpdateFlow<'_, '_, SETS_STATUS> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
