//! Which OS user runs the PostgreSQL programs, and making files usable by it.
//!
//! PostgreSQL refuses to run as root. When this process is root, initdb, pg_ctl and the
//! server run as the OS user `postgres` instead, and the directories they use are handed
//! over to that user. Otherwise they run as the current user and nothing is changed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

use crate::error::PgServerError;

/// The OS user PostgreSQL runs as when this process is root.
const POSTGRES_USER: &str = "postgres";

/// Who runs the PostgreSQL programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunAs {
    /// The user of this process (not root).
    CurrentUser,
    /// Another user; this process is root and switches to it for every program it starts.
    Other {
        /// Its name, for messages.
        name: String,
        /// Its user id.
        uid: Uid,
        /// Its primary group id.
        gid: Gid,
    },
}

impl RunAs {
    /// `postgres` when this process runs as root, else the current user.
    pub(crate) fn detect() -> Result<RunAs, PgServerError> {
        if !Uid::effective().is_root() {
            return Ok(RunAs::CurrentUser);
        }
        let user = User::from_name(POSTGRES_USER)
            .map_err(|e| {
                PgServerError::io(
                    format!("could not look up OS user `{POSTGRES_USER}`"),
                    std::io::Error::from(e),
                )
            })?
            .ok_or(PgServerError::NoPostgresUser)?;
        Ok(RunAs::Other {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// Makes `command` run as this user (and from `/`, which every user may enter).
    pub(crate) fn apply(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        command.current_dir("/");
        if let RunAs::Other { uid, gid, .. } = self {
            // std drops the supplementary groups of root before switching.
            command.gid(gid.as_raw()).uid(uid.as_raw());
        }
    }

    /// Same as [`RunAs::apply`] for a tokio command.
    pub(crate) fn apply_tokio(&self, command: &mut tokio::process::Command) {
        self.apply(command.as_std_mut());
    }

    /// Hands `path` (not what is inside) to this user.
    pub(crate) fn take_ownership(&self, path: &Path) -> Result<(), PgServerError> {
        if let RunAs::Other { uid, gid, .. } = self {
            std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(|e| PgServerError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Hands `path` and everything below it to this user, unless `path` already is its.
    pub(crate) fn take_ownership_recursive(&self, path: &Path) -> Result<(), PgServerError> {
        let RunAs::Other { uid, .. } = self else {
            return Ok(());
        };
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| PgServerError::io(format!("stat {}", path.display()), e))?;
        if meta.uid() == uid.as_raw() {
            return Ok(());
        }
        self.chown_tree(path)
    }

    fn chown_tree(&self, path: &Path) -> Result<(), PgServerError> {
        self.take_ownership(path)?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| PgServerError::io(format!("stat {}", path.display()), e))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| PgServerError::io(format!("read {}", path.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| PgServerError::io(format!("read {}", path.display()), e))?;
                self.chown_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Fails with a clear message when this user could not reach `path` because one of
    /// its ancestors lacks the search permission for it.
    pub(crate) fn check_traversable(&self, path: &Path) -> Result<(), PgServerError> {
        let RunAs::Other { name, uid, gid } = self else {
            return Ok(());
        };
        for ancestor in path.ancestors().skip(1) {
            let meta = std::fs::metadata(ancestor)
                .map_err(|e| PgServerError::io(format!("stat {}", ancestor.display()), e))?;
            if !may_search(&meta, *uid, *gid) {
                return Err(PgServerError::NotTraversable {
                    path: path.to_path_buf(),
                    blocking: ancestor.to_path_buf(),
                    user: name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether a user (with only its primary group, as after the switch) may enter a directory.
fn may_search(meta: &std::fs::Metadata, uid: Uid, gid: Gid) -> bool {
    let mode = meta.permissions().mode();
    if meta.uid() == uid.as_raw() {
        mode & 0o100 != 0
    } else if meta.gid() == gid.as_raw() {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Sets the permission bits of `path`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), PgServerError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| PgServerError::io(format!("chmod {mode:o} {}", path.display()), e))
}

/// Creates the directory `path` (parents too) with the given mode, owned by `run_as`.
pub(crate) fn create_owned_dir(
    run_as: &RunAs,
    path: &Path,
    mode: u32,
) -> Result<PathBuf, PgServerError> {
    std::fs::create_dir_all(path)
        .map_err(|e| PgServerError::io(format!("create {}", path.display()), e))?;
    set_mode(path, mode)?;
    run_as.take_ownership(path)?;
    Ok(path.to_path_buf())
}

/// Makes `command` run as the OS user the PostgreSQL servers run as (`postgres` when this
/// process is root, else this process's own), and hands `dir` to that user: for
/// companion programs such as PgBouncer, which refuse to run as root too.
pub fn run_as_server_user(
    command: &mut tokio::process::Command,
    dir: &Path,
) -> Result<(), PgServerError> {
    let run_as = RunAs::detect()?;
    run_as.take_ownership_recursive(dir)?;
    run_as.apply_tokio(command);
    Ok(())
}

/// Hands the file `path` to the OS user the PostgreSQL servers run as: for files a server
/// must own, such as its TLS key (PostgreSQL refuses a key that others can read, and one it
/// cannot read).
pub fn give_to_server_user(path: &Path) -> Result<(), PgServerError> {
    RunAs::detect()?.take_ownership(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_user_needs_no_checks() -> Result<(), PgServerError> {
        RunAs::CurrentUser.check_traversable(Path::new("/nonexistent/a/b"))?;
        RunAs::CurrentUser.take_ownership(Path::new("/nonexistent"))?;
        Ok(())
    }

    #[test]
    fn closed_ancestor_is_reported() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let closed = root.path().join("closed");
        let inner = closed.join("inner");
        std::fs::create_dir_all(&inner)?;
        set_mode(root.path(), 0o755)?;
        set_mode(&closed, 0o700)?;
        // A user that owns nothing here and is in no group that does.
        let stranger = RunAs::Other {
            name: "stranger".into(),
            uid: Uid::from_raw(54_321),
            gid: Gid::from_raw(54_321),
        };
        match stranger.check_traversable(&inner.join("data")) {
            Err(PgServerError::NotTraversable { blocking, .. }) => assert_eq!(blocking, closed),
            other => panic!("expected NotTraversable, got {other:?}"),
        }
        set_mode(&closed, 0o711)?;
        stranger.check_traversable(&inner.join("data"))?;
        Ok(())
    }
}
