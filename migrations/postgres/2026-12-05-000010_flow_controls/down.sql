DROP TABLE flow_controls;
