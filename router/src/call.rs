//! Running statements on a leased connection: typed binding, typed rows, deadlines that
//! cancel the statement in PostgreSQL, and a session reset before the connection is reused.

use std::error::Error as _;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::connection::PooledConnection;
use crate::pool::{TenantPool, Turn};
use crate::request::{Column, Rows, SqlStatement};
use crate::session::Residue;
use crate::value::{SqlValue, ValueError, check_column_type};

/// A server that is down fails every cancel request: one warning per interval.
static CANCEL_FAILED: silo_telemetry::Throttle =
    silo_telemetry::Throttle::new(std::time::Duration::from_secs(10));

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// PostgreSQL refused the statement or the connection failed.
    #[error(transparent)]
    Sql(#[from] tokio_postgres::Error),
    /// A parameter or column value the router cannot convert.
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error("the statement has {expected} parameters, {got} given")]
    /// The statement's parameter count and the request's differ.
    ParamCount {
        /// Parameters the statement declares (`$1` .. `$n`).
        expected: usize,
        /// Parameters the request sent.
        got: usize,
    },
    /// More rows than the call allows (the limit, in rows).
    #[error("the result has more than {0} rows; use QueryStream or a LIMIT")]
    TooManyRows(usize),
    /// A result larger than one response may carry (the limit, in bytes).
    #[error("the result is larger than {0} bytes; use QueryStream or a LIMIT")]
    TooLarge(usize),
    /// One row larger than one response may carry (the limit, in bytes).
    #[error("a row is larger than {0} bytes, the most one response may carry")]
    RowTooLarge(usize),
    /// The call's deadline (or the tier's statement timeout) passed; the statement was cancelled.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// An interactive transaction waited this long for the caller's next message.
    #[error("the transaction was idle for {} s and is rolled back", .0.as_secs_f32())]
    Idle(std::time::Duration),
    /// A statement prepared earlier in the transaction's session no longer matches the
    /// schema (DDL, a type re-created, `DEALLOCATE`) after other statements of the
    /// transaction ran: the transaction is rolled back and may be retried as a whole.
    #[error(
        "the schema changed under a prepared statement in this transaction; it is rolled back \
         and can be retried"
    )]
    StaleStatement,
    /// The connection to the tenant's database ended while the call held it.
    #[error("connection to the tenant database lost; the transaction was rolled back")]
    ConnectionLost,
    /// Our transaction had already ended when the router went to end it: what ran before
    /// may or may not be committed.
    #[error("the transaction had already ended before {0}; its outcome is unknown")]
    TransactionLost(&'static str),
}

/// A connection lent to one call. Giving it back (the call finished, failed or was
/// cancelled by the caller) resets the session: the reset is sent without waiting, and the
/// next borrower reads its answer first. A statement still running is cancelled first.
pub struct Lease {
    conn: Option<PooledConnection>,
    /// Dropped after the connection is back in the pool.
    turn: Option<Turn>,
    session: SessionState,
    _permit: Option<OwnedSemaphorePermit>,
    _pool: Arc<TenantPool>,
}

/// What a lease knows about its session.
#[derive(Debug, Clone, Copy, Default)]
struct SessionState {
    /// A statement was sent and its answer not yet read.
    busy: bool,
    /// What the caller's statements may have left behind.
    residue: Residue,
    /// The `BEGIN ...` of our own transaction (Batch, Transaction), while it is open.
    transaction: Option<&'static str>,
    /// Caller statements run in our open transaction: a stale cached statement is retried
    /// only before the first, when rolling back and beginning again loses nothing.
    statements_in_transaction: usize,
    /// The lease serves exactly one statement, so the reset goes out right behind it.
    one_statement: bool,
    /// The connection's protocol state is unknown (an unexpected message from the server):
    /// it is closed instead of reused.
    poisoned: bool,
}

impl SessionState {
    fn reset_sql(&self) -> &'static str {
        let mut residue = self.residue;
        residue.transaction |= self.transaction.is_some();
        residue.reset_sql()
    }

    /// Notes `sql` as run; returns the reset to send right behind it, if it is the
    /// lease's only statement.
    fn running(&mut self, sql: &str) -> Option<&'static str> {
        self.residue.add(Residue::of(sql));
        self.one_statement.then(|| self.reset_sql())
    }

    /// May a statement that failed on a stale cached statement run again?
    fn may_retry(&self) -> bool {
        self.statements_in_transaction == 0
    }
}

