//! One `silo dev` per data directory: an exclusive lock on `<data dir>/silo-dev.lock`, held
//! for the life of the process (the kernel drops it when the process ends, however it
//! ends), whose contents say who holds it. A second start on the same directory refuses
//! before it touches anything, naming the running instance.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The lock file's name in the data directory.
const LOCK_FILE: &str = "silo-dev.lock";

/// The held lock; dropping it (or the process ending) releases it.
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the data directory's lock, or fails naming the instance that holds it.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                anyhow::bail!(
                    "silo dev is already running on {} ({}); stop it first (Ctrl-C where it \
                     runs, or kill its pid), or start another with --data-dir",
                    data_dir.display(),
                    if holder.is_empty() {
                        "starting up"
                    } else {
                        holder
                    }
                );
            }
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {}", path.display()));
            }
        }
        let mut lock = Self { file, path };
        lock.describe(&format!("pid {}", std::process::id()))?;
        Ok(lock)
    }

    /// Replaces what the lock file says about this instance.
    pub fn describe(&mut self, text: &str) -> anyhow::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file
            .write_all(format!("{text}\n").as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Fails, naming the address, when one of `addresses` (those with a fixed port) cannot be
/// listened on: checked before anything is started, so a busy port changes nothing.
pub fn check_ports(addresses: &[(&str, SocketAddr)]) -> anyhow::Result<()> {
    for (what, address) in addresses {
        if address.port() == 0 {
            continue;
        }
        std::net::TcpListener::bind(address).with_context(|| {
            format!("cannot listen on {address} ({what}): is another silo dev or service using it? (--{what}-listen picks another)")
        })?;
    }
    Ok(())
}
