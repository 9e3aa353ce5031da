DROP INDEX IF EXISTS tasks_leased_expiry;