impl Lease {
    /// A lease for any number of statements.
    pub fn new(
        conn: PooledConnection,
        turn: Turn,
        pool: Arc<TenantPool>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            conn: Some(conn),
            turn: Some(turn),
            session: SessionState::default(),
            _permit: permit,
            _pool: pool,
        }
    }

    /// A lease for a single `query` or `execute`: the session reset is sent together with
    /// the statement.
    pub fn for_one_statement(mut self) -> Self {
        self.session.one_statement = true;
        self
    }

    /// Resolves once the leased connection has ended (the server went away).
    pub fn connection_closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        match &self.conn {
            Some(conn) => conn.closed(),
            // Only `Drop` takes the connection out.
            None => unreachable!("lease used after drop"),
        }
    }

    /// The connection and the session state, borrowed apart.
    fn split(&mut self) -> (&mut PooledConnection, &mut SessionState) {
        // Only `Drop` takes the connection out.
        let conn = self
            .conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("lease used after drop"));
        (conn, &mut self.session)
    }

    /// Runs `statement` and returns its rows: at most `max_rows` of them, of about
    /// `max_bytes` in all.
    pub async fn query(
        &mut self,
        statement: &SqlStatement,
        max_rows: usize,
        max_bytes: usize,
        deadline: Option<Instant>,
    ) -> Result<Rows, CallError> {
        let (conn, session) = self.split();
        let reset = session.running(&statement.sql);
        session.busy = true;
        let result = within(deadline, async {
            let mut retried = false;
            loop {
                let attempt = match prepared(conn, statement).await {
                    Ok((prepared, cached)) => {
                        query_rows(conn, &prepared, statement, reset, max_rows, max_bytes)
                            .await
                            .map_err(|e| Failed::of(e, prepared, cached))
                    }
                    Err(failed) => Err(failed),
                };
                match attempt {
                    Ok(rows) => return Ok(rows),
                    Err(failed) => {
                        retry_or_fail(conn, session, statement, failed, &mut retried).await?
                    }
                }
            }
        })
        .await;
        session.finished(&result);
        session.counted();
        if session.residue.prepared_statements {
            conn.forget_all();
        }
        result
    }

    /// Runs `statement`; returns the rows it affected.
    pub async fn execute(
        &mut self,
        statement: &SqlStatement,
        deadline: Option<Instant>,
    ) -> Result<u64, CallError> {
        let (conn, session) = self.split();
        let reset = session.running(&statement.sql);
        session.busy = true;
        let result = within(deadline, async {
            let mut retried = false;
            loop {
                let attempt = match prepared(conn, statement).await {
                    Ok((prepared, cached)) => execute_prepared(conn, &prepared, statement, reset)
                        .await
                        .map_err(|e| Failed::of(e, prepared, cached)),
                    Err(failed) => Err(failed),
                };
                match attempt {
                    Ok(rows) => return Ok(rows),
                    Err(failed) => {
                        retry_or_fail(conn, session, statement, failed, &mut retried).await?
                    }
                }
            }
        })
        .await;
        session.finished(&result);
        session.counted();
        if session.residue.prepared_statements {
            conn.forget_all();
        }
        result
    }

    /// Starts a transaction with `begin` (a `BEGIN ...` statement of our own).
    pub async fn begin(
        &mut self,
        begin: &'static str,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        let (conn, session) = self.split();
        session.transaction = Some(begin);
        session.statements_in_transaction = 0;
        session.busy = true;
        let result = within(deadline, async {
            conn.client
                .batch_execute(begin)
                .await
                .map_err(CallError::from)
        })
        .await;
        session.finished(&result);
        result
    }

    /// Ends our transaction with `COMMIT` (`commit`) or `ROLLBACK`, and fails rather than
    /// report an end that did not happen.
    pub async fn end(&mut self, commit: bool, deadline: Option<Instant>) -> Result<(), CallError> {
        let (conn, session) = self.split();
        session.busy = true;
        let result = within(deadline, end_transaction(conn, session, commit)).await;
        session.finished(&result);
        result
    }

    /// Runs every statement in one transaction: all or nothing. A statement that fails on
    /// a stale cached statement reruns the whole batch once, from a fresh `BEGIN`.
    pub async fn batch(
        &mut self,
        statements: &[SqlStatement],
        deadline: Option<Instant>,
    ) -> Result<Vec<u64>, CallError> {
        let (conn, session) = self.split();
        for statement in statements {
            session.residue.add(Residue::of(&statement.sql));
        }
        session.busy = true;
        let result = within(deadline, async {
            let mut retried = false;
            loop {
                session.transaction = Some("BEGIN");
                conn.client.batch_execute("BEGIN").await?;
                let mut affected = Vec::with_capacity(statements.len());
                let mut failure = None;
                for statement in statements {
                    let attempt = match prepared(conn, statement).await {
                        Ok((prepared, cached)) => {
                            execute_prepared(conn, &prepared, statement, None)
                                .await
                                .map_err(|e| Failed::of(e, prepared, cached))
                        }
                        Err(failed) => Err(failed),
                    };
                    match attempt {
                        Ok(rows) => affected.push(rows),
                        Err(failed) => {
                            failure = Some((statement, failed));
                            break;
                        }
                    }
                }
                let Some((statement, failed)) = failure else {
                    end_transaction(conn, session, true).await?;
                    return Ok(affected);
                };
                conn.client.batch_execute("ROLLBACK").await?;
                session.transaction = None;
                if retried || !refresh(conn, statement, &failed).await? {
                    return Err(failed.error);
                }
                retried = true;
            }
        })
        .await;
        session.finished(&result);
        result
    }

    /// Streams the rows in batches of `batch_size` rows and about `max_bytes` at most (the
    /// first batch carries the columns). When the receiver is dropped (the caller went
    /// away), the statement is cancelled at once, whether or not a row was ready.
    pub fn stream(
        mut self,
        statement: SqlStatement,
        batch_size: usize,
        max_bytes: usize,
        deadline: Option<Instant>,
    ) -> mpsc::Receiver<Result<Rows, CallError>> {
        let (tx, rx) = mpsc::channel(2);
        let span = tracing::Span::current();
        let producer = async move {
            let sender = tx.clone();
            let (conn, session) = self.split();
            session.residue.add(Residue::of(&statement.sql));
            session.busy = true;
            let work = within(deadline, async {
                let statement = &statement;
                let sender = &sender;
                let mut retried = false;
                loop {
                    let mut sent_any = false;
                    let attempt = match prepared(conn, statement).await {
                        Ok((prepared, cached)) => stream_rows(
                            conn,
                            &prepared,
                            statement,
                            sender,
                            batch_size,
                            max_bytes,
                            &mut sent_any,
                        )
                        .await
                        .map_err(|e| Failed::of(e, prepared, cached)),
                        Err(failed) => Err(failed),
                    };
                    match attempt {
                        Ok(()) => return Ok(()),
                        Err(failed) if sent_any => return Err(failed.error),
                        Err(failed) => {
                            retry_or_fail(conn, session, statement, failed, &mut retried).await?
                        }
                    }
                }
            });
            let result = tokio::select! {
                result = work => result,
                // The caller went away: dropping the lease (busy) cancels the statement.
                () = tx.closed() => return,
            };
            if tx.is_closed() {
                return;
            }
            session.finished(&result);
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        };
        // Its log lines carry the call's span (its tenant).
        tokio::spawn(tracing::Instrument::instrument(producer, span));
        rx
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let session = self.session;
        if session.residue.prepared_statements || session.poisoned {
            // Prepared statements changed behind our back, or the protocol state is
            // unknown: a new connection is cheaper than finding out.
            conn.broken = true;
            return;
        }
        let reset_sent = conn.has_pending_reset();
        if !session.busy {
            if !reset_sent {
                conn.send_reset(session.reset_sql());
            }
            // Back to the pool; the next borrower reads the reset's answer first.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.broken = true;
            return;
        };
        // The turn stays taken until the connection is back (or closed).
        let turn = self.turn.take();
        runtime.spawn(async move {
            cancel_and_reset(conn, session, reset_sent).await;
            drop(turn);
        });
    }
}

