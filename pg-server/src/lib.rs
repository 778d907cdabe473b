//! Local PostgreSQL servers, started and stopped with the machine's own PostgreSQL
//! binaries (`initdb`, `pg_ctl`, `postgres`).
//!
//! Used by the end-to-end tests (several throwaway servers per test, stopped and
//! restarted for fault tests) and by the embedded dev mode (one server with a persistent
//! data directory).
//!
//! ```no_run
//! # async fn example() -> Result<(), silo_pg_server::PgServerError> {
//! use silo_pg_server::{PgServer, PgServerOptions};
//!
//! let server = PgServer::start(PgServerOptions::for_tests()).await?;
//! let database = server.create_unique_database("my_test").await?;
//! let client = server.connect(&database).await?;
//! client.batch_execute("SELECT 1").await.ok();
//! # Ok(()) }
//! ```
//!
//! How it works: the binaries come from `SILO_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`. `initdb` runs once per machine
//! into a shared template cluster; every server starts from a copy of it. Temporary
//! servers and the template live in `/dev/shm` when it has room (copies are several times
//! faster there), else in `$TMPDIR`; `SILO_PG_TMPDIR` chooses another place. As root, all
//! PostgreSQL programs run as the OS user `postgres` (PostgreSQL refuses root).

mod binaries;
mod client;
mod command;
mod error;
mod fleet;
mod layout;
mod options;
mod os_user;
mod pg_ctl;
mod server;
mod temp_base;
mod template;
mod watchdog;

pub use binaries::PG_BIN_ENV;
pub use error::PgServerError;
pub use fleet::{shared_servers, start_many};
pub use options::PgServerOptions;
pub use os_user::{give_to_server_user, run_as_server_user};
pub use server::PgServer;
pub use temp_base::PG_TMPDIR_ENV;
pub use template::remove_template_built_here;

/// The address every server listens on.
const HOST: &str = "127.0.0.1";

/// The superuser made by initdb (`-U postgres`).
const SUPERUSER: &str = "postgres";
