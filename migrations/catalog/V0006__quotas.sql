-- Monthly quotas. A tenant's own quota (NULL: its tier's) and, while a quota of the
-- current calendar month (UTC) is used up, why: routers refuse the tenant's SQL calls
-- with RESOURCE_EXHAUSTED naming it.
ALTER TABLE tenants
    ADD COLUMN quota_calls bigint,
    ADD COLUMN quota_rows bigint,
    ADD COLUMN quota_exhausted text NOT NULL DEFAULT '';
