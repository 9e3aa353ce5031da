-- Every event carries the flow's status reason as its transition left it (JSON text; null once
-- the flow is terminal, and for events written before this column existed).
ALTER TABLE events ADD COLUMN status_reason TEXT;
