-- A running flow's row and its phase rows are rewritten at every transition, but the columns
-- that change (phase, progress, sequence, timestamps, output) are in no index. Room left on each
-- page lets PostgreSQL make those heap-only (HOT) updates: no index entry is written, and there
-- are seven on `flows`. Applies to pages written from now on.
ALTER TABLE flows SET (fillfactor = 70);
ALTER TABLE phase_runs SET (fillfactor = 70);
