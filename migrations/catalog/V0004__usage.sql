-- Usage metering. Each router process (`router_instance`, new per start) keeps running
-- totals per tenant, minute, method and code and sends them again until stored; a row is
-- replaced by the next total for its key, so a record sent twice is counted once.
CREATE TABLE tenant_usage (
    tenant_id         text        NOT NULL,
    minute            timestamptz NOT NULL,
    router_instance   text        NOT NULL,
    method            text        NOT NULL,
    code              text        NOT NULL,
    calls             bigint      NOT NULL,
    rows_returned     bigint      NOT NULL,
    rows_affected     bigint      NOT NULL,
    bytes_in          bigint      NOT NULL,
    bytes_out         bigint      NOT NULL,
    db_time_us        bigint      NOT NULL,
    peak_concurrent   integer     NOT NULL,
    PRIMARY KEY (tenant_id, minute, router_instance, method, code)
);
-- GetUsage over every tenant, and retention, go by time.
CREATE INDEX tenant_usage_minute_idx ON tenant_usage (minute);

-- Each tenant's database size, sampled periodically by the control plane.
CREATE TABLE tenant_database_sizes (
    tenant_id   text        NOT NULL,
    sampled_at  timestamptz NOT NULL,
    bytes       bigint      NOT NULL,
    PRIMARY KEY (tenant_id, sampled_at)
);
CREATE INDEX tenant_database_sizes_sampled_idx ON tenant_database_sizes (sampled_at);
