//! The release binaries as separate processes, for the benches that measure them as they
//! run in production: built once, started with their own flags, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::health_status;

/// A child process killed (and waited for) when dropped.
pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Resident memory in MiB, from `/proc` (0 where there is none).
    pub fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Builds `silo-control-plane` and `silo-router` in release mode and returns the directory
/// holding them (the running bench's own profile directory, `target/release`).
pub fn release_binaries() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "build",
            "--release",
            "-p",
            "silo-control-plane",
            "-p",
            "silo-router",
            "--bins",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the binaries build");
    // target/release/deps/<bench>-… → target/release
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .expect("target dir")
}

/// Starts `binary` with `args`, its stdout and stderr into the file `log`.
pub fn spawn(binary: &Path, args: &[String], log: &Path) -> Process {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    Process(
        Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawns"),
    )
}

/// Waits until the gRPC server at `address` answers its health check with SERVING; how
/// long that took. Panics after `timeout`.
pub async fn wait_serving(address: std::net::SocketAddr, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if health_status(address, "").await
            == Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "serving within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
