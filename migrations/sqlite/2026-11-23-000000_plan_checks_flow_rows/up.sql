-- Every event and phase row is written in the same transaction as its flow's insert or update,
-- an update that matches no flow aborts the whole batch, and nothing deletes flows (as on
-- PostgreSQL, whose foreign keys went in its migration of the same name). The per-row foreign
-- key checks also made SQLite keep a statement journal (a copy of every page a statement
-- touches) for each multi-row insert. SQLite cannot drop a constraint: both tables are rebuilt
-- without it, same columns, same indexes.

CREATE TABLE phase_runs_new (
    flow_id     TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (flow_id, position)
);
INSERT INTO phase_runs_new (flow_id, position, name, status, attempt, started_at, finished_at,
                            output, error)
    SELECT flow_id, position, name, status, attempt, started_at, finished_at, output, error
    FROM phase_runs;
DROP TABLE phase_runs;
ALTER TABLE phase_runs_new RENAME TO phase_runs;

CREATE TABLE events_new (
    id                  INTEGER NOT NULL PRIMARY KEY,
    flow_id             TEXT    NOT NULL,
    seq                 INTEGER NOT NULL,
    master_flow_id      TEXT    NOT NULL,
    client_account_id   TEXT    NOT NULL,
    engagement_id       TEXT    NOT NULL,
    flow_type           TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    current_phase       TEXT,
    next_phase          TEXT,
    progress_percentage REAL    NOT NULL,
    error               TEXT,
    at                  TEXT    NOT NULL,
    UNIQUE (flow_id, seq)
);
INSERT INTO events_new (id, flow_id, seq, master_flow_id, client_account_id, engagement_id,
                        flow_type, kind, status, current_phase, next_phase, progress_percentage,
                        error, at)
    SELECT id, flow_id, seq, master_flow_id, client_account_id, engagement_id, flow_type, kind,
           status, current_phase, next_phase, progress_percentage, error, at
    FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;

CREATE INDEX events_tenant_id ON events (client_account_id, engagement_id, id);
-- A master flow's stream: the events of its whole tree in id order.
CREATE INDEX events_master_id ON events (master_flow_id, id);
