//! Running statements on a leased connection: typed binding, typed rows, deadlines that
//! cancel the statement in PostgreSQL, and a session reset before the connection is reused.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_postgres::{CancelToken, NoTls, Statement};

use crate::pool::{PooledConnection, SESSION_RESET, TenantPool};
use crate::request::{Column, Rows, SqlStatement};
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
    #[error("deadline exceeded")]
    DeadlineExceeded,
}

/// A connection lent to one call. Dropping it (the call finished, failed or was
/// cancelled by the caller) cancels a statement still running, resets the session in the
/// background and only then gives the connection back.
pub struct Lease {
    conn: Option<PooledConnection>,
    cancel: CancelToken,
    /// A statement was sent and its answer not yet read.
    busy: bool,
    _permit: Option<OwnedSemaphorePermit>,
    _pool: Arc<TenantPool>,
}

impl Lease {
    pub fn new(
        conn: PooledConnection,
        pool: Arc<TenantPool>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            cancel: conn.cancel.clone(),
            conn: Some(conn),
            busy: false,
            _permit: permit,
            _pool: pool,
        }
    }

    /// The connection and the busy flag, borrowed apart.
    fn split(&mut self) -> (&mut PooledConnection, &mut bool) {
        // Only `Drop` takes the connection out.
        let conn = self
            .conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("lease used after drop"));
        (conn, &mut self.busy)
    }

    pub async fn query(
        &mut self,
        statement: &SqlStatement,
        max_rows: usize,
        deadline: Option<Instant>,
    ) -> Result<Rows, CallError> {
        let (conn, busy) = self.split();
        run(busy, deadline, async move {
            let prepared = prepare(conn, statement).await?;
            let columns = columns(&prepared);
            let stream = conn
                .client
                .query_raw(&prepared, statement.params.iter())
                .await?;
            let mut stream = pin!(stream);
            let mut rows = Vec::new();
            while let Some(row) = stream.next().await {
                if rows.len() == max_rows {
                    return Err(CallError::TooManyRows(max_rows));
                }
                rows.push(read_row(&row?)?);
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
        let (conn, busy) = self.split();
        run(
            busy,
            deadline,
            async move { execute(conn, statement).await },
        )
        .await
    }

    /// The caller went away mid-statement: the drop cancels it.
    fn abandon(&mut self) {
        self.busy = true;
    }

    /// Runs a fixed statement without parameters (transaction control).
    pub async fn simple(
        &mut self,
        sql: &'static str,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        let (conn, busy) = self.split();
        run(busy, deadline, async move {
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
        let (conn, busy) = self.split();
        run(busy, deadline, async move {
            conn.client.batch_execute("BEGIN").await?;
            let mut affected = Vec::with_capacity(statements.len());
            for statement in statements {
                match execute(conn, statement).await {
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
        .await
    }

    /// Streams the rows in batches of `batch_size` (the first batch carries the columns)
    /// until the receiver is dropped, which cancels the statement.
    pub fn stream(
        mut self,
        statement: SqlStatement,
        batch_size: usize,
        deadline: Option<Instant>,
    ) -> mpsc::Receiver<Result<Rows, CallError>> {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let sender = tx.clone();
            let (conn, busy) = self.split();
            let result = run(busy, deadline, async move {
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
                let mut sent_any = false;
                while let Some(row) = stream.next().await {
                    batch.rows.push(read_row(&row?)?);
                    if batch.rows.len() == batch_size {
                        let full = std::mem::take(&mut batch);
                        if sender.send(Ok(full)).await.is_err() {
                            // The caller went away: dropping the lease cancels.
                            return Ok(false);
                        }
                        sent_any = true;
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
        let busy = self.busy;
        let cancel = self.cancel.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.broken = true;
            return;
        };
        runtime.spawn(async move {
            if busy {
                send_cancel(&cancel).await;
            }
            if let Err(e) = conn.client.batch_execute(SESSION_RESET).await {
                tracing::debug!(error = %e, "session reset failed; dropping the connection");
                conn.broken = true;
            }
        });
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
    *busy = matches!(result, Err(CallError::TooManyRows(_)));
    result
}

async fn send_cancel(cancel: &CancelToken) {
    if let Err(e) = cancel.cancel_query(NoTls).await {
        tracing::warn!(error = %e, "cannot send a cancel request");
    }
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

async fn execute(conn: &mut PooledConnection, statement: &SqlStatement) -> Result<u64, CallError> {
    let prepared = prepare(conn, statement).await?;
    Ok(conn
        .client
        .execute_raw(&prepared, statement.params.iter())
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

fn read_row(row: &tokio_postgres::Row) -> Result<Vec<SqlValue>, CallError> {
    (0..row.len())
        .map(|i| row.try_get::<_, SqlValue>(i).map_err(CallError::from))
        .collect()
}
