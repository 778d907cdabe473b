//! Where temporary servers and the template cluster live.
//!
//! Copying a cluster is about a thousand small files; on tmpfs that takes ~0.04 s, on a
//! disk file system easily ten times more. So `/dev/shm` is used when it has room, and
//! the usual temporary directory otherwise. `SILO_PG_TMPDIR` overrides both.

use std::path::PathBuf;

use nix::sys::statvfs::statvfs;
use nix::unistd::{AccessFlags, access};

/// Environment variable naming the directory for temporary servers and the template.
pub const PG_TMPDIR_ENV: &str = "SILO_PG_TMPDIR";

/// Memory-backed on Linux.
const SHM: &str = "/dev/shm";

/// Free space `/dev/shm` must have to be used (containers often give it only 64 MB).
const SHM_MIN_FREE_BYTES: u64 = 1 << 30;

/// `$SILO_PG_TMPDIR`, else `/dev/shm` if it has at least 1 GiB free, else `$TMPDIR`.
pub(crate) fn temp_base() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_TMPDIR_ENV) {
        return PathBuf::from(dir);
    }
    if shm_has_room() {
        return PathBuf::from(SHM);
    }
    std::env::temp_dir()
}

fn shm_has_room() -> bool {
    let Ok(stats) = statvfs(SHM) else {
        return false;
    };
    // The field types are u64 on 64-bit Linux but differ between platforms.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size()));
    free >= SHM_MIN_FREE_BYTES && access(SHM, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}
