//! What a tenant move does on the fleet servers: closing the source database to the tenant
//! role once its last statement has ended, copying the database with PostgreSQL's own
//! `pg_dump | pg_restore`, and comparing the row counts of every table on both sides.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use silo_tls::postgres::{PgTls, RootCerts};
use tokio_postgres::config::Host;

use super::bootstrap::{admin_session, admin_session_in, classify, ident};
use super::{AdminAccess, ProvisionError, TenantSpec};

/// `pg_dump` and `pg_restore`.
#[derive(Clone, Debug)]
pub struct PgTools {
    pg_dump: PathBuf,
    pg_restore: PathBuf,
}

impl PgTools {
    /// The tools in `dir`; without one, `pg_dump` on the `PATH`, else the newest
    /// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
    ///
    /// # Errors
    /// `Permanent` when neither is found.
    pub fn find(dir: Option<&Path>) -> Result<Self, ProvisionError> {
        let in_dir = |dir: &Path| Self {
            pg_dump: dir.join("pg_dump"),
            pg_restore: dir.join("pg_restore"),
        };
        if let Some(dir) = dir {
            return Ok(in_dir(dir));
        }
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path).find(|dir| dir.join("pg_dump").is_file())
        });
        if let Some(dir) = on_path {
            return Ok(in_dir(&dir));
        }
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("pg_dump").is_file().then_some((version, bin))
            })
            .max_by_key(|(version, _)| *version);
        match newest {
            Some((_, bin)) => Ok(in_dir(&bin)),
            None => Err(ProvisionError::Permanent(
                "pg_dump not found: set --pg-bin-dir (moves copy with pg_dump | pg_restore)".into(),
            )),
        }
    }
}

impl PgTools {
    /// Runs both tools with `--version`, so a move that could not copy stops before the
    /// tenant's calls are held.
    ///
    /// # Errors
    /// `Permanent` naming the tool that does not run.
    pub async fn check(&self) -> Result<(), ProvisionError> {
        for tool in [&self.pg_dump, &self.pg_restore] {
            let ran = tokio::process::Command::new(tool)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if !ran.is_ok_and(|status| status.success()) {
                return Err(ProvisionError::Permanent(format!(
                    "{} does not run (set --pg-bin-dir)",
                    tool.display()
                )));
            }
        }
        Ok(())
    }
}

/// libpq's environment for `config`'s login to `database`, with `tls`.
fn libpq_env(
    config: &tokio_postgres::Config,
    database: &str,
    tls: &PgTls,
) -> Vec<(&'static str, OsString)> {
    let mut env = vec![("PGDATABASE", OsString::from(database))];
    if let Some(host) = config.get_hosts().first() {
        let host = match host {
            Host::Tcp(name) => OsString::from(name),
            Host::Unix(path) => path.clone().into_os_string(),
        };
        env.push(("PGHOST", host));
    }
    if let Some(port) = config.get_ports().first() {
        env.push(("PGPORT", port.to_string().into()));
    }
    if let Some(user) = config.get_user() {
        env.push(("PGUSER", user.into()));
    }
    if let Some(password) = config.get_password() {
        env.push((
            "PGPASSWORD",
            String::from_utf8_lossy(password).into_owned().into(),
        ));
    }
    env.push(("PGSSLMODE", tls.mode.as_str().into()));
    match &tls.root_certs {
        Some(RootCerts::File(path)) => env.push(("PGSSLROOTCERT", path.clone().into_os_string())),
        Some(RootCerts::System) => env.push(("PGSSLROOTCERT", "system".into())),
        None => {}
    }
    env
}

