ALTER TABLE flows RESET (fillfactor);
ALTER TABLE phase_runs RESET (fillfactor);
