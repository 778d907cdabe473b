//! The dev PostgreSQL server: persistent data under the dev data dir, or, when the OS user
//! PostgreSQL runs as cannot reach that directory (root working under `/root`), under
//! `/var/tmp/silo-dev/`. The port is chosen once and kept in `<data dir>/postgres.port`:
//! the catalog records each tenant's host and port when it is onboarded, so the server
//! must come back on the same port for existing tenants to stay reachable.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use silo_pg_server::{PgServer, PgServerError, PgServerOptions};

pub const CATALOG_DATABASE: &str = "silo_catalog";
const FALLBACK_BASE: &str = "/var/tmp/silo-dev";

pub struct DevPostgres {
    pub server: PgServer,
    /// Set when the data went to the fallback place; the reason, for the banner.
    pub fallback: Option<String>,
}

pub async fn start(data_dir: &Path) -> anyhow::Result<DevPostgres> {
    let port_file = data_dir.join("postgres.port");
    let port = saved_port(&port_file)?;
    // wal_level = logical: tenant moves by logical replication need it on the source.
    let options = |dir: &Path| {
        PgServerOptions {
            port,
            ..PgServerOptions::persistent(dir)
        }
        .with_setting("wal_level", "logical")
    };
    let wanted = data_dir.join("postgres");
    let started = PgServer::start(options(&wanted)).await;
    let (server, fallback) = match started {
        Ok(server) => (server, None),
        Err(error @ PgServerError::NotTraversable { .. }) => {
            let place = fallback_dir(data_dir);
            tracing::warn!(
                error = %error,
                fallback = %place.display(),
                "postgresql cannot reach the data dir; keeping its data in the fallback place"
            );
            std::fs::create_dir_all(FALLBACK_BASE)
                .with_context(|| format!("creating {FALLBACK_BASE}"))?;
            let server = PgServer::start(options(&place)).await.with_context(|| {
                format!(
                    "{error}; the fallback {} did not work either (choose a directory \
                         the postgres user can reach with --data-dir)",
                    place.display()
                )
            })?;
            (server, Some(error.to_string()))
        }
        Err(error) => {
            let hint = match port {
                Some(port) => format!(
                    " on port {port}, the port its tenants were onboarded with (kept in {}); \
                     free the port, or start afresh with another --data-dir",
                    port_file.display()
                ),
                None => String::new(),
            };
            return Err(error).context(format!("starting the local PostgreSQL server{hint}"));
        }
    };
    if port.is_none() {
        std::fs::write(&port_file, server.port().to_string())
            .with_context(|| format!("writing {}", port_file.display()))?;
    }
    let admin = server.connect("postgres").await?;
    let has_catalog = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&CATALOG_DATABASE],
        )
        .await?
        .is_some();
    if !has_catalog {
        admin
            .batch_execute(&format!("CREATE DATABASE {CATALOG_DATABASE}"))
            .await?;
    }
    Ok(DevPostgres { server, fallback })
}

fn saved_port(path: &Path) -> anyhow::Result<Option<u16>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().parse().with_context(|| {
            format!("{} does not hold a port number", path.display())
        })?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// `/var/tmp/silo-dev/<the data dir's path, '/' as '_'>`: one place per dev data dir,
/// surviving reboots, reachable by every user.
fn fallback_dir(data_dir: &Path) -> PathBuf {
    let name: String = data_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Path::new(FALLBACK_BASE).join(name).join("postgres")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_is_one_place_per_data_dir() {
        assert_eq!(
            fallback_dir(Path::new("/root/silo/.silo-dev")),
            Path::new("/var/tmp/silo-dev/root_silo_.silo-dev/postgres")
        );
    }
}
