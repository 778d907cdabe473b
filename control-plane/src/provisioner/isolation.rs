//! What keeps tenants that share a PostgreSQL server unaware of each other: silo's admin
//! role owns each tenant database (so a tenant cannot comment on it, set defaults on it,
//! limit its connections or drop it), the tenant owns the `public` schema it works in, and
//! inside each silo the shared catalogs, the statistics views that list the whole cluster
//! and the functions that read them are closed to PUBLIC.
//!
//! A shared catalog's privileges are kept per database (`pg_class` is not shared), which is
//! why this runs in every silo. Only their owner can close them, so a fleet admin must be a
//! superuser; on a server of its own (RDS, whose admin is not one) there is nobody to hide
//! from and only the schema is handed over.

use tokio_postgres::Client;

use super::{AdminAccess, ProvisionError, TenantSpec, bootstrap};

/// The isolation a silo gets today; the catalog records the version each silo has, and
/// the silo guard brings older silos up to this one.
pub const VERSION: i32 = 1;

/// Views over the whole cluster (sessions, locks, databases, roles, replication, security
/// labels); every shared catalog (`relisshared`) is closed as well.
const CLUSTER_VIEWS: &[&str] = &[
    "pg_roles",
    "pg_user",
    "pg_group",
    "pg_shadow",
    "pg_stat_activity",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_replication",
    "pg_stat_replication_slots",
    "pg_stat_wal_receiver",
    "pg_stat_subscription",
    "pg_stat_subscription_stats",
    "pg_stat_ssl",
    "pg_stat_gssapi",
    "pg_stat_progress_analyze",
    "pg_stat_progress_basebackup",
    "pg_stat_progress_cluster",
    "pg_stat_progress_copy",
    "pg_stat_progress_create_index",
    "pg_stat_progress_vacuum",
    "pg_locks",
    "pg_prepared_xacts",
    "pg_replication_slots",
    "pg_replication_origin_status",
    "pg_seclabels",
    "pg_shmem_allocations",
    "pg_backend_memory_contexts",
];

/// Functions behind those views, and the ones that tell whether a database, role or
/// session exists or name it from an OID. (`pg_stat_get_backend_*` and `pg_stat_get_db_*`
/// are matched by prefix.)
const CLUSTER_FUNCTIONS: &[&str] = &[
    "pg_stat_get_activity",
    "pg_stat_get_progress_info",
    "pg_stat_get_wal_receiver",
    "pg_stat_get_wal_senders",
    "pg_stat_get_subscription",
    "pg_stat_get_subscription_stats",
    "pg_stat_get_replication_slot",
    "pg_lock_status",
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_isolation_test_session_is_blocked",
    "pg_prepared_xact",
    "pg_get_replication_slots",
    "pg_show_replication_origin_status",
    "pg_replication_origin_oid",
    "pg_get_shmem_allocations",
    "pg_database_size",
    "pg_database_collation_actual_version",
    "pg_tablespace_databases",
    "pg_tablespace_size",
    "pg_tablespace_location",
    "pg_describe_object",
    "pg_identify_object",
    "pg_identify_object_as_address",
    "pg_get_object_address",
    "has_database_privilege",
    "has_tablespace_privilege",
    "to_regrole",
    "shobj_description",
    "pg_cancel_backend",
    "pg_terminate_backend",
];

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One statement, idempotent: closes the cluster-wide catalogs, views and functions of
/// the database it runs in to PUBLIC.
fn revoke_cluster_metadata() -> String {
    format!(
        "DO $silo$
         DECLARE item record;
         BEGIN
           FOR item IN
             SELECT c.oid::regclass AS name FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind IN ('r', 'v', 'm')
               AND (c.relisshared OR c.relname = ANY (ARRAY[{views}]))
           LOOP
             EXECUTE format('REVOKE ALL ON TABLE %s FROM PUBLIC', item.name);
           END LOOP;
           FOR item IN
             SELECT p.oid::regprocedure AS name FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND (p.proname = ANY (ARRAY[{functions}])
                    OR p.proname LIKE 'pg\\_stat\\_get\\_backend\\_%'
                    OR p.proname LIKE 'pg\\_stat\\_get\\_db\\_%')
           LOOP
             EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', item.name);
           END LOOP;
         END
         $silo$",
        views = quoted_list(CLUSTER_VIEWS),
        functions = quoted_list(CLUSTER_FUNCTIONS),
    )
}

