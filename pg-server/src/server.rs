//! [`PgServer`]: one running PostgreSQL server and its lifecycle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::sync::Mutex;

use crate::binaries::PgBinaries;
use crate::error::PgServerError;
use crate::layout::Layout;
use crate::options::PgServerOptions;
use crate::os_user::RunAs;
use crate::pg_ctl::{PgCtl, StopMode, free_port, is_port_conflict};
use crate::template::template_data_dir;
use crate::watchdog::{Watchdog, WatchdogStop};

/// How often a start is tried with a fresh port when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// A PostgreSQL server on 127.0.0.1, run from the machine's PostgreSQL binaries.
///
/// Methods take `&self`, so a server can be shared (e.g. in an `Arc`) and stopped or
/// restarted from a test while others hold it. Dropping it stops the server; a temporary
/// server also deletes its data. A watchdog process does the same if this process dies
/// first (panic, SIGKILL, or a server kept in a static); for a persistent server it
/// stops the server and deletes the socket directory, keeping the data.
#[derive(Debug)]
pub struct PgServer {
    ctl: PgCtl,
    port: AtomicU16,
    /// Serialises start, stop and restart.
    lifecycle: Mutex<()>,
    persistent: bool,
    temp_root: Option<tempfile::TempDir>,
    socket_temp: Option<tempfile::TempDir>,
    watchdog: Option<Watchdog>,
}

impl PgServer {
    /// Creates the data directory if needed and starts the server.
    pub async fn start(options: PgServerOptions) -> Result<PgServer, PgServerError> {
        if options.max_connections == 0 {
            return Err(PgServerError::InvalidOptions(
                "max_connections must be at least 1".into(),
            ));
        }
        let started = std::time::Instant::now();
        let binaries = PgBinaries::locate().await?;
        let run_as = RunAs::detect()?;
        let template = template_data_dir(binaries, &run_as).await?;
        let layout = match &options.data_dir {
            None => Layout::temporary(&template, &run_as).await?,
            Some(dir) => Layout::persistent(dir, &template, binaries, &run_as).await?,
        };
        // A temporary server's watchdog deletes everything; a persistent one's keeps the
        // data and deletes the socket directory, so a killed `silo dev` leaves neither a
        // running server nor a directory behind.
        let (delete_dir, stop) = match &layout.temp_root {
            Some(root) => (root.path(), WatchdogStop::Immediate),
            None => (layout.socket_dir.as_path(), WatchdogStop::Fast),
        };
        let watchdog = Some(Watchdog::spawn(
            &binaries.program("pg_ctl"),
            &layout.data_dir,
            delete_dir,
            stop,
            &run_as,
        )?);
        let server = PgServer {
            ctl: PgCtl::new(
                binaries,
                layout.data_dir,
                layout.socket_dir,
                run_as,
                options.server_settings(),
            ),
            port: AtomicU16::new(0),
            lifecycle: Mutex::new(()),
            persistent: options.data_dir.is_some(),
            temp_root: layout.temp_root,
            socket_temp: layout.socket_temp,
            watchdog,
        };
        // From here on, an error drops `server`, which stops whatever did start.
        if server.persistent && server.ctl.is_running() {
            tracing::warn!(
                data_dir = %server.ctl.data_dir().display(),
                "a postgresql server left running on this data directory is stopped first"
            );
            server.ctl.stop(StopMode::Fast, 0).await?;
        }
        server.launch(options.port).await?;
        tracing::info!(
            port = server.port(),
            data_dir = %server.ctl.data_dir().display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "postgresql server started"
        );
        Ok(server)
    }

    /// Starts on `port`, or on a free port, retrying with another one if it was taken.
    async fn launch(&self, port: Option<u16>) -> Result<(), PgServerError> {
        let _guard = self.lifecycle.lock().await;
        let mut attempt = 1;
        loop {
            let chosen = match port {
                Some(port) => port,
                None => free_port()?,
            };
            self.port.store(chosen, Ordering::SeqCst);
            match self.ctl.start(chosen).await {
                Err(e) if port.is_none() && attempt < PORT_ATTEMPTS && is_port_conflict(&e) => {
                    tracing::debug!(port = chosen, "port taken meanwhile, trying another one");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &str {
        crate::HOST
    }

    /// The TCP port; it stays the same across [`PgServer::restart`].
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// `postgres`, a superuser that needs no password (`trust` authentication).
    pub fn superuser(&self) -> &str {
        crate::SUPERUSER
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.ctl.data_dir()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.ctl.log_path()
    }

    /// Whether the server process is alive (its `postmaster.pid` names a live process).
    pub fn is_running(&self) -> bool {
        self.ctl.is_running()
    }

    /// Stops the server (`pg_ctl -m fast`); it can be started again with
    /// [`PgServer::restart`]. Does nothing if it is not running.
    pub async fn stop(&self) -> Result<(), PgServerError> {
        let _guard = self.lifecycle.lock().await;
        if !self.ctl.is_running() {
            return Ok(());
        }
        self.ctl.stop(StopMode::Fast, self.port()).await?;
        tracing::info!(port = self.port(), "postgresql server stopped");
        Ok(())
    }

    /// Starts the server again on the same port and data directory, stopping it first if
    /// it runs. Fails if another process took the port meanwhile.
    pub async fn restart(&self) -> Result<(), PgServerError> {
        let _guard = self.lifecycle.lock().await;
        let port = self.port();
        if self.ctl.is_running() {
            self.ctl.stop(StopMode::Fast, port).await?;
        }
        self.ctl.start(port).await?;
        tracing::info!(port, "postgresql server restarted");
        Ok(())
    }
}

impl Drop for PgServer {
    /// Stops the server (`-m immediate` for a temporary one, whose data is about to go;
    /// `-m fast` for a persistent one, so its next start needs no recovery) and deletes
    /// temporary directories. Returns at once if the server is not running.
    fn drop(&mut self) {
        let mode = if self.persistent {
            StopMode::Fast
        } else {
            StopMode::Immediate
        };
        let stopped = !self.ctl.is_running() || {
            match self.ctl.stop_blocking(mode, self.port()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not stop postgresql server on drop");
                    false
                }
            }
        };
        if let Some(socket) = self.socket_temp.take()
            && let Err(e) = socket.close()
        {
            tracing::debug!(error = %e, "could not delete postgresql socket directory");
        }
        let root = self.temp_root.take();
        if stopped {
            if let Some(root) = root
                && let Err(e) = root.close()
            {
                tracing::warn!(error = %e, "could not delete temporary postgresql directory");
            }
            if let Some(watchdog) = self.watchdog.take() {
                watchdog.dismiss();
            }
        } else {
            // Leave it to the watchdog: dropping it makes it stop and delete right away.
            if let Some(root) = root {
                let _ = root.keep();
            }
            drop(self.watchdog.take());
        }
    }
}
