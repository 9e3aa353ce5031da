-- Cluster mode (docs/cluster.md, 2.6): each node expires the leases of its own flows' tasks by
-- the database's clock, every lease sweep. Only leased rows are indexed, by expiry.
CREATE INDEX tasks_leased_expiry ON tasks (lease_expires_at) WHERE status = 'leased';

-- When a worker last polled a queue on each node (written at most once a second per node and
-- queue while workers poll or wait): a phase's fallback ("no worker polled the queue within
-- fallback_after_s") counts workers polling any node, not only the flow's owner.
CREATE TABLE queue_polls (
    client_account_id TEXT        NOT NULL,
    engagement_id     TEXT        NOT NULL,
    queue             TEXT        NOT NULL,
    node_id           TEXT        NOT NULL,
    polled_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_account_id, engagement_id, queue, node_id)
);
