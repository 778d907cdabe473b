//! Persistent data directories: created once, reused by later starts, never deleted.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use silo_pg_server::{PgServer, PgServerError, PgServerOptions};

use crate::support::TestResult;

/// A fresh directory the `postgres` OS user can traverse (tests may run as root).
fn open_temp_dir() -> Result<(tempfile::TempDir, PathBuf), Box<dyn std::error::Error + Send + Sync>>
{
    let parent = tempfile::tempdir()?;
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755))?;
    let dir = parent.path().join("pgdata");
    Ok((parent, dir))
}

#[tokio::test]
async fn a_persistent_data_dir_is_reused() -> TestResult {
    let (_parent, dir) = open_temp_dir()?;

    let server = PgServer::start(PgServerOptions::persistent(&dir)).await?;
    assert_eq!(server.data_dir(), dir);
    let client = server.connect("postgres").await?;
    client
        .batch_execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hello')")
        .await?;
    server.stop().await?;
    drop(server);
    assert!(dir.join("PG_VERSION").is_file());

    let server = PgServer::start(PgServerOptions::persistent(&dir)).await?;
    let client = server.connect("postgres").await?;
    let body: String = client
        .query_one("SELECT body FROM notes", &[])
        .await?
        .get(0);
    assert_eq!(body, "hello");
    client
        .batch_execute("INSERT INTO notes VALUES ('again')")
        .await?;
    // Dropping a running persistent server stops it and keeps its data.
    drop(client);
    drop(server);
    assert!(dir.join("PG_VERSION").is_file());

    let server = PgServer::start(PgServerOptions::persistent(&dir)).await?;
    let client = server.connect("postgres").await?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM notes", &[])
        .await?
        .get(0);
    assert_eq!(count, 2);
    Ok(())
}

#[tokio::test]
async fn a_directory_holding_something_else_is_refused() -> TestResult {
    let (_parent, dir) = open_temp_dir()?;
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("precious.txt"), "not a database")?;
    match PgServer::start(PgServerOptions::persistent(&dir)).await {
        Err(PgServerError::NotADataDir { path }) => assert_eq!(path, dir),
        other => panic!("expected NotADataDir, got {other:?}"),
    }
    assert!(dir.join("precious.txt").is_file());
    Ok(())
}

#[tokio::test]
async fn a_data_dir_the_postgres_user_cannot_reach_is_refused_when_root() -> TestResult {
    let closed = tempfile::tempdir()?;
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700))?;
    let dir = closed.path().join("pgdata");
    if !nix::unistd::Uid::effective().is_root() {
        // Without root, PostgreSQL runs as us and reaches what we reach: the same closed
        // directory must then be accepted, which is what is checked instead of passing.
        let server = PgServer::start(PgServerOptions::persistent(&dir)).await?;
        assert_eq!(server.data_dir(), dir);
        server.stop().await?;
        return Ok(());
    }
    match PgServer::start(PgServerOptions::persistent(&dir)).await {
        Err(PgServerError::NotTraversable { blocking, user, .. }) => {
            assert_eq!(blocking, closed.path());
            assert_eq!(user, "postgres");
        }
        other => panic!("expected NotTraversable, got {other:?}"),
    }
    Ok(())
}
