//! Versioned, checksummed SQL migrations (`migrations/catalog`, `migrations/tenant`), compiled
//! into the binary and applied in version order, each in its own transaction.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_postgres::Client;

include!(concat!(env!("OUT_DIR"), "/embedded_migrations.rs"));

/// Advisory lock key held while a database is migrated (advisory locks are per database).
const MIGRATION_LOCK_KEY: i64 = 0x5110_0003;

/// Why a migration set could not be loaded or applied; the first error stops the run and
/// leaves the database at the last migration that committed.
#[derive(Debug, Error)]
pub enum MigrationError {
    /// A file is not named `V<version>__<name>.sql` with a positive version and a non-empty
    /// name.
    #[error("migration file {0:?} is not named V<version>__<name>.sql")]
    BadFileName(String),
    /// Two files of one set share a version number.
    #[error("two migration files have version {0}")]
    DuplicateVersion(i64),
    /// A migration the database recorded as applied has a different SHA-256 now: someone
    /// edited an applied file.
    #[error(
        "migration {version} ({name}) was changed after it was applied: recorded checksum {recorded}, file checksum {current}; add a new migration instead of editing an applied one"
    )]
    ChecksumMismatch {
        /// Version of the edited migration.
        version: i64,
        /// Name of the edited migration.
        name: String,
        /// SHA-256 (hex) recorded in `silo_schema_migrations` when it was applied.
        recorded: String,
        /// SHA-256 (hex) of the file in this build.
        current: String,
    },
    /// The database has applied a version this build does not have (`(applied version,
    /// latest version of this build)`): an older binary met a newer database.
    #[error("the database is at schema version {0}, newer than this build knows ({1})")]
    DatabaseAhead(i64, i64),
    /// A migration's SQL failed; it was rolled back (unless marked `no-transaction`).
    #[error("migration {version} ({name}) failed: {reason}")]
    Apply {
        /// Version of the failing migration.
        version: i64,
        /// Name of the failing migration.
        name: String,
        /// PostgreSQL's message and SQLSTATE.
        reason: String,
    },
    /// Taking the advisory lock, reading or writing `silo_schema_migrations` failed.
    #[error("migration bookkeeping failed: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// A `-- silo:` marker line is malformed, or requires a version that is not earlier
    /// than its own file.
    #[error("migration {file}: {message}")]
    BadMarker {
        /// The migration's file name.
        file: String,
        /// What is wrong with the marker.
        message: String,
    },
    /// A migrations directory (`from_dir`) or one of its files could not be read.
    #[error("reading migrations from {path}: {source}")]
    Read {
        /// The directory being read.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One `V<version>__<name>.sql` file, parsed.
#[derive(Clone, Debug)]
pub struct Migration {
    /// The `<version>` of the file name; positive, unique in its set, applied in increasing
    /// order.
    pub version: i64,
    /// The `<name>` of the file name (after `__`, without `.sql`).
    pub name: String,
    /// The file's SQL, run with a simple-query batch.
    pub sql: String,
    /// SHA-256 of `sql` in hex, recorded when applied and checked on every later run.
    pub checksum: String,
    /// `-- silo:requires-all-tenants-at N`: a contract step that may only run once every
    /// tenant is at version N or later (expand / contract).
    pub requires_all_at: Option<i64>,
    /// `-- silo:no-transaction`: run outside a transaction (e.g. CREATE INDEX CONCURRENTLY;
    /// then the file must hold one statement).
    pub no_transaction: bool,
}

const REQUIRES_MARKER: &str = "-- silo:requires-all-tenants-at";
const NO_TRANSACTION_MARKER: &str = "-- silo:no-transaction";

/// An ordered set of migrations.
#[derive(Clone, Debug)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
}

/// What `apply` did: the schema version before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Highest version applied before the call (0 for a fresh database).
    pub from: i64,
    /// Highest version applied after the call.
    pub to: i64,
}

impl MigrationSet {
    /// The catalog's own migrations (`migrations/catalog`), compiled in.
    pub fn catalog() -> Result<Self, MigrationError> {
        Self::from_files(CATALOG_MIGRATIONS)
    }

