DROP TABLE IF EXISTS queue_polls;
DROP INDEX IF EXISTS tasks_leased_expiry;
