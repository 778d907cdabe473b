-- Baseline schema of every tenant silo. Applications add their own tables through
-- later versioned migrations in this directory.

CREATE TABLE silo_tenant_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO silo_tenant_info (key, value) VALUES ('schema_baseline', '1');
