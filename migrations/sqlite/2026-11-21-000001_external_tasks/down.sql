DROP INDEX events_master_id;
DROP TABLE tasks;
