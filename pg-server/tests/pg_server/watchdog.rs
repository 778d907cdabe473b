//! Cleanup when the owning process dies without dropping its servers.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use silo_pg_server::{PgServer, PgServerOptions, shared_servers};

use crate::support::{TestResult, eventually, port_accepts, postmaster_pid, process_alive};

/// Set in the child process started by [`a_killed_process_leaves_no_server_behind`].
const CHILD_ENV: &str = "SILO_PG_SERVER_WATCHDOG_CHILD";

/// Starts lines of the child's stdout that describe one server.
const MARK: &str = "silo-pg-server-test-server";

/// The child: starts a server it owns and one in the process-wide fleet, reports them,
/// and waits to be killed.
#[tokio::test]
#[ignore = "helper process of a_killed_process_leaves_no_server_behind"]
async fn child_starts_servers_and_waits() -> TestResult {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let owned = PgServer::start(PgServerOptions::for_tests()).await?;
    let shared = shared_servers(1).await?;
    for server in [&owned, shared[0]] {
        println!("{MARK} {} {}", server.port(), server.data_dir().display());
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    Ok(())
}

/// Kills (SIGKILL) and reaps the child when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_process_leaves_no_server_behind() -> TestResult {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "watchdog::child_starts_servers_and_waits",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let child = KillOnDrop(child);
    let mut servers: Vec<(u16, PathBuf)> = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix(MARK) {
            let (port, dir) = rest.trim().split_once(' ').ok_or("bad line")?;
            servers.push((port.parse()?, PathBuf::from(dir)));
            if servers.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(servers.len(), 2, "the child did not report its servers");
    let mut pids = Vec::new();
    for (port, dir) in &servers {
        assert!(port_accepts(*port));
        pids.push(postmaster_pid(dir)?);
    }

    drop(child); // SIGKILL: no destructor, no panic handler runs in the child

    for ((port, dir), pid) in servers.iter().zip(pids) {
        eventually(
            Duration::from_secs(20),
            &format!(
                "the server in {} (pid {pid}) to end with its process",
                dir.display()
            ),
            || !dir.exists() && !process_alive(pid),
        );
        assert!(
            !port_accepts(*port),
            "port {port} still accepts connections"
        );
    }
    Ok(())
}
