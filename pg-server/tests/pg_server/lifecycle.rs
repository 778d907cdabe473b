//! Temporary servers: start, query, stop, restart, drop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use silo_pg_server::{PgServer, PgServerError, PgServerOptions, start_many};

use crate::support::{TestResult, port_accepts, postmaster_pid, process_alive, select_one, show};

#[tokio::test]
async fn two_servers_start_concurrently_and_answer_queries() -> TestResult {
    let servers = start_many(2, PgServerOptions::for_tests()).await?;
    assert_eq!(servers.len(), 2);
    assert_ne!(servers[0].port(), servers[1].port());
    assert_ne!(servers[0].data_dir(), servers[1].data_dir());
    for server in &servers {
        assert!(server.is_running());
        assert_eq!(server.host(), "127.0.0.1");
        assert_eq!(server.superuser(), "postgres");
        assert_eq!(select_one(server, "postgres").await?, 1);
        assert_eq!(show(server, "fsync").await?, "off");
        assert_eq!(show(server, "synchronous_commit").await?, "off");
        assert_eq!(show(server, "full_page_writes").await?, "off");
        assert_eq!(show(server, "max_connections").await?, "200");
        assert_eq!(show(server, "listen_addresses").await?, "127.0.0.1");
        assert_eq!(show(server, "server_encoding").await?, "UTF8");
    }
    Ok(())
}

#[tokio::test]
async fn unique_databases_are_fresh_and_reachable_by_dsn() -> TestResult {
    let server =
        PgServer::start(PgServerOptions::for_tests().with_setting("work_mem", "5MB")).await?;
    assert_eq!(show(&server, "work_mem").await?, "5MB");
    let first = server.create_unique_database("lifecycle test").await?;
    let second = server.create_unique_database("lifecycle test").await?;
    assert_ne!(first, second);

    let client = server.connect(&first).await?;
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    assert_eq!(current, first);
    assert!(matches!(
        server.create_database(&first).await,
        Err(PgServerError::Query { .. })
    ));

    let (client, connection) =
        tokio_postgres::connect(&server.dsn(&second), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    assert_eq!(current, second);
    Ok(())
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_and_restarts_on_the_same_port() -> TestResult {
    let server = Arc::new(PgServer::start(PgServerOptions::for_tests()).await?);
    let port = server.port();
    let client = server.connect("postgres").await?;
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await?;

    server.stop().await?;
    assert!(!server.is_running());
    assert!(!port_accepts(port));
    assert!(matches!(
        server.connect("postgres").await,
        Err(PgServerError::Connect { .. })
    ));
    let gone = client
        .query_one("SELECT 1", &[])
        .await
        .expect_err("the server is stopped");
    assert!(
        gone.is_closed(),
        "the connection was closed, not refused: {gone}"
    );
    server.stop().await?; // stopping a stopped server does nothing

    let shared = Arc::clone(&server);
    tokio::spawn(async move { shared.restart().await }).await??;
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let client = server.connect("postgres").await?;
    let kept: i32 = client.query_one("SELECT v FROM kept", &[]).await?.get(0);
    assert_eq!(kept, 42);

    // Restarting a running server stops it first.
    let old_pid = postmaster_pid(server.data_dir())?;
    server.restart().await?;
    assert_ne!(postmaster_pid(server.data_dir())?, old_pid);
    assert_eq!(server.port(), port);
    assert_eq!(select_one(&server, "postgres").await?, 1);
    Ok(())
}

#[tokio::test]
async fn dropping_a_server_stops_it_and_deletes_its_data() -> TestResult {
    let server = PgServer::start(PgServerOptions::for_tests()).await?;
    let data_dir = server.data_dir().to_path_buf();
    let temp_root = data_dir.parent().ok_or("no parent")?.to_path_buf();
    let port = server.port();
    let pid = postmaster_pid(&data_dir)?;
    assert!(process_alive(pid));
    assert!(port_accepts(port));
    assert!(server.log_path().starts_with(&data_dir));
    assert!(server.log_path().is_file());

    drop(server);
    assert!(
        !data_dir.exists(),
        "{} survived the drop",
        data_dir.display()
    );
    assert!(
        !temp_root.exists(),
        "{} survived the drop",
        temp_root.display()
    );
    assert!(!process_alive(pid), "postmaster {pid} survived the drop");
    assert!(!port_accepts(port), "port {port} still accepts connections");
    Ok(())
}

#[tokio::test]
async fn dropping_a_stopped_server_is_quick() -> TestResult {
    let server = PgServer::start(PgServerOptions::for_tests()).await?;
    let data_dir = server.data_dir().to_path_buf();
    server.stop().await?;
    let started = Instant::now();
    drop(server);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!data_dir.exists());
    Ok(())
}

#[tokio::test]
async fn a_failed_start_reports_the_end_of_the_server_log() -> TestResult {
    let options = PgServerOptions::for_tests().with_setting("shared_buffers", "plenty");
    match PgServer::start(options).await {
        Err(PgServerError::StartFailed { log_tail, .. }) => {
            assert!(log_tail.contains("shared_buffers"), "log tail: {log_tail}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_taken_port_is_reported() -> TestResult {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let options = PgServerOptions {
        port: Some(port),
        ..PgServerOptions::for_tests()
    };
    match PgServer::start(options).await {
        Err(PgServerError::StartFailed {
            log_tail, port: p, ..
        }) => {
            assert_eq!(p, port);
            assert!(log_tail.contains("could not bind"), "log tail: {log_tail}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_chosen_port_is_used() -> TestResult {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let options = PgServerOptions {
        port: Some(port),
        ..PgServerOptions::for_tests()
    };
    let server = PgServer::start(options).await?;
    assert_eq!(server.port(), port);
    assert_eq!(select_one(&server, "postgres").await?, 1);
    Ok(())
}

#[tokio::test]
async fn impossible_options_are_refused() {
    let persistent = PgServerOptions::persistent("/nonexistent/silo");
    assert!(matches!(
        start_many(2, persistent).await,
        Err(PgServerError::InvalidOptions(_))
    ));
    let no_connections = PgServerOptions {
        max_connections: 0,
        ..PgServerOptions::for_tests()
    };
    assert!(matches!(
        PgServer::start(no_connections).await,
        Err(PgServerError::InvalidOptions(_))
    ));
}