/// Copies the tenant's database from `source` to the database of the same name on
/// `target`, which must be empty: `pg_dump --format=custom | pg_restore --exit-on-error
/// --single-transaction`, both as the servers' admins. Owners and privileges come along
/// (the tenant role exists on both servers).
///
/// # Errors
/// `Transient` when a server could not be reached; `Permanent` with the tool's first
/// error line otherwise.
pub async fn copy_database(
    tools: &PgTools,
    tenant: &TenantSpec,
    source: &AdminAccess,
    target: &AdminAccess,
    schema_only: bool,
) -> Result<(), ProvisionError> {
    let spawn_error = |tool: &Path, e: std::io::Error| {
        ProvisionError::Permanent(format!("cannot run {}: {e}", tool.display()))
    };
    let mut dump = tokio::process::Command::new(&tools.pg_dump)
        .args(["--format=custom", "--no-password"])
        .args(schema_only.then_some("--schema-only"))
        .envs(libpq_env(&source.config, &tenant.database, &source.tls))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(&tools.pg_dump, e))?;
    let dumped: Stdio = dump
        .stdout
        .take()
        .and_then(|stdout| stdout.try_into().ok())
        .ok_or_else(|| ProvisionError::Permanent("pg_dump's output cannot be piped".into()))?;
    let restore = tokio::process::Command::new(&tools.pg_restore)
        .args(["--exit-on-error", "--single-transaction", "--no-password"])
        .arg(format!("--dbname={}", tenant.database))
        .envs(libpq_env(&target.config, &tenant.database, &target.tls))
        .stdin(dumped)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(&tools.pg_restore, e))?;
    let (dumped, restored) = tokio::join!(dump.wait_with_output(), restore.wait_with_output());
    let dumped = dumped.map_err(|e| ProvisionError::Transient(format!("pg_dump: {e}")))?;
    let restored = restored.map_err(|e| ProvisionError::Transient(format!("pg_restore: {e}")))?;
    for (tool, output) in [("pg_dump", &dumped), ("pg_restore", &restored)] {
        if !output.status.success() {
            return Err(tool_failure(tool, &output.stderr));
        }
    }
    Ok(())
}

/// A failed tool's error: its first line that says `error`, transient when it could not
/// reach a server.
fn tool_failure(tool: &str, stderr: &[u8]) -> ProvisionError {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .find(|line| line.contains("error"))
        .or_else(|| text.lines().next())
        .unwrap_or("failed without a message")
        .trim();
    let message = format!("{tool}: {line}");
    if text.contains("could not connect") || text.contains("Connection refused") {
        ProvisionError::Transient(message)
    } else {
        ProvisionError::Permanent(message)
    }
}

/// Rows in every table of the tenant's database (schema-qualified name → count), read as
/// the server's admin.
///
/// # Errors
/// As [`classify`] says for the statements.
pub async fn table_counts(
    admin: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<BTreeMap<String, i64>, ProvisionError> {
    let client = inside(admin, tenant).await?;
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(run("listing the tenant's tables"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut counts = BTreeMap::new();
    for table in tables {
        // Each name comes from format('%I.%I'): quoted as PostgreSQL quotes identifiers.
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(run("counting a table's rows"))?
            .get(0);
        counts.insert(table, count);
    }
    Ok(counts)
}

/// Closes the tenant's source database to its role: waits (up to `grace`) until none of
/// the role's sessions runs a statement, revokes CONNECT and ends the role's sessions,
/// then waits until they are gone. Idempotent.
///
/// # Errors
/// As [`classify`] says; `Transient` if sessions outlive the wait.
pub async fn close_source(
    admin: &AdminAccess,
    tenant: &TenantSpec,
    grace: Duration,
) -> Result<(), ProvisionError> {
    let client = admin_session(admin).await?;
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);
    let busy = "SELECT count(*) FROM pg_stat_activity
                WHERE datname = $1 AND usename = $2 AND state NOT IN ('idle')";
    let until = tokio::time::Instant::now() + grace;
    loop {
        let running: i64 = client
            .query_one(busy, &[&tenant.database, &tenant.role])
            .await
            .map_err(run("looking at the tenant's sessions"))?
            .get(0);
        if running == 0 || tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client
        .batch_execute(&format!(
            "REVOKE CONNECT ON DATABASE {} FROM {}",
            ident(&tenant.database),
            ident(&tenant.role)
        ))
        .await
        .map_err(run("closing the source database to the tenant role"))?;
    let sessions = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                    WHERE datname = $1 AND usename = $2";
    // A session that passed its CONNECT check just before the REVOKE shows in
    // pg_stat_activity only once its start-up is done: none must be seen twice, a
    // moment apart, before the source is taken as closed.
    let mut quiet = 0;
    for _ in 0..200 {
        let left: i64 = client
            .query_one(sessions, &[&tenant.database, &tenant.role])
            .await
            .map_err(run("ending the tenant's sessions on the source"))?
            .get(0);
        quiet = if left == 0 { quiet + 1 } else { 0 };
        if quiet == 2 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(if left == 0 { 50 } else { 10 })).await;
    }
    Err(ProvisionError::Transient(
        "the tenant's sessions on the source database did not end".into(),
    ))
}

/// Opens the source database to the tenant role again (a move given up before its
/// switch). Idempotent.
///
/// # Errors
/// As [`classify`] says.
pub async fn reopen_source(admin: &AdminAccess, tenant: &TenantSpec) -> Result<(), ProvisionError> {
    let client = admin_session(admin).await?;
    client
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {} TO {}",
            ident(&tenant.database),
            ident(&tenant.role)
        ))
        .await
        .map_err(|e| classify("opening the source database to the tenant role again", &e))
}

