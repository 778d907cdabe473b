//! The steps every provisioner shares once it can log in to a server as an admin: the
//! tenant's login role, its database, the grants that keep other roles out, the tenant
//! schema, password changes, and teardown. Each step adopts what an earlier attempt made.

use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::{Client, NoTls, error::SqlState};

use super::{AdminAccess, ProvisionError, TenantSpec, isolation};
use crate::migrations::{MigrationError, MigrationSet};

/// Maps a database error to a provisioning error without echoing connection details:
/// connection trouble and resource shortage are transient, anything else is permanent.
pub(crate) fn classify(context: &str, error: &tokio_postgres::Error) -> ProvisionError {
    match error.as_db_error() {
        Some(db) => {
            let class = &db.code().code()[..2];
            let message = format!(
                "{context}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            );
            // 2BP01: something came to depend on a role being dropped meanwhile; the
            // next attempt releases it too.
            if matches!(class, "08" | "53" | "57")
                || db.code() == &SqlState::T_R_SERIALIZATION_FAILURE
                || db.code() == &SqlState::DEPENDENT_OBJECTS_STILL_EXIST
            {
                ProvisionError::Transient(message)
            } else {
                ProvisionError::Permanent(message)
            }
        }
        None => ProvisionError::Transient(format!("{context}: server unreachable")),
    }
}

pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    context: &str,
) -> Result<Client, ProvisionError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| classify(context, &e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "admin connection closed");
        }
    });
    Ok(client)
}

pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The password as a SCRAM-SHA-256 verifier: the server stores it as is, and neither the
/// server's statement log nor a client-side debug log ever holds the password itself.
fn password_literal(password: &SecretString) -> String {
    literal(&postgres_protocol::password::scram_sha_256(
        password.expose_secret().as_bytes(),
    ))
}

/// Creates (or adopts) the tenant's login role and its database, owned by the admin and
/// closed to every other non-superuser role, and gives the silo the current isolation
/// (`isolation`).
pub async fn ensure_silo(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    password: &SecretString,
) -> Result<(), ProvisionError> {
    let client = connect(&admin.config, "connecting to the server as admin").await?;
    let role = ident(&tenant.role);
    let database = ident(&tenant.database);
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);

    let role_exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&tenant.role])
        .await
        .map_err(run("looking up the tenant role"))?
        .is_some();
    let (verb, attributes) = if role_exists {
        ("ALTER", ADOPTED_ROLE_ATTRIBUTES)
    } else {
        ("CREATE", ROLE_ATTRIBUTES)
    };
    client
        .batch_execute(&format!(
            "{verb} ROLE {role} WITH {attributes} PASSWORD {}",
            password_literal(password)
        ))
        .await
        .map_err(run("creating the tenant role"))?;
    // An admin that is not a superuser (RDS) must be a member to take over what the role
    // owns when the tenant is deleted.
    client
        .batch_execute(&format!("GRANT {role} TO CURRENT_USER"))
        .await
        .map_err(run("granting the tenant role to the admin"))?;

    let owner = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba), current_user::text FROM pg_database
             WHERE datname = $1",
            &[&tenant.database],
        )
        .await
        .map_err(run("looking up the tenant database"))?
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)));
    match owner {
        None => client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .map_err(run("creating the tenant database"))?,
        // Made by an earlier attempt, or (owned by the tenant) before the admin owned silos.
        Some((owner, admin)) if owner == admin || owner == tenant.role => {}
        Some(_) => {
            return Err(ProvisionError::Permanent(format!(
                "database {} already exists and belongs to another role",
                tenant.database
            )));
        }
    }
    isolation::take_database(&client, tenant).await?;
    drop(client);
    isolation::close_cluster_metadata(admin, tenant).await
}

/// The tenant role's attributes: a login and nothing more. The silo guard (a superuser
/// on the fleet) puts them back if they ever differ.
const ROLE_ATTRIBUTES: &str = "LOGIN NOCREATEDB NOCREATEROLE INHERIT CONNECTION LIMIT -1 \
     VALID UNTIL 'infinity' NOSUPERUSER NOREPLICATION NOBYPASSRLS";
/// The same for a role an earlier attempt made, as any admin may set them: PostgreSQL
/// refuses even NOSUPERUSER / NOREPLICATION / NOBYPASSRLS in ALTER ROLE from an admin that
/// is not a superuser (RDS), and only a superuser could have changed those.
const ADOPTED_ROLE_ATTRIBUTES: &str =
    "LOGIN NOCREATEDB NOCREATEROLE INHERIT CONNECTION LIMIT -1 VALID UNTIL 'infinity'";

/// The tenant role's login to its own database on the same server.
pub fn tenant_config(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    password: &SecretString,
) -> tokio_postgres::Config {
    let mut config = admin.config.clone();
    config
        .user(&tenant.role)
        .password(password.expose_secret())
        .dbname(&tenant.database);
    config
}

/// Applies `migrations/tenant` inside the tenant's database, logged in as the tenant role,
/// and returns the schema version it is at.
pub async fn migrate_silo(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    password: &SecretString,
    migrations: &MigrationSet,
) -> Result<i64, ProvisionError> {
    migrate_silo_to(
        admin,
        tenant,
        password,
        migrations,
        migrations.latest_version(),
    )
    .await
}

