//! The process-wide fleet; each `#[tokio::test]` has its own runtime, so these tests also
//! show that the servers outlive the runtime that started them.

use silo_pg_server::shared_servers;

use crate::support::{TestResult, select_one};

#[tokio::test]
async fn the_shared_fleet_is_started_once_and_grows() -> TestResult {
    let two = shared_servers(2).await?;
    let again = shared_servers(2).await?;
    let ports: Vec<u16> = two.iter().map(|s| s.port()).collect();
    assert_eq!(ports, again.iter().map(|s| s.port()).collect::<Vec<_>>());

    let three = shared_servers(3).await?;
    assert_eq!(three.len(), 3);
    assert_eq!(
        ports[..],
        three.iter().map(|s| s.port()).collect::<Vec<_>>()[..2]
    );
    assert!(!ports.contains(&three[2].port()));
    for server in three {
        let database = server.create_unique_database("fleet").await?;
        assert_eq!(select_one(server, &database).await?, 1);
    }
    Ok(())
}

#[tokio::test]
async fn shared_servers_serve_every_test_runtime() -> TestResult {
    let servers = shared_servers(1).await?;
    let database = servers[0].create_unique_database("fleet").await?;
    assert_eq!(select_one(servers[0], &database).await?, 1);
    Ok(())
}
