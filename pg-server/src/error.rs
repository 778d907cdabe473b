//! The one error type of this crate.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while finding, starting, using or stopping a local
/// PostgreSQL server.
#[derive(Debug, thiserror::Error)]
pub enum PgServerError {
    /// No directory with the PostgreSQL server binaries was found.
    #[error(
        "no PostgreSQL server binaries found (looked in {searched}); install them with \
         `apt-get install postgresql` or set SILO_PG_BIN to the directory holding initdb, \
         pg_ctl and postgres"
    )]
    BinariesNotFound {
        /// Where we looked, for the message.
        searched: String,
    },

    /// `SILO_PG_BIN` names a directory that lacks one of the programs we need.
    #[error("SILO_PG_BIN={dir} does not contain `{missing}`")]
    IncompleteBinDir {
        /// The directory from `SILO_PG_BIN`.
        dir: PathBuf,
        /// The program that is not there.
        missing: &'static str,
    },

    /// We run as root and PostgreSQL refuses that, but there is no `postgres` OS user to
    /// run it as instead.
    #[error(
        "PostgreSQL refuses to run as root and there is no OS user `postgres` to run it as \
         instead (create it, e.g. with `apt-get install postgresql`, or run as a normal user)"
    )]
    NoPostgresUser,

    /// The `postgres` OS user cannot reach a directory because an ancestor lacks the
    /// search (`x`) permission for it.
    #[error(
        "{path} is not reachable for OS user `{user}`: {blocking} does not allow it to \
         traverse (chmod o+x it, or choose a directory elsewhere)"
    )]
    NotTraversable {
        /// The directory the server needs.
        path: PathBuf,
        /// The ancestor that blocks the way.
        blocking: PathBuf,
        /// The OS user the server runs as.
        user: String,
    },

    /// A persistent data directory exists, is not empty, and holds no cluster.
    #[error("{path} is neither empty nor a complete PostgreSQL data directory")]
    NotADataDir {
        /// The data directory from the options.
        path: PathBuf,
    },

    /// A persistent data directory was made by another PostgreSQL major version.
    #[error("{path} holds a PostgreSQL {found} cluster but the binaries are version {expected}")]
    VersionMismatch {
        /// The data directory from the options.
        path: PathBuf,
        /// Major version written in its `PG_VERSION`.
        found: String,
        /// Major version of the binaries we found.
        expected: String,
    },

    /// The options ask for something impossible.
    #[error("invalid PostgreSQL server options: {0}")]
    InvalidOptions(String),

    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A helper program (initdb, pg_ctl, cp, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        /// The command line, for the message.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// Its stderr and stdout, trimmed.
        output: String,
    },

    /// The server did not come up; `log_tail` is the end of its `server.log`.
    #[error(
        "PostgreSQL server on port {port} did not start: {reason}\n\
         --- last lines of {} ---\n{log_tail}",
        log_path.display()
    )]
    StartFailed {
        /// The port it was asked to listen on.
        port: u16,
        /// What pg_ctl said.
        reason: String,
        /// The log file of the server.
        log_path: PathBuf,
        /// The last lines written to it during this attempt.
        log_tail: String,
    },

    /// The server did not stop.
    #[error("PostgreSQL server on port {port} did not stop: {reason}")]
    StopFailed {
        /// The port of the server.
        port: u16,
        /// What pg_ctl said.
        reason: String,
    },

    /// Connecting to the server failed.
    #[error("could not connect to {dsn}: {source}")]
    Connect {
        /// Where we tried to connect.
        dsn: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A statement run by this crate failed.
    #[error("`{statement}` failed: {source}")]
    Query {
        /// The statement.
        statement: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A blocking helper task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl PgServerError {
    /// Wraps an I/O error with what we were doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
