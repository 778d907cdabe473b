//! The template cluster: `initdb` runs once per machine, user and major version, every
//! server starts from a copy of it.
//!
//! The template lives at `<temp base>/silo-pg-template-<major>-<euid>` (see
//! [`crate::temp_base`]). It is built in a
//! sibling directory and renamed into place, so processes that race never see half of
//! one; whoever loses the race throws its copy away and uses the winner's. The sibling's
//! name holds the builder's pid: one whose builder is gone (killed during initdb) is
//! deleted by the next call.

use std::path::{Path, PathBuf};

use nix::unistd::Uid;
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::binaries::PgBinaries;
use crate::command::run;
use crate::error::PgServerError;
use crate::os_user::{RunAs, create_owned_dir, set_mode};
use crate::temp_base::temp_base;

/// Name of the cluster directory inside the template directory.
const DATA: &str = "data";

/// The template this process built, if it built one: [`remove_template_built_here`]
/// deletes it, so a program that needs no more servers leaves nothing behind.
static BUILT_HERE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Deletes the template cluster if this process built it (a later start builds it again,
/// in about a second). For a program done starting servers, such as `silo dev` once its
/// own server is up; a template another process built is left to that process.
pub fn remove_template_built_here() {
    let built = BUILT_HERE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(template) = built {
        // Renamed away first, so another process never copies from half a template.
        let trash = template.with_extension(format!("removed-{}", std::process::id()));
        if std::fs::rename(&template, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(&trash);
        }
    }
}

/// Returns the data directory of the template cluster, building it if needed.
pub(crate) async fn template_data_dir(
    binaries: &PgBinaries,
    run_as: &RunAs,
) -> Result<PathBuf, PgServerError> {
    // One builder per process; other processes are handled by the atomic rename.
    static BUILDING: Mutex<()> = Mutex::const_new(());
    let _guard = BUILDING.lock().await;

    let name = format!(
        "silo-pg-template-{}-{}",
        binaries.major(),
        Uid::effective().as_raw()
    );
    let base = temp_base();
    sweep_abandoned(&base, &name);
    let template = base.join(&name);
    if is_cluster(&template.join(DATA)) {
        return Ok(template.join(DATA));
    }
    discard_broken(&template);
    let started = std::time::Instant::now();
    let building = tempfile::Builder::new()
        .prefix(&format!("{name}.building-{}-", std::process::id()))
        .tempdir_in(&base)
        .map_err(|e| PgServerError::io("create a temporary directory for initdb", e))?;
    set_mode(building.path(), 0o755)?;
    run_as.check_traversable(building.path())?;
    let data = create_owned_dir(run_as, &building.path().join(DATA), 0o700)?;
    initdb(binaries, run_as, &data).await?;
    match std::fs::rename(building.path(), &template) {
        Ok(()) => {
            let _ = building.keep();
            *BUILT_HERE.lock().unwrap_or_else(|e| e.into_inner()) = Some(template.clone());
            tracing::info!(
                template = %template.display(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "built postgresql template cluster"
            );
        }
        // Another process got there first; `building` is deleted on drop.
        Err(_) if is_cluster(&template.join(DATA)) => {}
        Err(e) => {
            return Err(PgServerError::io(
                format!(
                    "rename {} to {}",
                    building.path().display(),
                    template.display()
                ),
                e,
            ));
        }
    }
    Ok(template.join(DATA))
}

/// Runs initdb into the empty directory `data`, with the C.UTF-8 locale if the system
/// has it, else C.
async fn initdb(binaries: &PgBinaries, run_as: &RunAs, data: &Path) -> Result<(), PgServerError> {
    let mut result = Ok(());
    for locale in ["C.UTF-8", "C"] {
        let mut command = Command::new(binaries.program("initdb"));
        command
            .arg("-D")
            .arg(data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg(format!("--locale={locale}"));
        run_as.apply_tokio(&mut command);
        result = run(&mut command).await.map(drop);
        match &result {
            Err(PgServerError::CommandFailed { output, .. }) if output.contains("locale") => {
                tracing::debug!(locale, "initdb rejected the locale, trying the next one");
            }
            _ => break,
        }
    }
    result
}

/// Whether `data` holds a complete cluster.
pub(crate) fn is_cluster(data: &Path) -> bool {
    data.join("PG_VERSION").is_file() && data.join("global").join("pg_control").is_file()
}

/// Moves a template that exists but is incomplete (e.g. partly cleaned by a tmp reaper)
/// out of the way, then deletes it.
fn discard_broken(template: &Path) {
    if !template.exists() {
        return;
    }
    let trash = template.with_extension(format!("broken-{}", std::process::id()));
    if std::fs::rename(template, &trash).is_ok() {
        tracing::warn!(template = %template.display(), "discarding incomplete postgresql template");
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), error = %e, "could not delete broken template");
        }
    }
}

/// Deletes `<name>.building-<pid>-*` directories in `base` whose process `<pid>` is gone:
/// what an initdb interrupted by a kill left behind. A directory without a pid in its
/// name, or of a live process, is left alone.
fn sweep_abandoned(base: &Path, name: &str) {
    let prefix = format!("{name}.building-");
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if process_exists(pid) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "deleted an abandoned template build"),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "could not delete an abandoned template build");
            }
        }
    }
}

/// Whether a process `pid` exists (signal 0; EPERM means it exists as another user).
fn process_exists(pid: i32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    pid > 0
        && !matches!(
            kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_abandoned_by_a_dead_process_are_swept_and_others_kept() -> std::io::Result<()> {
        let base = tempfile::tempdir()?;
        let name = "silo-pg-template-test";
        // A process that has exited: its pid names no process (until reused, which the
        // kernel does only after cycling through pid_max).
        let mut child = std::process::Command::new("true").spawn()?;
        let dead = i32::try_from(child.id()).unwrap_or(i32::MAX);
        child.wait()?;
        let abandoned = base.path().join(format!("{name}.building-{dead}-abc"));
        std::fs::create_dir_all(abandoned.join(DATA).join("global"))?;
        let live = base
            .path()
            .join(format!("{name}.building-{}-def", std::process::id()));
        std::fs::create_dir(&live)?;
        let unnamed = base.path().join(format!("{name}.building-xyz"));
        std::fs::create_dir(&unnamed)?;
        let other = base.path().join("something-else-1");
        std::fs::create_dir(&other)?;

        sweep_abandoned(base.path(), name);

        assert!(
            !abandoned.exists(),
            "the dead builder's directory is deleted"
        );
        assert!(live.is_dir(), "a running builder's directory is kept");
        assert!(unnamed.is_dir(), "a name without a pid is not guessed at");
        assert!(other.is_dir(), "other directories are not touched");
        Ok(())
    }
}
