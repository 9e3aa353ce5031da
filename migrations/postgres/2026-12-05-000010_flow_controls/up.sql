-- Cluster mode (docs/cluster.md, 2.6): a control (pause, resume, cancel, retry) of a flow another
-- node owns. The requesting node inserts the row and notifies the owner; whoever owns the flow
-- when it reads takes the row (`taken_by`), applies it as a local control and writes `reply`
-- (the local answer) with `applied_at`. A requester that stops waiting sets `applied_at` with
-- no reply: withdrawn, nobody applies it after that. Answered rows are deleted by their
-- requester; rows older than an hour by any node.
CREATE TABLE flow_controls (
    id                UUID        NOT NULL PRIMARY KEY,
    flow_id           UUID        NOT NULL,
    client_account_id TEXT        NOT NULL,
    engagement_id     TEXT        NOT NULL,
    command           TEXT        NOT NULL,
    owner_node        TEXT        NOT NULL,
    requested_by      TEXT        NOT NULL,
    requested_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    taken_by          TEXT,
    taken_at          TIMESTAMPTZ,
    applied_at        TIMESTAMPTZ,
    reply             JSONB
);
-- What the appliers read: controls not yet answered.
CREATE INDEX flow_controls_pending ON flow_controls (flow_id) WHERE applied_at IS NULL;
