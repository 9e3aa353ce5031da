ALTER TABLE events DROP COLUMN status_reason;