/// Cancels the statement `conn` is running and resets its session, then gives it back to
/// the pool, or closes it when either fails.
async fn cancel_and_reset(mut conn: PooledConnection, session: SessionState, reset_sent: bool) {
    if let Err(e) = conn.cancel().await {
        // The statement may still run and a late cancel could hit the next borrower's:
        // this connection is not lent again.
        if let Some(held_back) = CANCEL_FAILED.allow() {
            tracing::warn!(error = %e, held_back, "cannot send a cancel request; dropping the connection");
        }
        conn.broken = true;
        return;
    }
    // A reset sent behind the statement may be what the cancel hit: then again.
    let clean = reset_sent && conn.settle().await.is_ok();
    if !clean {
        conn.send_reset(session.reset_sql());
        if let Err(e) = conn.settle().await {
            tracing::debug!(error = %e, "session reset failed; dropping the connection");
            conn.broken = true;
        }
    }
}

/// Ends our open transaction. `SAVEPOINT` goes first in the same message: PostgreSQL
/// refuses it outside a transaction block (25P01) and then skips the rest, so a
/// transaction that something else already ended is reported, never a `COMMIT` or
/// `ROLLBACK` that did nothing. Rolling back an aborted transaction (25P02 for the
/// savepoint) needs the plain `ROLLBACK`.
async fn end_transaction(
    conn: &mut PooledConnection,
    session: &mut SessionState,
    commit: bool,
) -> Result<(), CallError> {
    let (sql, word) = if commit {
        ("SAVEPOINT silo_end; COMMIT", "COMMIT")
    } else {
        ("SAVEPOINT silo_end; ROLLBACK", "ROLLBACK")
    };
    let result = match conn.client.batch_execute(sql).await {
        Err(e) if !commit && e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
            conn.client.batch_execute("ROLLBACK").await
        }
        result => result,
    };
    match result {
        Ok(()) => {
            session.transaction = None;
            Ok(())
        }
        Err(e) if e.code() == Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION) => {
            session.transaction = None;
            Err(CallError::TransactionLost(word))
        }
        // The savepoint was refused in an aborted transaction: it is still open.
        Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => Err(e.into()),
        Err(e) => {
            // A failed COMMIT (a deferred constraint, a serialization failure) has ended
            // the transaction.
            if e.as_db_error().is_some() {
                session.transaction = None;
            }
            Err(e.into())
        }
    }
}

