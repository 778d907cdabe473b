//! Running statements on a leased connection: typed binding, typed rows, deadlines that
//! cancel the statement in PostgreSQL, and a session reset before the connection is reused.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_postgres::Statement;

use crate::connection::PooledConnection;
use crate::pool::TenantPool;
use crate::request::{Column, Rows, SqlStatement};
use crate::session::Residue;
use crate::value::{SqlValue, ValueError, check_column_type};

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
    ParamCount { expected: usize, got: usize },
    #[error("the result has more than {0} rows; use QueryStream or a LIMIT")]
    TooManyRows(usize),
    #[error("the result is larger than {0} bytes; use QueryStream or a LIMIT")]
    TooLarge(usize),
    #[error("a row is larger than {0} bytes, the most one response may carry")]
    RowTooLarge(usize),
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// An interactive transaction waited this long for the caller's next message.
    #[error("the transaction was idle for {} s and is rolled back", .0.as_secs_f32())]
    Idle(std::time::Duration),
}

/// A connection lent to one call. Giving it back (the call finished, failed or was
/// cancelled by the caller) resets the session: the reset is sent without waiting, and the
/// next borrower reads its answer first. A statement still running is cancelled first.
pub struct Lease {
    conn: Option<PooledConnection>,
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
    /// Our own `BEGIN` (Batch, Transaction) is not yet committed or rolled back.
    in_transaction: bool,
    /// The lease serves exactly one statement, so the reset goes out right behind it.
    one_statement: bool,
}

impl SessionState {
    fn reset_sql(&self) -> &'static str {
        let mut residue = self.residue;
        residue.transaction |= self.in_transaction;
        residue.reset_sql()
    }

    /// Notes `sql` as run; returns the reset to send right behind it, if it is the
    /// lease's only statement.
    fn running(&mut self, sql: &str) -> Option<&'static str> {
        self.residue.add(Residue::of(sql));
        self.one_statement.then(|| self.reset_sql())
    }
}

