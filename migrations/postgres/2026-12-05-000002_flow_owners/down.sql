DROP INDEX flows_owner_active;
ALTER TABLE flows DROP COLUMN owner_epoch;
ALTER TABLE flows DROP COLUMN owner_node;