/// `work` until `deadline`; past it, [`CallError::DeadlineExceeded`] (the lease, still
/// busy, cancels the statement in PostgreSQL when dropped).
async fn within<T>(
    deadline: Option<Instant>,
    work: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    match deadline {
        None => work.await,
        Some(deadline) => tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or(Err(CallError::DeadlineExceeded)),
    }
}

impl SessionState {
    /// Notes how a piece of work ended: whether the statement may still be running (rows
    /// beyond a limit still coming, a deadline) and whether the connection can be reused.
    fn finished<T>(&mut self, result: &Result<T, CallError>) {
        self.busy = matches!(
            result,
            Err(CallError::DeadlineExceeded
                | CallError::TooManyRows(_)
                | CallError::TooLarge(_)
                | CallError::RowTooLarge(_)
                | CallError::Value(_))
        );
        if let Err(CallError::Sql(e)) = result
            && crate::error::leaves_connection_unknown(e)
        {
            self.poisoned = true;
        }
    }

    /// Notes a caller statement as run (whatever its outcome) in our transaction, if one
    /// is open.
    fn counted(&mut self) {
        if self.transaction.is_some() {
            self.statements_in_transaction += 1;
        }
    }
}

/// A statement that failed, with the cached statement it ran as (`None` when it was
/// prepared for this very call).
struct Failed {
    error: CallError,
    stale: Option<Statement>,
}

/// The prepared statement for `statement` (from the connection's cache when it can),
/// checked against it, and whether it came from the cache.
async fn prepared(
    conn: &mut PooledConnection,
    statement: &SqlStatement,
) -> Result<(Statement, bool), Failed> {
    let (prepared, cached) = conn
        .prepare_cached(&statement.sql)
        .await
        .map_err(|e| Failed {
            error: e.into(),
            stale: None,
        })?;
    match check(&prepared, statement) {
        Ok(()) => Ok((prepared, cached)),
        Err(error) => Err(Failed::of(error, prepared, cached)),
    }
}

impl Failed {
    /// `error` from running `prepared`, which came from the cache if `cached`.
    fn of(error: CallError, prepared: Statement, cached: bool) -> Self {
        Self {
            error,
            stale: cached.then_some(prepared),
        }
    }
}

