ALTER TABLE events
    ADD CONSTRAINT events_flow_id_fkey FOREIGN KEY (flow_id) REFERENCES flows (id) ON DELETE CASCADE;
ALTER TABLE phase_runs
    ADD CONSTRAINT phase_runs_flow_id_fkey FOREIGN KEY (flow_id) REFERENCES flows (id) ON DELETE CASCADE;
