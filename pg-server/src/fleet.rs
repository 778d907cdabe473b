//! Several servers at once, and the process-wide fleet shared by the tests of one binary.

use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::error::PgServerError;
use crate::options::PgServerOptions;
use crate::server::PgServer;

/// Starts `n` servers with the same options concurrently. If one fails, the others are
/// stopped again and the first error is returned.
pub async fn start_many(
    n: usize,
    options: PgServerOptions,
) -> Result<Vec<PgServer>, PgServerError> {
    if n > 1 && options.data_dir.is_some() {
        return Err(PgServerError::InvalidOptions(
            "several servers cannot share one data directory".into(),
        ));
    }
    if n > 1 && options.port.is_some() {
        return Err(PgServerError::InvalidOptions(
            "several servers cannot share one port".into(),
        ));
    }
    let mut starting = JoinSet::new();
    for index in 0..n {
        let options = options.clone();
        starting.spawn(async move { (index, PgServer::start(options).await) });
    }
    let mut servers: Vec<Option<PgServer>> = (0..n).map(|_| None).collect();
    let mut first_error = None;
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok((index, Ok(server))) => servers[index] = Some(server),
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.into());
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(servers.into_iter().flatten().collect()),
    }
}

/// The first `n` servers of a fleet shared by the whole process, started with
/// [`PgServerOptions::for_tests`] on first use and grown when more are asked for.
///
/// For test binaries that run many tests in one process: give each test its own database
/// ([`PgServer::create_unique_database`]) instead of its own server. Do not stop these
/// servers. They are never dropped; their watchdogs stop them and delete their data when
/// the process exits.
pub async fn shared_servers(n: usize) -> Result<Vec<&'static PgServer>, PgServerError> {
    static FLEET: Mutex<Vec<&'static PgServer>> = Mutex::const_new(Vec::new());
    let mut fleet = FLEET.lock().await;
    if fleet.len() < n {
        let more = start_many(n - fleet.len(), PgServerOptions::for_tests()).await?;
        fleet.extend(
            more.into_iter()
                .map(|server| -> &'static PgServer { Box::leak(Box::new(server)) }),
        );
    }
    Ok(fleet[..n].to_vec())
}
