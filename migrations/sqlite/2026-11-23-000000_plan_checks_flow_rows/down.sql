CREATE TABLE phase_runs_old (
    flow_id     TEXT    NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
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
INSERT INTO phase_runs_old (flow_id, position, name, status, attempt, started_at, finished_at,
                            output, error)
    SELECT flow_id, position, name, status, attempt, started_at, finished_at, output, error
    FROM phase_runs;
DROP TABLE phase_runs;
ALTER TABLE phase_runs_old RENAME TO phase_runs;

CREATE TABLE events_old (
    id                  INTEGER NOT NULL PRIMARY KEY,
    flow_id             TEXT    NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
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
INSERT INTO events_old (id, flow_id, seq, master_flow_id, client_account_id, engagement_id,
                        flow_type, kind, status, current_phase, next_phase, progress_percentage,
                        error, at)
    SELECT id, flow_id, seq, master_flow_id, client_account_id, engagement_id, flow_type, kind,
           status, current_phase, next_phase, progress_percentage, error, at
    FROM events;
DROP TABLE events;
ALTER TABLE events_old RENAME TO events;

CREATE INDEX events_tenant_id ON events (client_account_id, engagement_id, id);
CREATE INDEX events_master_id ON events (master_flow_id, id);