/// `migrate_silo`, stopping at version `target`.
pub async fn migrate_silo_to(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    password: &SecretString,
    migrations: &MigrationSet,
    target: i64,
) -> Result<i64, ProvisionError> {
    let config = tenant_config(admin, tenant, password);
    let mut client = connect(&config, "connecting to the tenant database").await?;
    match migrations.apply_up_to(&mut client, target).await {
        Ok(applied) => Ok(applied.to),
        Err(MigrationError::Database(e)) => Err(classify("migrating the tenant database", &e)),
        Err(other) => Err(ProvisionError::Permanent(other.to_string())),
    }
}

/// Gives the tenant role a new password.
pub async fn set_password(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    password: &SecretString,
) -> Result<(), ProvisionError> {
    let client = connect(&admin.config, "connecting to the server as admin").await?;
    client
        .batch_execute(&format!(
            "ALTER ROLE {} WITH PASSWORD {}",
            ident(&tenant.role),
            password_literal(password)
        ))
        .await
        .map_err(|e| classify("changing the tenant password", &e))
}

/// Puts the tenant role back as silo made it: its attributes, the password the catalog
/// holds, and no role-level settings (a tenant may change its own password and defaults
/// through SQL; nothing else of its role).
pub async fn reassert_role(
    server: &Client,
    tenant: &TenantSpec,
    password: &SecretString,
) -> Result<(), ProvisionError> {
    let role = ident(&tenant.role);
    server
        .batch_execute(&format!(
            "ALTER ROLE {role} WITH {ROLE_ATTRIBUTES} PASSWORD {};
             ALTER ROLE {role} RESET ALL;
             ALTER ROLE {role} IN DATABASE {} RESET ALL",
            password_literal(password),
            ident(&tenant.database),
        ))
        .await
        .map_err(|e| classify("putting the tenant role back", &e))
}

/// Drops the tenant's database (or keeps it renamed, owned by the admin) and its role.
/// Sessions still open on the database are ended first.
pub async fn teardown(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    keep_database: bool,
) -> Result<(), ProvisionError> {
    let client = connect(&admin.config, "connecting to the server as admin").await?;
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);
    let database = ident(&tenant.database);
    let role = ident(&tenant.role);
    let db_exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&tenant.database],
        )
        .await
        .map_err(run("looking up the tenant database"))?
        .is_some();
    let role_exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&tenant.role])
        .await
        .map_err(run("looking up the tenant role"))?
        .is_some();

    if db_exists {
        client
            .batch_execute(&format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"))
            .await
            .map_err(run("closing the tenant database"))?;
        if role_exists {
            client
                .batch_execute(&format!(
                    "REVOKE CONNECT ON DATABASE {database} FROM {role}"
                ))
                .await
                .map_err(run("closing the tenant database"))?;
        }
        if keep_database {
            if role_exists {
                let mut inside = admin.config.clone();
                inside.dbname(&tenant.database);
                let owner = connect(&inside, "connecting to the tenant database as admin").await?;
                owner
                    .batch_execute(&format!(
                        "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}"
                    ))
                    .await
                    .map_err(run("taking over the tenant's objects"))?;
            }
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&tenant.database],
                )
                .await
                .map_err(run("ending the tenant's sessions"))?;
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {database} OWNER TO CURRENT_USER;
                     ALTER DATABASE {database} RENAME TO {}",
                    ident(&kept_name(&tenant.database))
                ))
                .await
                .map_err(run("renaming the tenant database"))?;
        } else {
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .await
                .map_err(run("dropping the tenant database"))?;
        }
    }
    if role_exists {
        release_foreign_dependencies(admin, &client, tenant).await?;
        client
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
            .map_err(run("dropping the tenant role"))?;
    }
    Ok(())
}

/// What other databases hold for the tenant's role (privileges another tenant granted it,
/// default privileges, policies naming it) would make `DROP ROLE` fail; each such database
/// (from `pg_shdepend`) lets go of it first, and so do shared objects (a privilege on
/// another database, granted before silo's admin owned them all). Anything the role might
/// own there goes to the admin rather than being dropped, so no other tenant's data is
/// ever removed.
async fn release_foreign_dependencies(
    admin: &AdminAccess,
    client: &Client,
    tenant: &TenantSpec,
) -> Result<(), ProvisionError> {
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);
    let databases: Vec<Option<String>> = client
        .query(
            "SELECT DISTINCT d.datname FROM pg_shdepend s
             LEFT JOIN pg_database d ON d.oid = s.dbid
             WHERE s.refclassid = 'pg_authid'::regclass
               AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)
               AND (s.dbid = 0 OR d.datallowconn)
             ORDER BY 1 NULLS FIRST",
            &[&tenant.role],
        )
        .await
        .map_err(run(
            "looking up what other databases hold for the tenant role",
        ))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let release = format!(
        "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}",
        role = ident(&tenant.role)
    );
    let context = "removing what another database holds for the tenant role";
    for database in databases {
        match database {
            // Shared objects: released from any database, the admin's own will do.
            None => client.batch_execute(&release).await.map_err(run(context))?,
            Some(database) => {
                let mut inside = admin.config.clone();
                inside.dbname(&database);
                let other = connect(
                    &inside,
                    "connecting to a database that refers to the tenant",
                )
                .await?;
                other.batch_execute(&release).await.map_err(run(context))?;
            }
        }
    }
    Ok(())
}

/// `<database>_deleted_<unix seconds>`, cut to PostgreSQL's 63-byte identifiers.
fn kept_name(database: &str) -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let suffix = format!("_deleted_{seconds}");
    let keep = database.len().min(63 - suffix.len());
    format!("{}{suffix}", &database[..keep])
}
