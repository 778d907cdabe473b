//! One pooled PostgreSQL connection and the bb8 manager that opens them.
//!
//! The manager is our own (not bb8-postgres) because each pooled connection carries its
//! prepared-statement cache, its cancel target and the session reset in flight.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use silo_tls::postgres::PgConnector;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryStream, Statement};
use tokio_util::sync::CancellationToken;

/// Statements prepared per connection before the cache starts over.
const STATEMENT_CACHE_SIZE: usize = 256;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Opening it would take the router over its global connection budget.
    #[error("the global connection budget is used up")]
    Budget,
    /// The server refused or could not be reached.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The route's TLS settings cannot be used (its CA file cannot be read).
    #[error("TLS: {0}")]
    Tls(String),
}

/// A tenant pool's failed connection attempts: how many, and the TLS problem of the last one
/// if TLS was what failed.
#[derive(Default)]
pub struct ConnectFailures {
    count: AtomicU64,
    tls: std::sync::Mutex<Option<String>>,
}

impl ConnectFailures {
    /// Attempts that failed, ever: a wait for a connection that saw this grow was a wait for
    /// an unreachable server, not for a busy pool.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The TLS problem of the last failed attempt; `None` if it failed for another reason.
    pub fn tls_reason(&self) -> Option<String> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, tls: Option<String>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = tls;
    }
}

/// Where a connection's server listens, for cancel requests.
#[derive(Debug, Clone)]
pub(crate) enum Server {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

impl Server {
    /// A host starting with `/` is a Unix-socket directory, as for libpq.
    pub(crate) fn new(host: &str, port: u16) -> Self {
        if host.starts_with('/') {
            Self::Unix(std::path::Path::new(host).join(format!(".s.PGSQL.{port}")))
        } else {
            Self::Tcp(host.to_owned(), port)
        }
    }
}

/// How long a cancel request may take, connecting included.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// One pooled connection.
pub struct PgConnection {
    /// The connection's client; statements run through it.
    pub client: Client,
    cancel: CancelToken,
    /// The TLS connector the connection was opened with; its cancel requests use it too.
    connector: PgConnector,
    server: Server,
    statements: HashMap<String, Statement>,
    /// The answer to the session reset sent when the connection was last given back, not
    /// read yet: the next borrower reads it before using the connection.
    pending_reset: Option<Pin<Box<SimpleQueryStream>>>,
    /// Set when the session could not be reset: the pool drops the connection.
    pub broken: bool,
    /// This connection's share of the global budget, returned when it closes.
    _budget: Option<OwnedSemaphorePermit>,
    /// Cancelled when the connection has ended (the server went away, or it was closed).
    closed: CancellationToken,
}

impl PgConnection {
    /// The statement for `sql`, prepared once per connection, and whether it came from the
    /// cache (`true`) rather than being prepared just now. A cached statement may have gone
    /// stale since (DDL, a type re-created, `DEALLOCATE`): see [`forget`](Self::forget).
    pub async fn prepare_cached(
        &mut self,
        sql: &str,
    ) -> Result<(Statement, bool), tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok((statement.clone(), true));
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= STATEMENT_CACHE_SIZE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok((statement, false))
    }

    /// Drops the cached statement for `sql`: the next use prepares it afresh.
    pub fn forget(&mut self, sql: &str) {
        self.statements.remove(sql);
    }

    /// Drops every cached statement (the server no longer has them), and marks the
    /// connection to be closed when it is given back: tokio-postgres keeps prepared
    /// statements of its own (for type lookups) that may be gone too.
    pub fn forget_all(&mut self) {
        self.statements.clear();
        self.broken = true;
    }

    /// Sends the session reset `sql` without waiting for its answer, which [`settle`]
    /// reads. Sent right after a statement, it goes out in the same write and PostgreSQL
    /// runs it as soon as the statement is done, without a round trip of its own.
    ///
    /// [`settle`]: Self::settle
    pub fn send_reset(&mut self, sql: &'static str) {
        // tokio-postgres queues a simple query in the first poll and only then waits.
        match queue_reset(&self.client, sql) {
            Some(reset) => self.pending_reset = Some(reset),
            None => self.broken = true,
        }
    }