impl Lease {
    /// A lease for any number of statements.
    pub fn new(
        conn: PooledConnection,
        pool: Arc<TenantPool>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            conn: Some(conn),
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
        run(&mut session.busy, deadline, async move {
            let prepared = prepare(conn, statement).await?;
            let columns = columns(&prepared);
            let (client, pending_reset) = conn.client_and_reset();
            let stream = with_reset_behind(
                client,
                pending_reset,
                reset,
                client.query_raw(&prepared, statement.params.iter()),
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
            Ok(Rows { columns, rows })
        })
        .await
    }

    pub async fn execute(
        &mut self,
        statement: &SqlStatement,
        deadline: Option<Instant>,
    ) -> Result<u64, CallError> {
        let (conn, session) = self.split();
        let reset = session.running(&statement.sql);
        run(&mut session.busy, deadline, async move {
            execute(conn, statement, reset).await
        })
        .await
    }

    /// The caller went away mid-statement: the drop cancels it.
    fn abandon(&mut self) {
        self.session.busy = true;
    }

    /// Starts a transaction with `begin` (a `BEGIN ...` statement of our own).
    pub async fn begin(
        &mut self,
        begin: &'static str,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        self.session.in_transaction = true;
        self.simple(begin, deadline).await
    }

    /// Ends the transaction with `COMMIT` (`commit`) or `ROLLBACK`.
    pub async fn end(&mut self, commit: bool, deadline: Option<Instant>) -> Result<(), CallError> {
        self.simple(if commit { "COMMIT" } else { "ROLLBACK" }, deadline)
            .await?;
        self.session.in_transaction = false;
        Ok(())
    }

    /// Runs a fixed statement without parameters (transaction control).
    async fn simple(
        &mut self,
        sql: &'static str,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        let (conn, session) = self.split();
        run(&mut session.busy, deadline, async move {
            conn.client
                .batch_execute(sql)
                .await
                .map_err(CallError::from)
        })
        .await
    }

    /// Runs every statement in one transaction: all or nothing.
    pub async fn batch(
        &mut self,
        statements: &[SqlStatement],
        deadline: Option<Instant>,
    ) -> Result<Vec<u64>, CallError> {
        let (conn, session) = self.split();
        session.in_transaction = true;
        for statement in statements {
            session.residue.add(Residue::of(&statement.sql));
        }
        let affected = run(&mut session.busy, deadline, async move {
            conn.client.batch_execute("BEGIN").await?;
            let mut affected = Vec::with_capacity(statements.len());
            for statement in statements {
                match execute(conn, statement, None).await {
                    Ok(rows) => affected.push(rows),
                    Err(e) => {
                        conn.client.batch_execute("ROLLBACK").await?;
                        return Err(e);
                    }
                }
            }
            conn.client.batch_execute("COMMIT").await?;
            Ok(affected)
        })
        .await;
        // After a failure the drop makes sure the transaction is rolled back.
        session.in_transaction = affected.is_err();
        affected
    }

    /// Streams the rows in batches of `batch_size` rows and about `max_bytes` at most (the
    /// first batch carries the columns) until the receiver is dropped, which cancels the
    /// statement.
    pub fn stream(
        mut self,
        statement: SqlStatement,
        batch_size: usize,
        max_bytes: usize,
        deadline: Option<Instant>,
    ) -> mpsc::Receiver<Result<Rows, CallError>> {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let sender = tx.clone();
            let (conn, session) = self.split();
            session.residue.add(Residue::of(&statement.sql));
            let result = run(&mut session.busy, deadline, async move {
                let prepared = prepare(conn, &statement).await?;
                let stream = conn
                    .client
                    .query_raw(&prepared, statement.params.iter())
                    .await?;
                let mut stream = pin!(stream);
                let mut batch = Rows {
                    columns: columns(&prepared),
                    rows: Vec::with_capacity(batch_size),
                };
                let mut batch_bytes = 0;
                let mut sent_any = false;
                while let Some(row) = stream.next().await {
                    let row = read_row(&row?)?;
                    let bytes = row_size(&row);
                    if bytes > max_bytes {
                        return Err(CallError::RowTooLarge(max_bytes));
                    }
                    if batch_bytes + bytes > max_bytes {
                        if sender.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                            return Ok(false);
                        }
                        sent_any = true;
                        batch_bytes = 0;
                    }
                    batch.rows.push(row);
                    batch_bytes += bytes;
                    if batch.rows.len() == batch_size {
                        let full = std::mem::take(&mut batch);
                        if sender.send(Ok(full)).await.is_err() {
                            // The caller went away: dropping the lease cancels.
                            return Ok(false);
                        }
                        sent_any = true;
                        batch_bytes = 0;
                    }
                }
                if (!batch.rows.is_empty() || !sent_any) && sender.send(Ok(batch)).await.is_err() {
                    return Ok(false);
                }
                Ok(true)
            })
            .await;
            match result {
                Ok(true) => {}
                Ok(false) => self.abandon(),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        rx
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let session = self.session;
        if session.residue.prepared_statement {
            // Only DEALLOCATE removes it, and that would take our statements along.
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
        runtime.spawn(async move {
            if let Err(e) = conn.cancel().await {
                // The statement may still run and a late cancel could hit the next
                // borrower's: this connection is not lent again.
                tracing::warn!(error = %e, "cannot send a cancel request; dropping the connection");
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
        });
    }
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

/// Runs `work` until `deadline`; past it, fails with [`CallError::DeadlineExceeded`] and
/// leaves `busy` set so the lease cancels the statement in PostgreSQL when dropped.
async fn run<T>(
    busy: &mut bool,
    deadline: Option<Instant>,
    work: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    *busy = true;
    let result = match deadline {
        None => work.await,
        Some(deadline) => match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            // `busy` stays set: dropping the lease (right after this error reaches the
            // caller) sends the cancel request, once.
            Err(_) => return Err(CallError::DeadlineExceeded),
        },
    };
    // Rows beyond the limit are still coming: stop the statement rather than drain them.
    *busy = matches!(
        result,
        Err(CallError::TooManyRows(_) | CallError::TooLarge(_) | CallError::RowTooLarge(_))
    );
    result
}

async fn prepare(
    conn: &mut PooledConnection,
    statement: &SqlStatement,
) -> Result<Statement, CallError> {
    let prepared = conn.prepare_cached(&statement.sql).await?;
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
    Ok(prepared)
}

/// Runs `statement`, with the session reset `reset` (if any) right behind it.
async fn execute(
    conn: &mut PooledConnection,
    statement: &SqlStatement,
    reset: Option<&'static str>,
) -> Result<u64, CallError> {
    let prepared = prepare(conn, statement).await?;
    let (client, pending_reset) = conn.client_and_reset();
    Ok(with_reset_behind(
        client,
        pending_reset,
        reset,
        client.execute_raw(&prepared, statement.params.iter()),
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

fn read_row(row: &tokio_postgres::Row) -> Result<Vec<SqlValue>, CallError> {
    (0..row.len())
        .map(|i| row.try_get::<_, SqlValue>(i).map_err(CallError::from))
        .collect()
}
