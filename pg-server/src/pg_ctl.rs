//! Starting, stopping and probing one cluster with `pg_ctl`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::process::Command;

use crate::binaries::PgBinaries;
use crate::command::{combined_output, describe, run, shell_quote};
use crate::error::PgServerError;
use crate::os_user::RunAs;

/// Seconds pg_ctl waits for the server to start or stop.
const WAIT_SECONDS: &str = "60";

/// Lines of `server.log` shown when a start fails.
const LOG_TAIL_LINES: usize = 30;

/// How a server is shut down (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// End sessions, write a checkpoint: the next start needs no recovery.
    Fast,
    /// Kill everything at once: the next start replays the WAL.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One cluster and everything needed to run `pg_ctl` on it.
#[derive(Debug)]
pub(crate) struct PgCtl {
    pg_ctl: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: RunAs,
    settings: Vec<(String, String)>,
}

impl PgCtl {
    pub(crate) fn new(
        binaries: &PgBinaries,
        data_dir: PathBuf,
        socket_dir: PathBuf,
        run_as: RunAs,
        settings: Vec<(String, String)>,
    ) -> Self {
        Self {
            pg_ctl: binaries.program("pg_ctl"),
            data_dir,
            socket_dir,
            run_as,
            settings,
        }
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file (inside the data directory).
    pub(crate) fn log_path(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }

    /// Starts the server on `port` and waits until it accepts connections.
    pub(crate) async fn start(&self, port: u16) -> Result<(), PgServerError> {
        let log_path = self.log_path();
        let log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let mut server_args = vec![
            "-p".to_owned(),
            port.to_string(),
            "-k".to_owned(),
            self.socket_dir.to_string_lossy().into_owned(),
        ];
        for (name, value) in &self.settings {
            server_args.push("-c".to_owned());
            server_args.push(format!("{name}={value}"));
        }
        let server_args: Vec<String> = server_args.iter().map(|a| shell_quote(a)).collect();
        let mut command = Command::new(&self.pg_ctl);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log_path)
            .args(["-w", "-t", WAIT_SECONDS, "-o"])
            .arg(server_args.join(" "))
            .arg("start");
        self.run_as.apply_tokio(&mut command);
        match run(&mut command).await {
            Ok(_) => Ok(()),
            Err(PgServerError::CommandFailed { output, .. }) => Err(PgServerError::StartFailed {
                port,
                reason: output,
                log_tail: log_tail(&log_path, log_offset),
                log_path,
            }),
            Err(other) => Err(other),
        }
    }

    /// Stops the server and waits until it is gone.
    pub(crate) async fn stop(&self, mode: StopMode, port: u16) -> Result<(), PgServerError> {
        let mut command = Command::new(&self.pg_ctl);
        command.args(self.stop_args(mode));
        self.run_as.apply_tokio(&mut command);
        match run(&mut command).await {
            Ok(_) => Ok(()),
            Err(PgServerError::CommandFailed { output, .. }) => Err(PgServerError::StopFailed {
                port,
                reason: output,
            }),
            Err(other) => Err(other),
        }
    }

    /// [`PgCtl::stop`] for `Drop`, which cannot await.
    pub(crate) fn stop_blocking(&self, mode: StopMode, port: u16) -> Result<(), PgServerError> {
        let mut command = std::process::Command::new(&self.pg_ctl);
        command
            .args(self.stop_args(mode))
            .stdin(std::process::Stdio::null());
        self.run_as.apply(&mut command);
        let output = command
            .output()
            .map_err(|e| PgServerError::io(format!("could not run `{}`", describe(&command)), e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(PgServerError::StopFailed {
                port,
                reason: combined_output(&output),
            })
        }
    }

    fn stop_args(&self, mode: StopMode) -> Vec<std::ffi::OsString> {
        vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-m".into(),
            mode.as_arg().into(),
            "-w".into(),
            "-t".into(),
            WAIT_SECONDS.into(),
            "stop".into(),
        ]
    }

    /// Whether a postmaster runs on this data directory: its `postmaster.pid` names a live
    /// process.
    pub(crate) fn is_running(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return false;
        };
        // Signal 0 only checks that the process exists; EPERM means it does.
        pid > 0 && matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
    }
}

/// Whether a start failed because the port was taken (worth retrying with another one).
pub(crate) fn is_port_conflict(error: &PgServerError) -> bool {
    match error {
        PgServerError::StartFailed { log_tail, .. } => {
            log_tail.contains("Address already in use") || log_tail.contains("could not bind")
        }
        _ => false,
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, PgServerError> {
    let listener = std::net::TcpListener::bind((crate::HOST, 0))
        .map_err(|e| PgServerError::io("bind 127.0.0.1:0 to find a free port", e))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| PgServerError::io("read the port of a bound socket", e))
}

/// The last lines written to `path` after byte `offset`.
fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        return format!("(could not read the log: {e})");
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_starts_at_the_offset_and_keeps_the_last_lines() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("server.log");
        let old = "old line\n";
        let new: String = (0..40).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, format!("{old}{new}"))?;
        let tail = log_tail(&path, old.len() as u64);
        assert!(!tail.contains("old line"));
        assert!(tail.starts_with("line 10\n"));
        assert!(tail.ends_with("line 39"));
        assert!(log_tail(&dir.path().join("missing"), 0).contains("could not read"));
        Ok(())
    }

    #[test]
    fn only_bind_failures_count_as_port_conflicts() {
        let failure = |log_tail: &str| PgServerError::StartFailed {
            port: 1,
            reason: String::new(),
            log_path: PathBuf::new(),
            log_tail: log_tail.to_owned(),
        };
        assert!(is_port_conflict(&failure(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
        )));
        assert!(!is_port_conflict(&failure(
            "FATAL:  invalid value for parameter \"shared_buffers\""
        )));
        assert!(!is_port_conflict(&PgServerError::NoPostgresUser));
    }
}
