-- Cluster mode (docs/cluster.md, 2.4): event ids unique across nodes and visible in id order.
-- Each commit numbers its events from this one-row counter as its last statements before
-- COMMIT; the row lock, held until then, orders the numbering of concurrent commits as their
-- commits, and a rolled-back commit takes its increment back: ids are gap-free and a reader
-- that sees id k sees every id below it.
CREATE TABLE event_ids (
    one  BOOLEAN NOT NULL PRIMARY KEY DEFAULT TRUE CHECK (one),
    last BIGINT  NOT NULL
);
INSERT INTO event_ids (one, last) SELECT TRUE, COALESCE(max(id), 0) FROM events;
