//! The steps every provisioner shares once it can log in to a server as an admin: the
//! tenant's login role, its database, the grants that keep other roles out, the tenant
//! schema, password changes, and teardown. Each step adopts what an earlier attempt made.

use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::{Client, NoTls, error::SqlState};

use super::{AdminAccess, ProvisionError, TenantSpec};
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
            if matches!(class, "08" | "53" | "57")
                || db.code() == &SqlState::T_R_SERIALIZATION_FAILURE
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

fn ident(name: &str) -> String {
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

/// Creates (or adopts) the tenant's login role and database, owned by that role, closed to
/// every other non-superuser role.
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
    let verb = if role_exists { "ALTER" } else { "CREATE" };
    client
        .batch_execute(&format!(
            "{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS INHERIT PASSWORD {}",
            password_literal(password)
        ))
        .await
        .map_err(run("creating the tenant role"))?;
    // An admin that is not a superuser (RDS) must be a member to create a database it owns.
    client
        .batch_execute(&format!("GRANT {role} TO CURRENT_USER"))
        .await
        .map_err(run("granting the tenant role to the admin"))?;

    let owner: Option<String> = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&tenant.database],
        )
        .await
        .map_err(run("looking up the tenant database"))?
        .map(|row| row.get(0));
    match owner {
        None => client
            .batch_execute(&format!("CREATE DATABASE {database} OWNER {role}"))
            .await
            .map_err(run("creating the tenant database"))?,
        Some(owner) if owner == tenant.role => {}
        Some(_) => {
            return Err(ProvisionError::Permanent(format!(
                "database {} already exists and belongs to another role",
                tenant.database
            )));
        }
    }
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {database} FROM PUBLIC;
             GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}"
        ))
        .await
        .map_err(run("closing the tenant database to other roles"))?;
    Ok(())
}

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
        client
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
            .map_err(run("dropping the tenant role"))?;
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
