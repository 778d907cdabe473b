//! Connecting to a [`PgServer`] and creating databases on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use crate::error::PgServerError;
use crate::server::PgServer;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The maintenance database every cluster has.
const ADMIN_DATABASE: &str = "postgres";

/// Longest prefix kept in a generated database name (names end at 63 bytes).
const MAX_PREFIX_LEN: usize = 30;

impl PgServer {
    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn dsn(&self, database: &str) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.superuser(),
            self.host(),
            self.port(),
            percent_encode(database)
        )
    }

    /// Connection settings for `database` as the superuser.
    pub fn config(&self, database: &str) -> Config {
        let mut config = Config::new();
        config
            .host(self.host())
            .port(self.port())
            .user(self.superuser())
            .dbname(database)
            .connect_timeout(CONNECT_TIMEOUT);
        config
    }

    /// Connects to `database` as the superuser; the connection runs on a spawned task
    /// until the client is dropped.
    pub async fn connect(&self, database: &str) -> Result<Client, PgServerError> {
        let (client, connection) =
            self.config(database)
                .connect(NoTls)
                .await
                .map_err(|source| PgServerError::Connect {
                    dsn: self.dsn(database),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgresql test connection ended with an error");
            }
        });
        Ok(client)
    }

    /// Creates the database `name` (any name; it is quoted).
    pub async fn create_database(&self, name: &str) -> Result<(), PgServerError> {
        let client = self.connect(ADMIN_DATABASE).await?;
        let statement = format!("CREATE DATABASE {}", quote_identifier(name));
        client
            .batch_execute(&statement)
            .await
            .map_err(|source| PgServerError::Query { statement, source })
    }

    /// Creates a database no other call in any process has created, named
    /// `<prefix>_<pid>_<counter>_<time>` (prefix cut to letters, digits and `_`), and
    /// returns its name. Meant for one fresh database per test.
    pub async fn create_unique_database(&self, prefix: &str) -> Result<String, PgServerError> {
        let name = unique_name(prefix);
        self.create_database(&name).await?;
        Ok(name)
    }
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(MAX_PREFIX_LEN)
        .collect();
    if clean.is_empty() {
        clean.push_str("db");
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{clean}_{}_{}_{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `name` as a quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_identifiers_and_differ() {
        let a = unique_name("My Test-Suite/ä");
        let b = unique_name("My Test-Suite/ä");
        assert_ne!(a, b);
        assert!(a.starts_with("my_test_suite__"));
        assert!(a.len() <= 63, "{a} is too long for postgres");
        let long = unique_name(&"x".repeat(100));
        assert!(long.len() <= 63, "{long} is too long for postgres");
        assert!(unique_name("").starts_with("db_"));
    }

    #[test]
    fn identifiers_and_urls_are_escaped() {
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(percent_encode("db name/1"), "db%20name%2F1");
    }
}
