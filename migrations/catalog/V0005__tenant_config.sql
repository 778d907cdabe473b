-- Per-tenant configuration: each tenant's own key -> JSON value settings (tier defaults
-- live in the tiers file, not here). Changed only together with the tenant's
-- config_revision and a `config_changed` tenant event, in one transaction.
CREATE TABLE tenant_config (
    tenant_id  text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    key        text NOT NULL,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

-- Bumped by every change of the tenant's own settings; part of the config version routers
-- report.
ALTER TABLE tenants ADD COLUMN config_revision bigint NOT NULL DEFAULT 0;
