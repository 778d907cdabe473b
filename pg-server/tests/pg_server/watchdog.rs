//! Cleanup when the owning process dies without dropping its servers.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use silo_pg_server::{PgServer, PgServerOptions, shared_servers};

use crate::support::{TestResult, eventually, port_accepts, postmaster_pid, process_alive};

/// Set in the child process started by [`a_killed_process_leaves_no_server_behind`].
const CHILD_ENV: &str = "SILO_PG_SERVER_WATCHDOG_CHILD";

/// Set in the child to the data directory of the persistent server it starts.
const PERSISTENT_ENV: &str = "SILO_PG_SERVER_WATCHDOG_PERSISTENT";

/// Starts lines of the child's stdout that describe one server.
const MARK: &str = "silo-pg-server-test-server";

/// The child: starts a server it owns, one in the process-wide fleet and a persistent one
/// (as `silo dev` does), reports them, and waits to be killed.
#[tokio::test]
#[ignore = "helper process of a_killed_process_leaves_no_server_behind"]
async fn child_starts_servers_and_waits() -> TestResult {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let owned = PgServer::start(PgServerOptions::for_tests()).await?;
    let shared = shared_servers(1).await?;
    let persistent_dir = std::env::var_os(PERSISTENT_ENV).ok_or("no persistent dir")?;
    let persistent = PgServer::start(PgServerOptions::persistent(persistent_dir)).await?;
    for server in [&owned, shared[0], &persistent] {
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
    // The persistent server's data lives here, where the `postgres` OS user can reach it.
    let parent = tempfile::tempdir()?;
    std::fs::set_permissions(
        parent.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let persistent_dir = parent.path().join("pgdata");
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "watchdog::child_starts_servers_and_waits",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env(PERSISTENT_ENV, &persistent_dir)
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
            if servers.len() == 3 {
                break;
            }
        }
    }
    assert_eq!(servers.len(), 3, "the child did not report its servers");
    let mut pids = Vec::new();
    for (port, dir) in &servers {
        assert!(port_accepts(*port));
        pids.push(postmaster_pid(dir)?);
    }
    let (persistent_port, _) = servers.pop().ok_or("no persistent server")?;
    let persistent_pid = pids.pop().ok_or("no persistent pid")?;
    let socket_dir = socket_dir(&persistent_dir)?;
    assert!(socket_dir.is_dir(), "{}", socket_dir.display());

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
    // The persistent server is stopped and its socket directory deleted; its data stays.
    eventually(
        Duration::from_secs(20),
        &format!(
            "the persistent server (pid {persistent_pid}) and its socket directory {} to go",
            socket_dir.display()
        ),
        || !process_alive(persistent_pid) && !socket_dir.exists(),
    );
    assert!(
        !port_accepts(persistent_port),
        "port {persistent_port} still accepts connections"
    );
    assert!(
        persistent_dir.join("PG_VERSION").is_file(),
        "the persistent data is kept"
    );
    assert!(
        !persistent_dir.join("postmaster.pid").exists(),
        "stopped cleanly (fast), not left for recovery"
    );
    Ok(())
}

/// The socket directory a running server wrote into its `postmaster.pid` (line 5).
fn socket_dir(
    data_dir: &std::path::Path,
) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
    let line = text
        .lines()
        .nth(4)
        .ok_or("postmaster.pid has no socket line")?;
    Ok(PathBuf::from(line.trim()))
}
