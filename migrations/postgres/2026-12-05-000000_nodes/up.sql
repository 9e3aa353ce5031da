-- One row per flowd process that ever joined this database's cluster (docs/cluster.md). Written
-- by each node itself: at start (register), every heartbeat_ms (heartbeat_at, counters) and at a
-- graceful stop (stopped_at). Times are the database's clock (now()), so nodes whose clocks
-- disagree are still judged by one clock. `incarnation` is new at every start: a heartbeat that
-- finds another incarnation in its row learns that another process took its node id.
CREATE TABLE nodes (
    node_id           TEXT        NOT NULL PRIMARY KEY,
    advertise         TEXT,
    incarnation       UUID        NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    heartbeat_at      TIMESTAMPTZ NOT NULL,
    stopped_at        TIMESTAMPTZ,
    heartbeats        BIGINT      NOT NULL DEFAULT 0,
    missed_heartbeats BIGINT      NOT NULL DEFAULT 0
);
