//! The steps every provisioner shares once it can log in to a server as an admin: the
//! tenant's login role, its database, the grants that keep other roles out, the tenant
//! schema, password changes, and teardown. Each step adopts what an earlier attempt made.

use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use silo_tls::postgres::{PgConnector, tls_failure};
use tokio_postgres::{Client, error::SqlState};

use super::{AdminAccess, ProvisionError, TenantSpec, isolation};
use crate::migrations::{MigrationError, MigrationSet};

/// Maps a database error to a provisioning error without echoing connection details, by
/// what another attempt can do about it:
///
/// - transient (the step runs again after a back-off): connection trouble (08), resource
///   shortage (53), operator intervention (57), serialization failure (40001), lock
///   timeouts (55P03), something that came to depend on a role being dropped meanwhile
///   (2BP01: the next attempt releases it too), and a duplicate of what the step itself
///   makes (23505 on the catalogs, 42P04 database, 42710 role): every step looks first and
///   adopts what exists, so the next attempt adopts what an earlier one (perhaps a killed
///   process whose statement was still running) made;
/// - permanent (the operation fails with the reason): anything else.
pub(crate) fn classify(context: &str, error: &tokio_postgres::Error) -> ProvisionError {
    match error.as_db_error() {
        Some(db) => {
            let class = &db.code().code()[..2];
            let message = format!(
                "{context}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            );
            let code = db.code();
            if matches!(class, "08" | "53" | "57")
                || code == &SqlState::T_R_SERIALIZATION_FAILURE
                || code == &SqlState::LOCK_NOT_AVAILABLE
                || code == &SqlState::DEPENDENT_OBJECTS_STILL_EXIST
                || code == &SqlState::UNIQUE_VIOLATION
                || code == &SqlState::DUPLICATE_DATABASE
                || code == &SqlState::DUPLICATE_OBJECT
            {
                ProvisionError::Transient(message)
            } else {
                ProvisionError::Permanent(message)
            }
        }
        None => match tls_failure(error) {
            // Transient: the operator can fix the CA file or the server's certificate, and
            // the step is retried; the reason says what to fix.
            Some(tls) => ProvisionError::Transient(format!("{context}: {tls}")),
            None => ProvisionError::Transient(format!("{context}: server unreachable")),
        },
    }
}

/// An admin connection to the server's maintenance database that holds the tenant's
/// provisioning lock (a session advisory lock keyed by the tenant's role) until it is
/// dropped. Every step that creates, changes or drops the tenant's objects runs under it,
/// so a step never overlaps an earlier attempt's statement that is still running on the
/// server (a killed control plane's `CREATE DATABASE` runs on to its end): PostgreSQL
/// releases that attempt's lock only when its backend is done.
pub(crate) async fn locked(
    admin: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<Client, ProvisionError> {
    let client = admin_session(admin).await?;
    client
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('silo-tenant:' || $1, 0))",
            &[&tenant.role],
        )
        .await
        .map_err(|e| classify("waiting for an earlier attempt on the tenant", &e))?;
    Ok(client)
}

pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    connector: &PgConnector,
    context: &str,
) -> Result<Client, ProvisionError> {
    let (client, connection) = config
        .connect(connector.clone())
        .await
        .map_err(|e| classify(context, &e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "admin connection closed");
        }
    });
    Ok(client)
}

/// The admin's session on its server's default database.
pub(crate) async fn admin_session(admin: &AdminAccess) -> Result<Client, ProvisionError> {
    connect(
        &admin.config,
        &admin.connector,
        "connecting to the server as admin",
    )
    .await
}

/// The admin's session in `database` on its server; `context` names it in errors.
pub(crate) async fn admin_session_in(
    admin: &AdminAccess,
    database: &str,
    context: &str,
) -> Result<Client, ProvisionError> {
    let mut config = admin.config.clone();
    config.dbname(database);
    connect(&config, &admin.connector, context).await
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
    let client = locked(admin, tenant).await?;
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
    let closed = isolation::close_cluster_metadata(admin, tenant).await;
    // The lock goes with the connection, once the last step is done.
    drop(client);
    closed
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
    let lock = locked(admin, tenant).await?;
    let config = tenant_config(admin, tenant, password);
    let mut client = connect(
        &config,
        &admin.connector,
        "connecting to the tenant database",
    )
    .await?;
    let migrated = match migrations.apply_up_to(&mut client, target).await {
        Ok(applied) => Ok(applied.to),
        Err(MigrationError::Database(e)) => Err(classify("migrating the tenant database", &e)),
        Err(other) => Err(ProvisionError::Permanent(other.to_string())),
    };
    drop(lock);
    migrated
}

/// Gives the tenant role a new password.
pub async fn set_password(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    password: &SecretString,
) -> Result<(), ProvisionError> {
    let client = locked(admin, tenant).await?;
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

/// Drops the tenant's database (or keeps it renamed `<database>_deleted_<unix time>`,
/// owned by the admin) and its role. Sessions still open on the database are ended first.
pub async fn teardown(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    keep_database: bool,
) -> Result<(), ProvisionError> {
    teardown_keeping(admin, tenant, keep_database.then_some(DELETED)).await
}

/// What a kept database of a deletion is renamed with: `<database>_deleted_<unix time>`.
const DELETED: &str = "deleted";
/// What the source database of a move is renamed with: `<database>_moved_<unix time>`;
/// dropped once `--move-retain-hours` have passed.
pub const MOVED: &str = "moved";

/// [`teardown`], keeping the database renamed `<database>_<word>_<unix time>` when
/// `keep` names the word.
pub async fn teardown_keeping(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    keep: Option<&str>,
) -> Result<(), ProvisionError> {
    let keep_database = keep.is_some();
    let client = locked(admin, tenant).await?;
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
                let owner = admin_session_in(
                    admin,
                    &tenant.database,
                    "connecting to the tenant database as admin",
                )
                .await?;
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
                    ident(&kept_name(&tenant.database, keep.unwrap_or(DELETED)))
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
                let other = admin_session_in(
                    admin,
                    &database,
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
fn kept_name(database: &str, word: &str) -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let suffix = format!("_{word}_{seconds}");
    let keep = database.len().min(63 - suffix.len());
    format!("{}{suffix}", &database[..keep])
}