/// After a statement failed: `Ok(())` to run it once more on a fresh statement, when the
/// failure came from a stale cached statement, nothing was retried yet and, in our own
/// transaction, no caller statement ran before it (the transaction is rolled back and
/// begun again first). Else the error to answer with.
async fn retry_or_fail(
    conn: &mut PooledConnection,
    session: &mut SessionState,
    statement: &SqlStatement,
    failed: Failed,
    retried: &mut bool,
) -> Result<(), CallError> {
    if *retried || failed.stale.is_none() || staleness(&failed.error).is_none() {
        return Err(failed.error);
    }
    let begin = session.transaction;
    if begin.is_some() {
        if !session.may_retry() {
            // Too late to run it again: forget it so that retrying the transaction works.
            let certain = staleness(&failed.error) == Some(Staleness::Certain);
            conn.forget(&statement.sql);
            return Err(if certain {
                CallError::StaleStatement
            } else {
                failed.error
            });
        }
        conn.client.batch_execute("ROLLBACK").await?;
        session.transaction = None;
    }
    // The reset sent behind the failed statement, if any.
    conn.settle().await?;
    if !refresh(conn, statement, &failed).await? {
        return Err(failed.error);
    }
    if let Some(begin) = begin {
        conn.client.batch_execute(begin).await?;
        session.transaction = Some(begin);
    }
    *retried = true;
    Ok(())
}

/// How likely a failure of a cached statement is to come from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staleness {
    /// The server says so by its SQLSTATE: the statement is gone (26000), the plan's
    /// result type changed (0A000), a type it used was dropped (XX000 cache lookup).
    Certain,
    /// A type or name mismatch that a schema change may have caused: preparing afresh
    /// tells.
    Possible,
}

/// Whether `error`, from a cached statement, may come from the cache. SQLSTATEs, never
/// message texts (servers translate those).
fn staleness(error: &CallError) -> Option<Staleness> {
    match error {
        CallError::Value(_) | CallError::ParamCount { .. } => Some(Staleness::Possible),
        CallError::Sql(e) => match e.code() {
            Some(code)
                if *code == SqlState::INVALID_SQL_STATEMENT_NAME
                    || *code == SqlState::FEATURE_NOT_SUPPORTED
                    || *code == SqlState::INTERNAL_ERROR =>
            {
                Some(Staleness::Certain)
            }
            Some(code) if code.code().starts_with("42") => Some(Staleness::Possible),
            Some(_) => None,
            // A parameter our encoder refused for the statement's (maybe stale) types.
            None => e
                .source()
                .is_some_and(|s| s.is::<ValueError>())
                .then_some(Staleness::Possible),
        },
        _ => None,
    }
}

/// Drops the stale statement of `failed` from the cache; `true` when a fresh one may fare
/// better: the statement is gone from the server (then every cached statement is), or
/// preparing afresh gives other parameter or column types.
async fn refresh(
    conn: &mut PooledConnection,
    statement: &SqlStatement,
    failed: &Failed,
) -> Result<bool, CallError> {
    let (Some(stale), Some(_)) = (&failed.stale, staleness(&failed.error)) else {
        return Ok(false);
    };
    if failed.error_code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
        conn.forget_all();
        return Ok(true);
    }
    conn.forget(&statement.sql);
    let (fresh, _) = conn.prepare_cached(&statement.sql).await?;
    let types = |s: &Statement| -> Vec<(String, Type)> {
        s.columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().clone()))
            .collect()
    };
    Ok(stale.params() != fresh.params() || types(stale) != types(&fresh))
}

impl Failed {
    fn error_code(&self) -> Option<&SqlState> {
        match &self.error {
            CallError::Sql(e) => e.code(),
            _ => None,
        }
    }
}

/// The statement's parameter count and column types, checked before it runs.
fn check(prepared: &Statement, statement: &SqlStatement) -> Result<(), CallError> {
    let expected = prepared.params().len();
    if expected != statement.params.len() {
        return Err(CallError::ParamCount {
            expected,
            got: statement.params.len(),
        });
    }
    for column in prepared.columns() {
        check_column_type(column.type_())?;
    }
    Ok(())
}

