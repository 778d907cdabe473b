//! PgBouncer (Debian's 1.18) in front of the benchmark's server, in transaction mode with
//! a pool of [`POOL_SIZE`] server connections: the router's tier allows its tenant as
//! many. It refuses to run as root, so it runs as the server's OS user.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use silo_pg_server::PgServer;

/// Server connections per database and user, as the tier's `max_connections`.
pub const POOL_SIZE: u32 = 10;

pub struct PgBouncer {
    pub port: u16,
    process: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    pub async fn start(server: &PgServer) -> anyhow::Result<Self> {
        let program = ["pgbouncer", "/usr/sbin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|program| {
                std::process::Command::new(program)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
            .context(
                "pgbouncer not found; apt-get install pgbouncer (scripts/bench-router.sh does)",
            )?;
        let dir = tempfile::tempdir()?;
        let port = silo_tests::processes::free_port();
        let config = format!(
            "[databases]\n* = host={host} port={pg_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\npool_mode = transaction\n\
             max_client_conn = 500\ndefault_pool_size = {POOL_SIZE}\n\
             logfile = {dir}/pgbouncer.log\n",
            host = server.host(),
            pg_port = server.port(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config)?;
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{}\" \"\"\n", server.superuser()),
        )?;
        let mut command = tokio::process::Command::new(program);
        command
            .arg(dir.path().join("pgbouncer.ini"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        silo_pg_server::run_as_server_user(&mut command, dir.path())?;
        let process = command.spawn().context("start pgbouncer")?;
        silo_tests::eventually(
            Duration::from_secs(5),
            &format!("pgbouncer to listen on {port}"),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
        Ok(Self {
            port,
            process,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.id().unwrap_or(0)
    }
}
