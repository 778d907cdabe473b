-- Opaque silo names. Tenants made from now on get database and role names derived from
-- the tenant id with a keyed hash (`s_<hex>`); tenants made before keep the names they
-- have (`t_<tenant id>`). The names stored here are always the ones used, whatever the
-- scheme, so this column only says how they were made.
ALTER TABLE tenants ADD COLUMN name_scheme text NOT NULL DEFAULT 'tenant-id';

-- The isolation steps (see provisioner/isolation.rs) a tenant's silo has been given:
-- onboarding gives the latest; the silo guard brings older tenants up to it.
ALTER TABLE tenants ADD COLUMN isolation_version integer NOT NULL DEFAULT 0;

-- Two tenants never share a role (a keyed-hash collision would be refused here, not
-- silently merged).
CREATE UNIQUE INDEX tenants_role_name_idx ON tenants (role_name);
