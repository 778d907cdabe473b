//! A tiny shell process per server that cleans up after this process is gone, even when
//! it panicked, was killed, or kept the server in a static (statics are never dropped).
//! For a temporary server it stops the server and deletes its directory; for a
//! persistent one (`silo dev`) it stops the server and deletes only its socket directory.
//!
//! The watchdog holds the read end of a pipe whose write end only this process holds.
//! When this process exits, however it exits, the kernel closes the write end, `read`
//! sees end-of-file, and the watchdog stops the server (`pg_ctl stop -m immediate`) and
//! deletes its directory. Unlike polling `kill -0 <pid>`, this reacts at once and works
//! when the watchdog runs as another user than this (root) process. It runs in its own
//! process group and ignores SIGHUP/SIGINT, so a Ctrl-C aimed at the tests does not kill
//! it before it has cleaned up.

use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::error::PgServerError;
use crate::os_user::RunAs;

/// `$1` pg_ctl, `$2` data directory, `$3` directory to delete, `$4` stop mode.
const SCRIPT: &str = r#"trap '' HUP INT
while read -r _; do :; done
"$1" -D "$2" -m "$4" -w -t 30 stop >/dev/null 2>&1
rm -rf "$3"
"#;

/// How the watchdog stops the server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WatchdogStop {
    /// `-m immediate`: the data is about to be deleted anyway.
    Immediate,
    /// `-m fast`: the data stays, and its next start needs no recovery.
    Fast,
}

/// A running watchdog. It fires when this process exits, or at once when this value is
/// dropped (its pipe closes); [`Watchdog::dismiss`] ends it without firing.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    /// Our end of the pipe; never written to, closed only by the kernel or `dismiss`.
    _lifeline: ChildStdin,
}

impl Watchdog {
    /// Starts a watchdog for the server in `data_dir` that stops it with `stop` and
    /// deletes `delete_dir`.
    pub(crate) fn spawn(
        pg_ctl: &Path,
        data_dir: &Path,
        delete_dir: &Path,
        stop: WatchdogStop,
        run_as: &RunAs,
    ) -> Result<Watchdog, PgServerError> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg("silo-pg-watchdog")
            .arg(pg_ctl)
            .arg(data_dir)
            .arg(delete_dir)
            .arg(match stop {
                WatchdogStop::Immediate => "immediate",
                WatchdogStop::Fast => "fast",
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        run_as.apply(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| PgServerError::io("start the cleanup watchdog (/bin/sh)", e))?;
        let Some(lifeline) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PgServerError::io(
                "start the cleanup watchdog",
                std::io::Error::other("no stdin pipe"),
            ));
        };
        Ok(Watchdog {
            child,
            _lifeline: lifeline,
        })
    }

    /// Ends the watchdog without letting it act: the owner has cleaned up itself.
    pub(crate) fn dismiss(mut self) {
        // It only waits in `read`, a shell builtin, so killing it leaves nothing behind.
        if let Err(e) = self.child.kill() {
            tracing::debug!(error = %e, "could not kill the postgresql watchdog");
        }
        let _ = self.child.wait();
    }
}