/// The publication a move by replication makes in the source database.
const PUBLICATION: &str = "silo_move";

/// The subscription (and the source's replication slot) of the tenant's move: unique on
/// both servers, as database names are.
fn subscription(tenant: &TenantSpec) -> String {
    format!("silo_move_{}", tenant.database)
}

/// The admin's session in the tenant's database.
async fn inside(
    admin: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<tokio_postgres::Client, ProvisionError> {
    admin_session_in(
        admin,
        &tenant.database,
        "connecting to the tenant database as admin",
    )
    .await
}

/// The server's `wal_level` (`replica`, `logical`, ...).
///
/// # Errors
/// As [`classify`] says.
pub async fn wal_level(admin: &AdminAccess) -> Result<String, ProvisionError> {
    let client = admin_session(admin).await?;
    Ok(client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| classify("reading wal_level", &e))?
        .get(0))
}

/// A value in a libpq connection string: single-quoted, `\` and `'` escaped.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// libpq's connection string for `config`'s login to `database` with `tls`, for a
/// subscription.
fn conninfo(config: &tokio_postgres::Config, database: &str, tls: &PgTls) -> String {
    libpq_env(config, database, tls)
        .into_iter()
        .filter_map(|(name, value)| {
            let key = match name {
                "PGHOST" => "host",
                "PGPORT" => "port",
                "PGUSER" => "user",
                "PGPASSWORD" => "password",
                "PGDATABASE" => "dbname",
                "PGSSLMODE" => "sslmode",
                "PGSSLROOTCERT" => "sslrootcert",
                _ => return None,
            };
            Some(format!(
                "{key}={}",
                conninfo_value(&value.to_string_lossy())
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Publishes every table of the source database and subscribes the target database to it
/// (the initial copy starts at once). Idempotent.
///
/// # Errors
/// As [`classify`] says.
pub async fn subscribe(
    source: &AdminAccess,
    target: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<(), ProvisionError> {
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);
    let publisher = inside(source, tenant).await?;
    let published = publisher
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&PUBLICATION],
        )
        .await
        .map_err(run("looking up the move's publication"))?
        .is_some();
    if !published {
        publisher
            .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES"))
            .await
            .map_err(run("publishing the source database"))?;
    }
    let subscriber = inside(target, tenant).await?;
    let name = subscription(tenant);
    let subscribed = subscriber
        .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&name])
        .await
        .map_err(run("looking up the move's subscription"))?
        .is_some();
    if !subscribed {
        let info = conninfo(&source.config, &tenant.database, &source.tls);
        subscriber
            .batch_execute(&format!(
                // synchronous_commit: the apply worker's commits are flushed at once, so
                // it confirms them to the source right away; with the default (off) the
                // confirmation waits for the WAL writer and the worker's next wake-up
                // (about 0.6 s), and the tenant's calls are held meanwhile.
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {PUBLICATION} \
                 WITH (synchronous_commit = 'on')",
                ident(&name),
                literal(&info)
            ))
            .await
            .map_err(run("subscribing the target database"))?;
    }
    Ok(())
}

/// The subscription's initial copy: tables done (`ready`) and in all.
///
/// # Errors
/// As [`classify`] says.
pub async fn initial_copy_progress(
    target: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<(i64, i64), ProvisionError> {
    let client = inside(target, tenant).await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE r.srsubstate = 'r'), count(*)
             FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
             WHERE s.subname = $1",
            &[&subscription(tenant)],
        )
        .await
        .map_err(|e| classify("looking at the initial copy", &e))?;
    Ok((row.get(0), row.get(1)))
}