    /// The compiled-in tenant migrations (`migrations/tenant`), applied to every silo.
    pub fn tenant() -> Result<Self, MigrationError> {
        Self::from_files(TENANT_MIGRATIONS)
    }

    /// The `V<version>__<name>.sql` files of a directory (used instead of the compiled-in
    /// tenant migrations when configured).
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, MigrationError> {
        let read = |source| MigrationError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read)? {
            let path = entry.map_err(read)?.path();
            if path.extension().is_some_and(|ext| ext == "sql") {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| MigrationError::BadFileName(path.display().to_string()))?
                    .to_owned();
                let sql = std::fs::read_to_string(&path).map_err(read)?;
                files.push((name, sql));
            }
        }
        Self::from_owned(files)
    }

    /// A set from `(file name, SQL)` pairs; sorts them by version and rejects bad names,
    /// markers and duplicate versions.
    pub fn from_files(files: &[(&str, &str)]) -> Result<Self, MigrationError> {
        Self::from_owned(
            files
                .iter()
                .map(|(name, sql)| ((*name).to_owned(), (*sql).to_owned()))
                .collect(),
        )
    }

    fn from_owned(files: Vec<(String, String)>) -> Result<Self, MigrationError> {
        let mut migrations = files
            .into_iter()
            .map(|(file, sql)| {
                let (version, name) = parse_file_name(&file)?;
                let (requires_all_at, no_transaction) = parse_markers(&file, &sql)?;
                if requires_all_at.is_some_and(|at| at >= version) {
                    return Err(MigrationError::BadMarker {
                        file,
                        message: "a migration can only require an earlier version".into(),
                    });
                }
                Ok(Migration {
                    version,
                    name,
                    checksum: checksum(&sql),
                    sql,
                    requires_all_at,
                    no_transaction,
                })
            })
            .collect::<Result<Vec<_>, MigrationError>>()?;
        migrations.sort_by_key(|m| m.version);
        if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(MigrationError::DuplicateVersion(pair[0].version));
        }
        Ok(Self { migrations })
    }

    /// Version of the last migration, 0 for an empty set.
    pub fn latest_version(&self) -> i64 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// Whether `version` names a migration of this set (0, "no migration", always does).
    pub fn contains_version(&self, version: i64) -> bool {
        version == 0 || self.migrations.iter().any(|m| m.version == version)
    }

    /// The migrations a database at `from` gets on the way to `to`.
    pub fn between(&self, from: i64, to: i64) -> impl Iterator<Item = &Migration> {
        self.migrations
            .iter()
            .filter(move |m| m.version > from && m.version <= to)
    }

    /// Applies what the database does not have yet, under a per-database advisory lock so two
    /// processes never migrate the same database at once. Refuses if an applied migration's
    /// file changed.
    pub async fn apply(&self, client: &mut Client) -> Result<Applied, MigrationError> {
        self.apply_up_to(client, self.latest_version()).await
    }

    /// `apply`, stopping at version `target`.
    pub async fn apply_up_to(
        &self,
        client: &mut Client,
        target: i64,
    ) -> Result<Applied, MigrationError> {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        let result = self.apply_locked(client, target).await;
        let unlock = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await;
        let applied = result?;
        unlock?;
        Ok(applied)
    }

    async fn apply_locked(
        &self,
        client: &mut Client,
        target: i64,
    ) -> Result<Applied, MigrationError> {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS silo_schema_migrations (
                     version    bigint PRIMARY KEY,
                     name       text NOT NULL,
                     checksum   text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        let rows = client
            .query(
                "SELECT version, name, checksum FROM silo_schema_migrations ORDER BY version",
                &[],
            )
            .await?;
        let mut current = 0;
        for row in &rows {
            let version: i64 = row.get(0);
            let recorded: String = row.get(2);
            current = current.max(version);
            match self.migrations.iter().find(|m| m.version == version) {
                Some(m) if m.checksum != recorded => {
                    return Err(MigrationError::ChecksumMismatch {
                        version,
                        name: m.name.clone(),
                        recorded,
                        current: m.checksum.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(MigrationError::DatabaseAhead(
                        version,
                        self.latest_version(),
                    ));
                }
            }
        }
        let from = current;
        for migration in self.between(from, target) {
            let wrap = |source: tokio_postgres::Error| MigrationError::Apply {
                version: migration.version,
                name: migration.name.clone(),
                reason: describe(&source),
            };
            const RECORD: &str =
                "INSERT INTO silo_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";
            let record: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&migration.version, &migration.name, &migration.checksum];
            if migration.no_transaction {
                client.batch_execute(&migration.sql).await.map_err(wrap)?;
                client.execute(RECORD, &record).await?;
            } else {
                let tx = client.transaction().await?;
                tx.batch_execute(&migration.sql).await.map_err(wrap)?;
                tx.execute(RECORD, &record).await?;
                tx.commit().await.map_err(wrap)?;
            }
            current = migration.version;
        }
        Ok(Applied { from, to: current })
    }
}

fn parse_file_name(file: &str) -> Result<(i64, String), MigrationError> {
    let bad = || MigrationError::BadFileName(file.to_owned());
    let stem = file.strip_suffix(".sql").ok_or_else(bad)?;
    let (version, name) = stem
        .strip_prefix('V')
        .and_then(|rest| rest.split_once("__"))
        .ok_or_else(bad)?;
    let version: i64 = version.parse().map_err(|_| bad())?;
    if version <= 0 || name.is_empty() {
        return Err(bad());
    }
    Ok((version, name.to_owned()))
}

/// PostgreSQL's own words for a failed statement (the driver's Display says only "db error").
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

fn parse_markers(file: &str, sql: &str) -> Result<(Option<i64>, bool), MigrationError> {
    let mut requires = None;
    let mut no_transaction = false;
    for line in sql.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(REQUIRES_MARKER) {
            let version = rest.trim().parse().map_err(|_| MigrationError::BadMarker {
                file: file.to_owned(),
                message: format!("`{REQUIRES_MARKER} N` needs a version number"),
            })?;
            requires = Some(version);
        } else if line == NO_TRANSACTION_MARKER {
            no_transaction = true;
        }
    }
    Ok((requires, no_transaction))
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sets_parse_in_order() {
        let catalog = MigrationSet::catalog().unwrap();
        assert!(catalog.latest_version() >= 1);
        let tenant = MigrationSet::tenant().unwrap();
        assert!(tenant.latest_version() >= 1);
    }

    #[test]
    fn file_names_are_checked() {
        assert_eq!(
            parse_file_name("V0002__add_orders.sql").unwrap(),
            (2, "add_orders".into())
        );
        for bad in [
            "0002__x.sql",
            "V2_x.sql",
            "V0__x.sql",
            "Vx__y.sql",
            "V1__.sql",
            "V1__x.txt",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            MigrationSet::from_files(&[("V1__a.sql", "SELECT 1"), ("V01__b.sql", "SELECT 2")]),
            Err(MigrationError::DuplicateVersion(1))
        ));
    }

    #[test]
    fn markers_are_read() {
        let set = MigrationSet::from_files(&[
            ("V1__a.sql", "SELECT 1"),
            (
                "V2__b.sql",
                "-- silo:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c)",
            ),
            (
                "V3__c.sql",
                "-- silo:requires-all-tenants-at 2\nALTER TABLE t DROP COLUMN old",
            ),
        ])
        .unwrap();
        let flags: Vec<_> = set
            .between(0, 3)
            .map(|m| (m.no_transaction, m.requires_all_at))
            .collect();
        assert_eq!(flags, [(false, None), (true, None), (false, Some(2))]);
        assert_eq!(set.between(1, 2).count(), 1);
        assert!(
            MigrationSet::from_files(&[("V2__x.sql", "-- silo:requires-all-tenants-at 2")])
                .is_err()
        );
        assert!(
            MigrationSet::from_files(&[("V2__x.sql", "-- silo:requires-all-tenants-at two")])
                .is_err()
        );
    }
}