/// `information_schema.columns` and `.domains` compute `character_octet_length` with a SQL
/// function that reads `pg_database` as the caller, which the tenant may no longer do;
/// this one asks `getdatabaseencoding()` instead and returns the same. Runs as the
/// superuser that owns it.
const CHAR_OCTET_LENGTH: &str = "DO $silo$
BEGIN
  IF pg_catalog.pg_has_role((SELECT proowner FROM pg_catalog.pg_proc
        WHERE oid = 'information_schema._pg_char_octet_length(oid, integer)'::regprocedure),
      'USAGE') THEN
    CREATE OR REPLACE FUNCTION information_schema._pg_char_octet_length(typid oid, typmod integer)
      RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN CASE WHEN typid = ANY (ARRAY[25::oid, 1042::oid, 1043::oid])
      THEN CASE WHEN typmod = -1 THEN (2::double precision ^ 30::double precision)::integer
        ELSE information_schema._pg_char_max_length(typid, typmod)
          * pg_catalog.pg_encoding_max_length(
              pg_catalog.pg_char_to_encoding(pg_catalog.getdatabaseencoding()))
        END
      ELSE NULL::integer END;
  END IF;
END
$silo$";

/// Gives the tenant's silo the current isolation; idempotent, and safe on a silo made
/// before it (a database the tenant owns is handed to the admin).
pub async fn harden(admin: &AdminAccess, tenant: &TenantSpec) -> Result<(), ProvisionError> {
    let server = bootstrap::admin_session(admin).await?;
    take_database(&server, tenant).await?;
    drop(server);
    close_cluster_metadata(admin, tenant).await
}

/// Inside the silo: the tenant owns `public`, the cluster-wide catalogs are closed.
pub(super) async fn close_cluster_metadata(
    admin: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<(), ProvisionError> {
    let client = bootstrap::admin_session_in(
        admin,
        &tenant.database,
        "connecting to the tenant database as admin",
    )
    .await?;
    let run =
        |context: &'static str| move |e: tokio_postgres::Error| bootstrap::classify(context, &e);
    let public = format!(
        "ALTER SCHEMA public OWNER TO {}",
        bootstrap::ident(&tenant.role)
    );
    if !admin.shared {
        // A server of its own (RDS): nobody to hide from, and its admin owns no catalogs.
        return client
            .batch_execute(&public)
            .await
            .map_err(run("giving the tenant its schema"));
    }
    // Only the catalogs' owner can close them.
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(run("checking the fleet admin"))?
        .get(0);
    if !superuser {
        return Err(ProvisionError::Permanent(
            "the fleet server's admin login is not a superuser, so it cannot close the \
             cluster catalogs in the silo; on a shared server it must be one"
                .into(),
        ));
    }
    client
        .batch_execute(&format!(
            "{public}; {revoke}; {CHAR_OCTET_LENGTH}",
            revoke = revoke_cluster_metadata(),
        ))
        .await
        .map_err(run("closing the cluster's catalogs in the silo"))
}

/// The admin owns the tenant database; the tenant may connect, make schemas and temporary
/// tables, and nobody else may connect.
pub(super) async fn take_database(
    server: &Client,
    tenant: &TenantSpec,
) -> Result<(), ProvisionError> {
    let database = bootstrap::ident(&tenant.database);
    let role = bootstrap::ident(&tenant.role);
    server
        .batch_execute(&format!(
            "ALTER DATABASE {database} OWNER TO CURRENT_USER;
             REVOKE ALL ON DATABASE {database} FROM PUBLIC;
             GRANT CONNECT, TEMPORARY, CREATE ON DATABASE {database} TO {role}"
        ))
        .await
        .map_err(|e| bootstrap::classify("handing the tenant database to the admin", &e))
}
