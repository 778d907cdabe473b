-- Fleet-wide schema migration runs: an operation with no single tenant, and one row per
-- tenant it plans, runs, or skips.

ALTER TABLE operations ALTER COLUMN tenant_id DROP NOT NULL;

CREATE TABLE migration_tenants (
    operation_id uuid NOT NULL REFERENCES operations (operation_id) ON DELETE CASCADE,
    tenant_id    text NOT NULL,
    wave         integer NOT NULL,
    -- planned (dry run), pending, running, done, failed, skipped
    state        text NOT NULL,
    from_version bigint NOT NULL,
    version      bigint NOT NULL,
    detail       text NOT NULL DEFAULT '',
    attempts     integer NOT NULL DEFAULT 0,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (operation_id, tenant_id)
);

CREATE INDEX migration_tenants_wave_idx ON migration_tenants (operation_id, wave, state);
