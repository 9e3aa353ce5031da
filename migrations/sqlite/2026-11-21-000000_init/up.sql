-- uuids are hyphenated lower-case TEXT, timestamps UTC TEXT with microseconds, JSON TEXT.

CREATE TABLE flow_types (
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    definition TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE flows (
    id                  TEXT    NOT NULL PRIMARY KEY,
    flow_type           TEXT    NOT NULL,
    flow_type_version   INTEGER NOT NULL,
    status              TEXT    NOT NULL,
    current_phase       TEXT,
    next_phase          TEXT,
    progress_percentage REAL    NOT NULL,
    input               TEXT    NOT NULL,
    parent_flow_id      TEXT,
    master_flow_id      TEXT    NOT NULL,
    client_account_id   TEXT    NOT NULL,
    engagement_id       TEXT    NOT NULL,
    created_by          TEXT,
    idempotency_key     TEXT,
    last_seq            INTEGER NOT NULL,
    created_at          TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL
);

-- Listing newest first (ids are time-ordered) within a tenant, optionally by status/type.
CREATE INDEX flows_tenant_id ON flows (client_account_id, engagement_id, id);
CREATE INDEX flows_tenant_status_id ON flows (client_account_id, engagement_id, status, id);
CREATE INDEX flows_tenant_type_id ON flows (client_account_id, engagement_id, flow_type, id);
CREATE INDEX flows_parent_id ON flows (parent_flow_id, id) WHERE parent_flow_id IS NOT NULL;
-- Active flows at boot.
CREATE INDEX flows_status ON flows (status);
CREATE UNIQUE INDEX flows_idempotency ON flows (client_account_id, engagement_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE phase_runs (
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

-- `id` is assigned by the persistence actor: INTEGER PRIMARY KEY without AUTOINCREMENT.
CREATE TABLE events (
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

CREATE INDEX events_tenant_id ON events (client_account_id, engagement_id, id);

-- The journal keeps every failure, even of a flow whose row is gone: no foreign key.
CREATE TABLE failures (
    id             INTEGER NOT NULL PRIMARY KEY,
    flow_id        TEXT    NOT NULL,
    master_flow_id TEXT    NOT NULL,
    phase          TEXT,
    attempt        INTEGER NOT NULL,
    error_kind     TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    diagnostic     TEXT    NOT NULL,
    at             TEXT    NOT NULL
);

CREATE INDEX failures_flow_id ON failures (flow_id, id);