/// Runs `prepared` and collects its rows, with the session reset `reset` (if any) right
/// behind it.
async fn query_rows(
    conn: &mut PooledConnection,
    prepared: &Statement,
    statement: &SqlStatement,
    reset: Option<&'static str>,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Rows, CallError> {
    let (client, pending_reset) = conn.client_and_reset();
    let stream = with_reset_behind(
        client,
        pending_reset,
        reset,
        client.query_raw(prepared, statement.params.iter()),
    )
    .await?;
    let mut stream = pin!(stream);
    let mut rows = Vec::new();
    let mut bytes = 0;
    while let Some(row) = stream.next().await {
        if rows.len() == max_rows {
            return Err(CallError::TooManyRows(max_rows));
        }
        let row = read_row(&row?)?;
        bytes += row_size(&row);
        if bytes > max_bytes {
            return Err(CallError::TooLarge(max_bytes));
        }
        rows.push(row);
    }
    Ok(Rows {
        columns: columns(prepared),
        rows,
    })
}

/// Runs `prepared` and sends its rows to `sender` in batches; stops early (`Ok`) when the
/// receiver is gone. `sent_any` tells whether a batch went out.
async fn stream_rows(
    conn: &mut PooledConnection,
    prepared: &Statement,
    statement: &SqlStatement,
    sender: &mpsc::Sender<Result<Rows, CallError>>,
    batch_size: usize,
    max_bytes: usize,
    sent_any: &mut bool,
) -> Result<(), CallError> {
    let stream = conn
        .client
        .query_raw(prepared, statement.params.iter())
        .await?;
    let mut stream = pin!(stream);
    let mut batch = Rows {
        columns: columns(prepared),
        rows: Vec::with_capacity(batch_size),
    };
    let mut batch_bytes = 0;
    while let Some(row) = stream.next().await {
        let row = read_row(&row?)?;
        let bytes = row_size(&row);
        if bytes > max_bytes {
            return Err(CallError::RowTooLarge(max_bytes));
        }
        if batch_bytes + bytes > max_bytes {
            if sender.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                return Ok(());
            }
            *sent_any = true;
            batch_bytes = 0;
        }
        batch.rows.push(row);
        batch_bytes += bytes;
        if batch.rows.len() == batch_size {
            if sender.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                return Ok(());
            }
            *sent_any = true;
            batch_bytes = 0;
        }
    }
    if !batch.rows.is_empty() || !*sent_any {
        // A receiver gone by now changes nothing: every row has been read.
        let _ = sender.send(Ok(batch)).await;
    }
    Ok(())
}

/// Awaits `call`, a statement on `client`, with the session reset `reset` (if any) sent
/// right behind the statement: the first poll of a tokio-postgres call sends its messages,
/// so the reset is queued after them and goes out in the same write.
async fn with_reset_behind<F: Future>(
    client: &tokio_postgres::Client,
    pending_reset: &mut Option<std::pin::Pin<Box<tokio_postgres::SimpleQueryStream>>>,
    reset: Option<&'static str>,
    call: F,
) -> F::Output {
    let mut call = pin!(call);
    let Some(reset) = reset else {
        return call.await;
    };
    let first = futures::poll!(call.as_mut());
    *pending_reset = crate::connection::queue_reset(client, reset);
    match first {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => call.await,
    }
}

/// Runs `prepared`, with the session reset `reset` (if any) right behind it.
async fn execute_prepared(
    conn: &mut PooledConnection,
    prepared: &Statement,
    statement: &SqlStatement,
    reset: Option<&'static str>,
) -> Result<u64, CallError> {
    let (client, pending_reset) = conn.client_and_reset();
    Ok(with_reset_behind(
        client,
        pending_reset,
        reset,
        client.execute_raw(prepared, statement.params.iter()),
    )
    .await?)
}

fn columns(statement: &Statement) -> Vec<Column> {
    statement
        .columns()
        .iter()
        .map(|column| Column {
            name: column.name().to_owned(),
            type_name: column.type_().name().to_owned(),
        })
        .collect()
}

/// About the size of `row` in a response message.
fn row_size(row: &[SqlValue]) -> usize {
    /// The `Row` wrapper.
    const FRAMING: usize = 6;
    FRAMING + row.iter().map(SqlValue::wire_size).sum::<usize>()
}

/// The row's values. A value that cannot be read is a [`CallError::Value`] whatever
/// failed underneath.
fn read_row(row: &tokio_postgres::Row) -> Result<Vec<SqlValue>, CallError> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, SqlValue>(i).map_err(|e| {
                let value = e.source().and_then(|s| s.downcast_ref::<ValueError>());
                CallError::Value(value.cloned().unwrap_or_else(|| {
                    ValueError::Unreadable(row.columns()[i].type_().name().to_owned())
                }))
            })
        })
        .collect()
}
