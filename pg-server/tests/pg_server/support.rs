//! Helpers shared by the suites.

use std::path::Path;
use std::time::{Duration, Instant};

use silo_pg_server::PgServer;

/// What every test returns.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Runs `SELECT 1` on `database` and returns the value.
pub async fn select_one(
    server: &PgServer,
    database: &str,
) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    let client = server.connect(database).await?;
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

/// A server setting as the server reports it (`SHOW name`).
pub async fn show(
    server: &PgServer,
    name: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let client = server.connect("postgres").await?;
    Ok(client.query_one(&format!("SHOW {name}"), &[]).await?.get(0))
}

/// The postmaster's pid from `postmaster.pid`.
pub fn postmaster_pid(data_dir: &Path) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
    Ok(text
        .lines()
        .next()
        .ok_or("empty postmaster.pid")?
        .trim()
        .parse()?)
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// Polls `condition` until it holds; panics naming `what` when `timeout` passes first.
pub fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
