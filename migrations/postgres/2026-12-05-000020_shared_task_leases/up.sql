-- Cluster mode (docs/cluster.md, 2.6): each node expires the leases of its own flows' tasks by
-- the database's clock, every lease sweep. Only leased rows are indexed, by expiry.
CREATE INDEX tasks_leased_expiry ON tasks (lease_expires_at) WHERE status = 'leased';
