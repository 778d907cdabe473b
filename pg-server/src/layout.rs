//! The directories of one server: its data directory and the directory of its Unix
//! socket, temporary or persistent.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tokio::process::Command;

use crate::binaries::PgBinaries;
use crate::command::run;
use crate::error::PgServerError;
use crate::os_user::{RunAs, create_owned_dir, set_mode};
use crate::temp_base::temp_base;
use crate::template::is_cluster;

/// Where a server keeps its files.
#[derive(Debug)]
pub(crate) struct Layout {
    /// The cluster.
    pub(crate) data_dir: PathBuf,
    /// Where the server puts its Unix socket (`-k`).
    pub(crate) socket_dir: PathBuf,
    /// For a temporary server: the directory holding both, deleted with the server.
    pub(crate) temp_root: Option<TempDir>,
    /// For a persistent server: a short-lived socket directory (data directories can have
    /// paths too long for a Unix socket).
    pub(crate) socket_temp: Option<TempDir>,
}

impl Layout {
    /// `<temp base>/silo-pg-XXXXXX/{data,sock}`, the data a copy of the template.
    pub(crate) async fn temporary(
        template: &Path,
        run_as: &RunAs,
    ) -> Result<Layout, PgServerError> {
        let root = tempfile::Builder::new()
            .prefix("silo-pg-")
            .tempdir_in(temp_base())
            .map_err(|e| PgServerError::io("create a temporary directory for postgresql", e))?;
        run_as.check_traversable(root.path())?;
        let data_dir = root.path().join("data");
        copy_cluster(template, &data_dir, run_as).await?;
        let socket_dir = create_owned_dir(run_as, &root.path().join("sock"), 0o700)?;
        run_as.take_ownership(root.path())?;
        Ok(Layout {
            data_dir,
            socket_dir,
            temp_root: Some(root),
            socket_temp: None,
        })
    }

    /// `dir` as the data directory: reused when it holds a cluster of our major version,
    /// filled from the template when it is missing or empty.
    pub(crate) async fn persistent(
        dir: &Path,
        template: &Path,
        binaries: &PgBinaries,
        run_as: &RunAs,
    ) -> Result<Layout, PgServerError> {
        let data_dir = std::path::absolute(dir)
            .map_err(|e| PgServerError::io(format!("resolve {}", dir.display()), e))?;
        if data_dir.join("PG_VERSION").is_file() {
            check_version(&data_dir, binaries)?;
            run_as.check_traversable(&data_dir)?;
            run_as.take_ownership_recursive(&data_dir)?;
        } else if is_empty_or_missing(&data_dir)? {
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| PgServerError::io(format!("create {}", data_dir.display()), e))?;
            run_as.check_traversable(&data_dir)?;
            tracing::info!(data_dir = %data_dir.display(), "creating postgresql data directory");
            copy_cluster(template, &data_dir, run_as).await?;
        } else {
            return Err(PgServerError::NotADataDir { path: data_dir });
        }
        let socket = tempfile::Builder::new()
            .prefix("silo-pg-sock-")
            .tempdir_in(temp_base())
            .map_err(|e| PgServerError::io("create a socket directory for postgresql", e))?;
        run_as.check_traversable(socket.path())?;
        run_as.take_ownership(socket.path())?;
        Ok(Layout {
            data_dir,
            socket_dir: socket.path().to_path_buf(),
            temp_root: None,
            socket_temp: Some(socket),
        })
    }
}

/// Copies the template cluster into `target` (created if needed) keeping owners and
/// modes, and hands `target` to `run_as` with the mode PostgreSQL demands. `cp -a` is
/// used rather than a copy in Rust: it keeps owners, modes and times, and is fast.
async fn copy_cluster(template: &Path, target: &Path, run_as: &RunAs) -> Result<(), PgServerError> {
    std::fs::create_dir_all(target)
        .map_err(|e| PgServerError::io(format!("create {}", target.display()), e))?;
    run(Command::new("cp")
        .arg("-a")
        .arg(template.join("."))
        .arg(target))
    .await?;
    set_mode(target, 0o700)?;
    // `cp -a` kept the owner of everything inside; only `target` itself is new.
    run_as.take_ownership(target)
}

fn check_version(data_dir: &Path, binaries: &PgBinaries) -> Result<(), PgServerError> {
    let file = data_dir.join("PG_VERSION");
    let found = std::fs::read_to_string(&file)
        .map_err(|e| PgServerError::io(format!("read {}", file.display()), e))?;
    let found = found.trim();
    if found != binaries.major() {
        return Err(PgServerError::VersionMismatch {
            path: data_dir.to_path_buf(),
            found: found.to_owned(),
            expected: binaries.major().to_owned(),
        });
    }
    if !is_cluster(data_dir) {
        return Err(PgServerError::NotADataDir {
            path: data_dir.to_path_buf(),
        });
    }
    Ok(())
}

fn is_empty_or_missing(dir: &Path) -> Result<bool, PgServerError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(PgServerError::io(format!("read {}", dir.display()), e)),
    }
}