    /// Asks PostgreSQL to cancel what this connection is running and waits until the
    /// server has passed the request on to the backend (it closes the cancel connection
    /// once it has), so the cancel cannot land on a statement sent afterwards.
    pub async fn cancel(&self) -> std::io::Result<()> {
        tokio::time::timeout(CANCEL_TIMEOUT, self.cancel_and_wait())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    async fn cancel_and_wait(&self) -> std::io::Result<()> {
        match &self.server {
            Server::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                // The same TLS as the connection's own (the cancel token carries its
                // sslmode): a server that takes only TLS refuses a plaintext cancel.
                let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                    &mut self.connector.clone(),
                    host,
                )
                .map_err(std::io::Error::other)?;
                self.cancel_over(stream, tls).await
            }
            Server::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                self.cancel_over(stream, NoTls).await
            }
        }
    }

    /// Sends the cancel request over `stream` and reads until the server closes it.
    async fn cancel_over<S, T>(&self, stream: S, tls: T) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        T: TlsConnect<WaitsForClose<S>>,
    {
        self.cancel
            .cancel_query_raw(WaitsForClose(stream), tls)
            .await
            .map_err(std::io::Error::other)
    }

    /// Resolves once the connection has ended: the server closed it (crashed, was
    /// stopped, terminated the backend) or the network failed.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closed.clone().cancelled_owned()
    }

    /// A reset was sent and its answer not read yet.
    pub fn has_pending_reset(&self) -> bool {
        self.pending_reset.is_some()
    }

    /// Reads the answer to the reset sent last (waiting for it if need be). An error means
    /// the session may not be clean.
    pub async fn settle(&mut self) -> Result<(), tokio_postgres::Error> {
        if let Some(mut reset) = self.pending_reset.take() {
            while let Some(message) = reset.next().await {
                message?;
            }
        }
        Ok(())
    }

    /// The client and the slot for a reset, borrowed apart, to send a reset right behind a
    /// statement of the client's.
    pub(crate) fn client_and_reset(
        &mut self,
    ) -> (&Client, &mut Option<Pin<Box<SimpleQueryStream>>>) {
        (&self.client, &mut self.pending_reset)
    }
}

/// Queues `sql` on `client` as a simple query; `None` when the connection is closed.
pub(crate) fn queue_reset(
    client: &Client,
    sql: &'static str,
) -> Option<Pin<Box<SimpleQueryStream>>> {
    match client.simple_query_raw(sql).now_or_never() {
        Some(Ok(reset)) => Some(Box::pin(reset)),
        Some(Err(_)) | None => None,
    }
}

/// A socket whose shutdown completes only once the server has closed its side too: the
/// cancel request (sent in plaintext or inside TLS, then shut down by tokio-postgres) has then
/// been acted on. Whatever arrives meanwhile (a TLS close_notify) is discarded.
pub(crate) struct WaitsForClose<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WaitsForClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for WaitsForClose<S>
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{Poll, ready};
        ready!(Pin::new(&mut self.0).poll_shutdown(cx))?;
        let mut scratch = [0u8; 256];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Opens, checks and recycles one tenant's connections for its bb8 pool.
pub struct PgManager {
    config: tokio_postgres::Config,
    server: Server,
    /// TLS for the route's `sslmode`, or why it cannot be had.
    connector: Result<PgConnector, String>,
    budget: Option<Arc<Semaphore>>,
    failures: Arc<ConnectFailures>,
}

impl PgManager {
    /// Opens connections with `config`; each takes a permit of `budget`, if any.
    pub(crate) fn new(
        config: tokio_postgres::Config,
        server: Server,
        connector: Result<PgConnector, String>,
        budget: Option<Arc<Semaphore>>,
    ) -> Self {
        Self {
            config,
            server,
            connector,
            budget,
            failures: Arc::default(),
        }
    }

    /// The failed connection attempts, shared.
    pub(crate) fn failures(&self) -> Arc<ConnectFailures> {
        self.failures.clone()
    }
}

impl bb8::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = ConnectError;

    async fn connect(&self) -> Result<PgConnection, ConnectError> {
        let budget = match &self.budget {
            Some(budget) => Some(
                budget
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| ConnectError::Budget)?,
            ),
            None => None,
        };
        let connector = match &self.connector {
            Ok(connector) => connector.clone(),
            Err(reason) => {
                self.failures.record(Some(format!("TLS: {reason}")));
                return Err(ConnectError::Tls(reason.clone()));
            }
        };
        let (client, connection) = match self.config.connect(connector.clone()).await {
            Ok(connected) => connected,
            Err(e) => {
                self.failures.record(silo_tls::postgres::tls_failure(&e));
                return Err(e.into());
            }
        };
        let closed = CancellationToken::new();
        let ended = closed.clone().drop_guard();
        tokio::spawn(async move {
            let _ended = ended;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "tenant connection ended with an error");
            }
        });
        let cancel = client.cancel_token();
        Ok(PgConnection {
            client,
            cancel,
            connector,
            server: self.server.clone(),
            statements: HashMap::new(),
            pending_reset: None,
            broken: false,
            _budget: budget,
            closed,
        })
    }

    async fn is_valid(&self, conn: &mut PgConnection) -> Result<(), ConnectError> {
        conn.client.simple_query("").await?;
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

/// A connection lent by a tenant pool; it goes back to the pool when dropped.
pub type PooledConnection = bb8::PooledConnection<'static, PgManager>;