/// How far (bytes of WAL) the target's confirmed position is behind the source's
/// current one; `None` while the slot does not exist.
///
/// # Errors
/// As [`classify`] says.
pub async fn replication_lag(
    source: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<Option<i64>, ProvisionError> {
    let client = admin_session(source).await?;
    Ok(client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&subscription(tenant)],
        )
        .await
        .map_err(|e| classify("reading the replication lag", &e))?
        .and_then(|row| row.get(0)))
}

/// Bytes of the tenant's database on the server.
///
/// # Errors
/// As [`classify`] says.
pub async fn database_bytes(
    admin: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<i64, ProvisionError> {
    let client = admin_session(admin).await?;
    Ok(client
        .query_one("SELECT pg_database_size($1::text)", &[&tenant.database])
        .await
        .map_err(|e| classify("reading the database size", &e))?
        .get(0))
}

/// Waits (up to `within`) until the target has confirmed every change the source wrote
/// so far (called once the source is closed); then sets the target's sequences to the
/// source's values. Returns whether it caught up.
///
/// # Errors
/// As [`classify`] says.
pub async fn catch_up(
    source: &AdminAccess,
    target: &AdminAccess,
    tenant: &TenantSpec,
    within: Duration,
) -> Result<bool, ProvisionError> {
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);
    let publisher = inside(source, tenant).await?;
    let slot = subscription(tenant);
    let until = tokio::time::Instant::now() + within;
    // Everything the tenant wrote is before this point: its sessions are gone. Not
    // pg_current_wal_lsn(): that is where WAL has been *written* to, and with
    // synchronous_commit = off (common, and the test servers') a commit returns before its
    // record is written, so the tenant's last commits can lie beyond it. A WAL record of
    // our own comes after every commit record already inserted; committing it with
    // synchronous_commit = on writes and flushes the WAL up to it now (instead of within
    // wal_writer_delay), so the subscriber can confirm it while the calls are held.
    publisher
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
        .await
        .map_err(run("marking the source's WAL position"))?;
    let end: String = publisher
        .query_one(
            "SELECT pg_logical_emit_message(true, 'silo-move', '')::text",
            &[],
        )
        .await
        .map_err(run("marking the source's WAL position"))?
        .get(0);
    publisher
        .batch_execute("COMMIT")
        .await
        .map_err(run("marking the source's WAL position"))?;
    loop {
        let caught_up: Option<bool> = publisher
            .query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = $1",
                &[&slot, &end],
            )
            .await
            .map_err(run("reading the replication slot"))?
            .and_then(|row| row.get(0));
        if caught_up == Some(true) {
            break;
        }
        if tokio::time::Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sequences = publisher
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
             WHERE last_value IS NOT NULL",
            &[],
        )
        .await
        .map_err(run("reading the source's sequences"))?;
    let subscriber = inside(target, tenant).await?;
    for row in sequences {
        let (name, value): (String, i64) = (row.get(0), row.get(1));
        subscriber
            .execute(
                "SELECT setval($1::text::regclass, $2, true)",
                &[&name, &value],
            )
            .await
            .map_err(run("setting a sequence on the target"))?;
    }
    Ok(true)
}

