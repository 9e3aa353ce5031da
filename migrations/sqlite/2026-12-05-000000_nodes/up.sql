-- One row per flowd process that ever used this database (docs/cluster.md); on SQLite that is
-- one live node at a time (the `<db>.lock` file keeps a second process out), and the rows of
-- earlier processes show how they ended (stopped, or down after a crash).
CREATE TABLE nodes (
    node_id           TEXT    NOT NULL PRIMARY KEY,
    advertise         TEXT,
    incarnation       TEXT    NOT NULL,
    started_at        TEXT    NOT NULL,
    heartbeat_at      TEXT    NOT NULL,
    stopped_at        TEXT,
    heartbeats        INTEGER NOT NULL DEFAULT 0,
    missed_heartbeats INTEGER NOT NULL DEFAULT 0
);
