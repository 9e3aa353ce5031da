-- Cluster mode (docs/cluster.md, 2.1): each live flow is owned by one node under a lease epoch.
-- Every transition's flow update is conditional on both, so a node that lost the flow (a
-- takeover bumped the epoch) commits nothing. NULL: a flow stored before this migration; the
-- first node to boot takes the active ones over.
ALTER TABLE flows ADD COLUMN owner_node TEXT;
ALTER TABLE flows ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0;
-- A node's active flows (boot, reconciliation) and a dead node's orphans (claims). Terminal
-- flows keep their owner as history and leave the index.
CREATE INDEX flows_owner_active ON flows (owner_node, id)
    WHERE status IN ('initialized', 'running', 'paused');
