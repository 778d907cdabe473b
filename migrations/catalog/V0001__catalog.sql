-- The control plane's catalog: tenants, long-running operations with their steps, and the
-- tenant-event log that routers follow with WatchTenants.

CREATE TABLE tenants (
    tenant_id           text PRIMARY KEY,
    display_name        text NOT NULL,
    tier                text NOT NULL,
    state               text NOT NULL,
    failure_reason      text NOT NULL DEFAULT '',
    provisioner         text NOT NULL,
    -- Where the silo lives (server name, host, port, provisioner specifics); NULL until placed.
    placement           jsonb,
    -- Name of the fleet member or instance, mirrored from placement for counting.
    placement_server    text,
    database_name       text NOT NULL,
    role_name           text NOT NULL,
    -- AES-256-GCM: 12-byte nonce followed by the ciphertext of the role's password.
    credentials         bytea,
    credentials_version integer NOT NULL DEFAULT 0,
    schema_version      bigint NOT NULL DEFAULT 0,
    request_id          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tenants_state_idx ON tenants (state);
CREATE INDEX tenants_tier_idx ON tenants (tier);
CREATE INDEX tenants_placement_idx ON tenants (provisioner, placement_server);

CREATE TABLE operations (
    operation_id    uuid PRIMARY KEY,
    kind            text NOT NULL,
    tenant_id       text NOT NULL,
    request_id      text NOT NULL,
    -- pending: waiting for or in the hands of a worker; succeeded / failed: done.
    status          text NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}',
    error           text NOT NULL DEFAULT '',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE UNIQUE INDEX operations_idempotency_idx ON operations (kind, tenant_id, request_id);
CREATE INDEX operations_pending_idx ON operations (next_attempt_at) WHERE status = 'pending';

CREATE TABLE operation_steps (
    operation_id uuid NOT NULL REFERENCES operations (operation_id) ON DELETE CASCADE,
    position     integer NOT NULL,
    name         text NOT NULL,
    status       text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    attempts     integer NOT NULL DEFAULT 1,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (operation_id, position)
);

-- Written only under the catalog's event lock (see catalog.rs), so sequence numbers become
-- visible in increasing order and a watcher that resumes from the last one it saw misses none.
CREATE TABLE tenant_events (
    sequence    bigint PRIMARY KEY,
    tenant_id   text NOT NULL,
    kind        text NOT NULL,
    state       text NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tenant_events_tenant_idx ON tenant_events (tenant_id, sequence);
