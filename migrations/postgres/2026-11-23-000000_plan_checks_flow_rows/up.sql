-- Every event and phase row is written in the same transaction as its flow's insert or update,
-- an update that matches no flow aborts the whole batch, and nothing deletes flows. The foreign
-- keys re-checked that per row, each check a lookup plus a row lock on `flows`: about half the
-- cost of an event insert. The write plan's guarantee is covered by the store conformance tests.
ALTER TABLE events DROP CONSTRAINT events_flow_id_fkey;
ALTER TABLE phase_runs DROP CONSTRAINT phase_runs_flow_id_fkey;
