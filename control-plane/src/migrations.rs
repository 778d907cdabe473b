//! Versioned, checksummed SQL migrations (`migrations/catalog`, `migrations/tenant`), compiled
//! into the binary and applied in version order, each in its own transaction.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_postgres::Client;

include!(concat!(env!("OUT_DIR"), "/embedded_migrations.rs"));

/// Advisory lock key held while a database is migrated (advisory locks are per database).
const MIGRATION_LOCK_KEY: i64 = 0x5110_0003;

#[derive(Debug, Error)]
pub enum MigrationError {
    #[error("migration file {0:?} is not named V<version>__<name>.sql")]
    BadFileName(String),
    #[error("two migration files have version {0}")]
    DuplicateVersion(i64),
    #[error(
        "migration {version} ({name}) was changed after it was applied: recorded checksum {recorded}, file checksum {current}; add a new migration instead of editing an applied one"
    )]
    ChecksumMismatch {
        version: i64,
        name: String,
        recorded: String,
        current: String,
    },
    #[error("the database is at schema version {0}, newer than this build knows ({1})")]
    DatabaseAhead(i64, i64),
    #[error("migration {version} ({name}) failed: {source}")]
    Apply {
        version: i64,
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migration bookkeeping failed: {0}")]
    Database(#[from] tokio_postgres::Error),
}

#[derive(Clone, Debug)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: &'static str,
    pub checksum: String,
}

/// An ordered set of migrations.
#[derive(Clone, Debug)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
}

/// What `apply` did: the schema version before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub from: i64,
    pub to: i64,
}

impl MigrationSet {
    pub fn catalog() -> Result<Self, MigrationError> {
        Self::from_files(CATALOG_MIGRATIONS)
    }

    pub fn tenant() -> Result<Self, MigrationError> {
        Self::from_files(TENANT_MIGRATIONS)
    }

    pub fn from_files(files: &[(&str, &'static str)]) -> Result<Self, MigrationError> {
        let mut migrations = files
            .iter()
            .map(|(file, sql)| {
                let (version, name) = parse_file_name(file)?;
                Ok(Migration {
                    version,
                    name,
                    sql,
                    checksum: checksum(sql),
                })
            })
            .collect::<Result<Vec<_>, MigrationError>>()?;
        migrations.sort_by_key(|m| m.version);
        if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(MigrationError::DuplicateVersion(pair[0].version));
        }
        Ok(Self { migrations })
    }

    pub fn latest_version(&self) -> i64 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// Applies what the database does not have yet, under a per-database advisory lock so two
    /// processes never migrate the same database at once. Refuses if an applied migration's
    /// file changed.
    pub async fn apply(&self, client: &mut Client) -> Result<Applied, MigrationError> {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        let result = self.apply_locked(client).await;
        let unlock = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await;
        let applied = result?;
        unlock?;
        Ok(applied)
    }

    async fn apply_locked(&self, client: &mut Client) -> Result<Applied, MigrationError> {
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
        for migration in self.migrations.iter().filter(|m| m.version > from) {
            let tx = client.transaction().await?;
            let wrap = |source| MigrationError::Apply {
                version: migration.version,
                name: migration.name.clone(),
                source,
            };
            tx.batch_execute(migration.sql).await.map_err(wrap)?;
            tx.execute(
                "INSERT INTO silo_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &migration.checksum],
            )
            .await?;
            tx.commit().await.map_err(wrap)?;
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
}
