//! Finding the PostgreSQL server programs (initdb, pg_ctl, postgres) and their version.

use std::path::{Path, PathBuf};

use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::command::run;
use crate::error::PgServerError;

/// Environment variable naming the directory that holds initdb, pg_ctl and postgres.
pub const PG_BIN_ENV: &str = "SILO_PG_BIN";

/// Where Debian and Ubuntu install one directory per major version.
const DEBIAN_PG_LIB: &str = "/usr/lib/postgresql";

/// The programs a server needs.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The PostgreSQL server programs of one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgBinaries {
    dir: PathBuf,
    major: String,
}

impl PgBinaries {
    /// Finds the binaries once per process: `SILO_PG_BIN`, else the highest
    /// `/usr/lib/postgresql/*/bin` with an `initdb`, else `pg_config --bindir`.
    pub(crate) async fn locate() -> Result<&'static PgBinaries, PgServerError> {
        static FOUND: OnceCell<PgBinaries> = OnceCell::const_new();
        FOUND.get_or_try_init(Self::search).await
    }

    async fn search() -> Result<PgBinaries, PgServerError> {
        let dir = find_bin_dir().await?;
        let output = run(Command::new(dir.join("postgres")).arg("--version")).await?;
        let text = String::from_utf8_lossy(&output.stdout);
        let major = major_version(&text).ok_or_else(|| {
            PgServerError::io(
                format!("could not read the version of {}", dir.display()),
                std::io::Error::other(format!("unexpected `postgres --version` output {text:?}")),
            )
        })?;
        tracing::debug!(bin_dir = %dir.display(), major = %major, "found postgresql binaries");
        Ok(PgBinaries { dir, major })
    }

    /// Path of one program, e.g. `pg_ctl`.
    pub(crate) fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Major version, e.g. `15` (or `9.6` for old releases).
    pub(crate) fn major(&self) -> &str {
        &self.major
    }
}

async fn find_bin_dir() -> Result<PathBuf, PgServerError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if let Some(missing) = REQUIRED.into_iter().find(|p| !dir.join(p).is_file()) {
            return Err(PgServerError::IncompleteBinDir { dir, missing });
        }
        return Ok(dir);
    }
    if let Some(dir) = highest_versioned_dir(Path::new(DEBIAN_PG_LIB)) {
        return Ok(dir);
    }
    if let Ok(output) = run(Command::new("pg_config").arg("--bindir")).await {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if REQUIRED.iter().all(|p| dir.join(p).is_file()) {
            return Ok(dir);
        }
    }
    Err(PgServerError::BinariesNotFound {
        searched: format!("${PG_BIN_ENV}, {DEBIAN_PG_LIB}/*/bin, `pg_config --bindir`"),
    })
}

/// The `bin` directory of the highest version under `lib` that contains `initdb`.
fn highest_versioned_dir(lib: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(lib).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(&entry.file_name().to_string_lossy())?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else is not a version.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Major version from `postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`: `15`;
/// before release 10 the major version had two parts (`9.6.24` → `9.6`).
fn major_version(version_output: &str) -> Option<String> {
    let number = version_output
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))?;
    let parts: Vec<&str> = number
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|p| !p.is_empty())
        .collect();
    let first: u32 = parts.first()?.parse().ok()?;
    if first >= 10 {
        Some(first.to_string())
    } else {
        Some(format!("{first}.{}", parts.get(1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_of_modern_and_old_releases() {
        assert_eq!(
            major_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(
            major_version("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17")
        );
        assert_eq!(
            major_version("postgres (PostgreSQL) 9.6.24").as_deref(),
            Some("9.6")
        );
        assert_eq!(major_version("postgres (PostgreSQL)"), None);
    }

    #[test]
    fn highest_version_with_initdb_wins() -> Result<(), Box<dyn std::error::Error>> {
        let lib = tempfile::tempdir()?;
        for (version, with_initdb) in [("9.6", true), ("15", true), ("16", false), ("x", true)] {
            let bin = lib.path().join(version).join("bin");
            std::fs::create_dir_all(&bin)?;
            if with_initdb {
                std::fs::write(bin.join("initdb"), "")?;
            }
        }
        assert_eq!(
            highest_versioned_dir(lib.path()),
            Some(lib.path().join("15").join("bin"))
        );
        assert_eq!(highest_versioned_dir(&lib.path().join("missing")), None);
        Ok(())
    }
}