/// Removes what a move by replication made: the subscription on the target (detached
/// from its slot first, so dropping it never needs the source), the slot and the
/// publication on the source. Idempotent; a database that is gone has nothing to remove.
/// `target` is `None` when the target server was never made (an RDS instance that did
/// not come up): only the source is cleaned.
///
/// # Errors
/// As [`classify`] says; `Transient` while the slot is still in use.
pub async fn unsubscribe(
    source: &AdminAccess,
    target: Option<&AdminAccess>,
    tenant: &TenantSpec,
) -> Result<(), ProvisionError> {
    let run = |context: &'static str| move |e: tokio_postgres::Error| classify(context, &e);
    let name = subscription(tenant);
    let subscriber = match target {
        Some(target) => inside_if_exists(target, tenant).await?,
        None => None,
    };
    if let Some(subscriber) = subscriber {
        let exists = subscriber
            .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&name])
            .await
            .map_err(run("looking up the move's subscription"))?
            .is_some();
        if exists {
            for statement in [
                format!("ALTER SUBSCRIPTION {} DISABLE", ident(&name)),
                format!("ALTER SUBSCRIPTION {} SET (slot_name = NONE)", ident(&name)),
                format!("DROP SUBSCRIPTION {}", ident(&name)),
            ] {
                subscriber
                    .batch_execute(&statement)
                    .await
                    .map_err(run("dropping the move's subscription"))?;
            }
        }
    }
    // A logical slot can only be dropped from the database it was made in.
    let Some(publisher) = inside_if_exists(source, tenant).await? else {
        return Ok(());
    };
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1";
    for _ in 0..300 {
        publisher
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&name],
            )
            .await
            .map_err(run("dropping the move's replication slot"))?;
        let left: i64 = publisher
            .query_one(slots, &[&name])
            .await
            .map_err(run("looking up the move's replication slot"))?
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left: i64 = publisher
        .query_one(slots, &[&name])
        .await
        .map_err(run("looking up the move's replication slot"))?
        .get(0);
    if left > 0 {
        return Err(ProvisionError::Transient(
            "the move's replication slot is still in use".into(),
        ));
    }
    publisher
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {PUBLICATION}"))
        .await
        .map_err(run("dropping the move's publication"))?;
    Ok(())
}

/// The admin's session in the tenant's database; `None` when the database does not exist
/// (there is nothing in it to remove).
async fn inside_if_exists(
    admin: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<Option<tokio_postgres::Client>, ProvisionError> {
    let client = admin_session(admin).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&tenant.database],
        )
        .await
        .map_err(|e| classify("looking up the tenant database", &e))?
        .is_some();
    drop(client);
    if !exists {
        return Ok(None);
    }
    inside(admin, tenant).await.map(Some)
}

/// Whether the target database has the move's subscription.
///
/// # Errors
/// As [`classify`] says.
pub async fn subscription_exists(
    target: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<bool, ProvisionError> {
    let client = inside(target, tenant).await?;
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1",
            &[&subscription(tenant)],
        )
        .await
        .map_err(|e| classify("looking up the move's subscription", &e))?
        .is_some())
}

/// Tables of the tenant's database without a replica identity (no primary key and
/// `REPLICA IDENTITY DEFAULT`, or `NOTHING`): with a publication of every table, UPDATE and
/// DELETE on them fail. At most ten names.
///
/// # Errors
/// As [`classify`] says.
pub async fn tables_without_replica_identity(
    admin: &AdminAccess,
    tenant: &TenantSpec,
) -> Result<Vec<String>, ProvisionError> {
    let client = inside(admin, tenant).await?;
    Ok(client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
               AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
                    SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
             ORDER BY 1 LIMIT 10",
            &[],
        )
        .await
        .map_err(|e| classify("looking for tables without a replica identity", &e))?
        .iter()
        .map(|row| row.get(0))
        .collect())
}
