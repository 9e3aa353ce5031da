-- External tasks: one row per attempt of an `external` phase, leased by remote workers.

-- No foreign key to flows: a task is written in the same batch as (and after) its flow's
-- transition, and, like the failure journal, it stays readable whatever happens to the flow row.
CREATE TABLE tasks (
    id                UUID        NOT NULL PRIMARY KEY,
    queue             TEXT        NOT NULL,
    flow_id           UUID        NOT NULL,
    master_flow_id    UUID        NOT NULL,
    phase             TEXT        NOT NULL,
    attempt           INTEGER     NOT NULL,
    client_account_id TEXT        NOT NULL,
    engagement_id     TEXT        NOT NULL,
    payload           JSONB       NOT NULL,
    status            TEXT        NOT NULL,
    lease_id          UUID,
    worker_id         TEXT,
    lease_expires_at  TIMESTAMPTZ,
    result            JSONB,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    -- A flow that re-runs an interrupted attempt finds its task instead of adding one.
    UNIQUE (flow_id, phase, attempt)
);

-- A tenant's queue, oldest first (ids are time-ordered), by status.
CREATE INDEX tasks_queue ON tasks (client_account_id, engagement_id, queue, status, id);

-- A master flow's stream: the events of its whole tree in id order.
CREATE INDEX events_master_id ON events (master_flow_id, id);
