DROP TABLE failures;
DROP TABLE events;
DROP TABLE phase_runs;
DROP TABLE flows;
DROP TABLE flow_types;
