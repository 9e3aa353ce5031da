-- The ownership columns of cluster mode (see the PostgreSQL migration). SQLite is single-node:
-- they are written at create and never change, so the shared code reads the same row on both.
ALTER TABLE flows ADD COLUMN owner_node TEXT;
ALTER TABLE flows ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 1;
