//! SQLite's WAL checkpoints, moved off the writer.
//!
//! In WAL mode a commit appends to the log; a checkpoint copies the log back into the database
//! file and `fsync`s it. Left to SQLite, the connection whose commit crosses the
//! auto-checkpoint threshold runs it inside that commit: the persistence actor's writer, which
//! then stalls 45–60 ms while every write queued behind it (an HTTP create, say) waits. Here a
//! thread with a connection of its own runs a `PASSIVE` checkpoint every few milliseconds
//! instead; it never blocks the writer and keeps the log short, so the writer's own
//! auto-checkpoint (kept as a safety net) is never reached.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};
use flowd_actors::store::StoreError;

/// How often the log is copied back. Short, so each checkpoint (and its `fsync`) is small.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// A checkpoint slower than this is logged: the disk is falling behind the writer.
const SLOW_CHECKPOINT: Duration = Duration::from_millis(250);

/// Owns the checkpoint thread; dropping it (with the last store clone) stops the thread.
pub struct Checkpointer {
    _stop: Sender<()>,
}

/// One row of `PRAGMA wal_checkpoint`.
#[derive(QueryableByName)]
struct CheckpointResult {
    #[diesel(sql_type = BigInt)]
    busy: i64,
    #[diesel(sql_type = BigInt)]
    log: i64,
    #[diesel(sql_type = BigInt)]
    checkpointed: i64,
}

impl Checkpointer {
    /// Opens a connection to the database at `path` and starts checkpointing it.
    pub fn start(path: &str, pragmas: &str) -> Result<Checkpointer, StoreError> {
        let mut conn = SqliteConnection::establish(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {path}: {e}")))?;
        conn.batch_execute(pragmas)
            .map_err(|e| StoreError::Unavailable(format!("cannot set up {path}: {e}")))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let path = path.to_owned();
        thread::Builder::new()
            .name("flowd-sqlite-checkpoint".into())
            .spawn(move || {
                // The sender is never used: its drop ends the wait with `Disconnected`.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    checkpoint(&mut conn, &path);
                }
                tracing::debug!(path, "SQLite checkpoint thread stopped");
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start a thread: {e}")))?;
        Ok(Checkpointer { _stop: stop })
    }
}

fn checkpoint(conn: &mut SqliteConnection, path: &str) {
    let started = Instant::now();
    match diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result::<CheckpointResult>(conn) {
        Ok(result) => {
            let took = started.elapsed();
            if took >= SLOW_CHECKPOINT {
                tracing::warn!(
                    path,
                    took_ms = took.as_millis() as u64,
                    log_frames = result.log,
                    checkpointed = result.checkpointed,
                    "slow SQLite checkpoint"
                );
            } else if result.busy != 0 {
                tracing::debug!(path, "SQLite checkpoint found the database busy");
            }
        }
        Err(error) => tracing::warn!(path, %error, "SQLite checkpoint failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// A commit lands in the WAL only; the database file grows once the thread (not the writer,
    /// whose auto-checkpoint is far away) has copied it back.
    #[test]
    fn copies_the_log_into_the_database_file_without_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("checkpoint.db");
        let path = db.to_str().expect("utf-8 path");
        let pragmas = "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 100000;";
        let mut writer = SqliteConnection::establish(path).expect("open");
        writer
            .batch_execute(pragmas)
            .and_then(|()| writer.batch_execute("CREATE TABLE t (x BLOB)"))
            .expect("set up");
        // Bring the schema into the database file first, so the file's size is the baseline.
        writer
            .batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        let before = file_len(&db);

        let checkpoints = Checkpointer::start(path, pragmas).expect("start");
        writer
            .batch_execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 256) \
                 INSERT INTO t SELECT zeroblob(4096) FROM n",
            )
            .expect("insert");
        assert!(
            file_len(&db.with_extension("db-wal")) > 1 << 20,
            "the rows are in the WAL"
        );

        let deadline = Instant::now() + Duration::from_secs(5);
        while file_len(&db) < before + (1 << 20) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            file_len(&db) >= before + (1 << 20),
            "the database file holds the rows: {} bytes, {before} before",
            file_len(&db)
        );
        drop(checkpoints);
    }
}
