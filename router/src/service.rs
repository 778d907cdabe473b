//! The `silo.router.v1.Router` gRPC service: proto in, domain types through, `Status` out
//! (built only by `From<RouterError>`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use silo_proto::router::v1 as pb;
use silo_proto::router::v1::router_server::Router;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::call::{CallError, Lease};
use crate::core::{CallLimits, RouterCore};
use crate::error::RouterError;
use crate::identity::TENANT_HEADER;
use crate::request::{RequestError, SqlStatement};
use crate::routes::RouteSource;
use crate::tenant::TenantId;
use crate::usage::{CallUsage, method};
use prost::Message as _;

/// Answer before the caller's own deadline fires, so it sees DEADLINE_EXCEEDED from us.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// A server stream of `T` or a status ending it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Counts the rows a streaming call returned or affected and records the total as the
/// call span's `rows` when the call ends (when the response stream is dropped): the
/// rows of QueryStream and Transaction flow after the handler has returned.
struct SpanRows {
    span: tracing::Span,
    rows: u64,
}

impl SpanRows {
    /// Counts for the current (the call's) span.
    fn current() -> Self {
        Self {
            span: tracing::Span::current(),
            rows: 0,
        }
    }

    fn add(&mut self, rows: u64) {
        self.rows += rows;
    }
}

impl Drop for SpanRows {
    fn drop(&mut self) {
        self.span.record("rows", self.rows);
    }
}

/// A QueryStream's batches, accounted to the call's usage as they go out: the call ends
/// with its last message's code (OK when the rows ran out, CANCELLED when the caller went
/// away first); its database time is from the statement's start to its last row (which
/// includes the caller's reading pace).
struct MeteredBatches<S> {
    inner: S,
    usage: Option<CallUsage>,
    started: std::time::Instant,
}

impl<S> Stream for MeteredBatches<S>
where
    S: Stream<Item = Result<pb::RowBatch, Status>> + Unpin,
{
    type Item = Result<pb::RowBatch, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        match &polled {
            std::task::Poll::Ready(Some(item)) => {
                if let Some(usage) = self.usage.as_mut() {
                    match item {
                        Ok(batch) => {
                            usage.rows_returned(batch.rows.len() as u64);
                            usage.bytes_out(batch.encoded_len());
                        }
                        Err(status) => usage.set_code(status.code()),
                    }
                }
            }
            std::task::Poll::Ready(None) => {
                let started = self.started;
                if let Some(mut usage) = self.usage.take() {
                    usage.db_time(started.elapsed());
                    usage.set_code(tonic::Code::Ok);
                }
            }
            std::task::Poll::Pending => {}
        }
        polled
    }
}

/// The Router gRPC service over a [`RouterCore`] with route source `S`.
pub struct RouterService<S> {
    core: Arc<RouterCore<S>>,
    transaction_idle_timeout: Duration,
}

impl<S: RouteSource> RouterService<S> {
    /// The service over `core`; a Transaction stream without a message for
    /// `transaction_idle_timeout` is rolled back.
    pub fn new(core: Arc<RouterCore<S>>, transaction_idle_timeout: Duration) -> Self {
        Self {
            core,
            transaction_idle_timeout,
        }
    }

    /// The call's tenant, recorded on the request span.
    fn tenant<T>(&self, request: &Request<T>) -> Result<TenantId, RouterError> {
        let metadata = request.metadata();
        let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let tenant = self
            .core
            .auth
            .authenticate(header("authorization"), header(TENANT_HEADER))?;
        tracing::Span::current().record("tenant_id", tracing::field::display(&tenant));
        if let Some(slot) = request.extensions().get::<silo_telemetry::CallTenant>() {
            slot.set(tenant.as_str());
        }
        Ok(tenant)
    }

    /// The call's tenant and deadline.
    fn admit<T>(&self, request: &Request<T>) -> Result<(TenantId, Option<Instant>), RouterError> {
        Ok((self.tenant(request)?, deadline(request)))
    }

    /// Query, once admitted.
    async fn query_in(
        &self,
        tenant: &TenantId,
        deadline: Option<Instant>,
        message: pb::QueryRequest,
        usage: &mut CallUsage,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let statement = SqlStatement::try_from(message.statement).map_err(RouterError::from)?;
        let limits = &self.core.limits;
        let max_rows = clamp_rows(message.max_rows, limits.default_max_rows, limits.max_rows);
        let mut lease = self.core.lease(tenant, deadline).await?.for_one_statement();
        let started = std::time::Instant::now();
        let rows = lease
            .query(&statement, max_rows, limits.max_response_bytes, deadline)
            .await;
        usage.db_time(started.elapsed());
        let rows = rows.map_err(RouterError::from)?;
        tracing::Span::current().record("rows", rows.rows.len() as u64);
        usage.rows_returned(rows.rows.len() as u64);
        let response = pb::QueryResponse::from(rows);
        usage.bytes_out(response.encoded_len());
        Ok(Response::new(response))
    }

    /// Execute, once admitted.
    async fn execute_in(
        &self,
        tenant: &TenantId,
        deadline: Option<Instant>,
        message: pb::ExecuteRequest,
        usage: &mut CallUsage,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let statement = SqlStatement::try_from(message.statement).map_err(RouterError::from)?;
        let mut lease = self.core.lease(tenant, deadline).await?.for_one_statement();
        let started = std::time::Instant::now();
        let rows_affected = lease.execute(&statement, deadline).await;
        usage.db_time(started.elapsed());
        let rows_affected = rows_affected.map_err(RouterError::from)?;
        tracing::Span::current().record("rows", rows_affected);
        usage.rows_affected(rows_affected);
        let response = pb::ExecuteResponse { rows_affected };
        usage.bytes_out(response.encoded_len());
        Ok(Response::new(response))
    }

    /// Batch, once admitted.
    async fn batch_in(
        &self,
        tenant: &TenantId,
        deadline: Option<Instant>,
        message: pb::BatchRequest,
        usage: &mut CallUsage,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let statements = message
            .statements
            .into_iter()
            .map(|statement| SqlStatement::try_from(Some(statement))?.inside_transaction())
            .collect::<Result<Vec<_>, _>>()
            .map_err(RouterError::from)?;
        if statements.is_empty() {
            return Err(RouterError::from(RequestError::EmptyBatch).into());
        }
        let mut lease = self.core.lease(tenant, deadline).await?;
        let started = std::time::Instant::now();
        let rows_affected = lease.batch(&statements, deadline).await;
        usage.db_time(started.elapsed());
        let rows_affected = rows_affected.map_err(RouterError::from)?;
        let total = rows_affected.iter().sum::<u64>();
        tracing::Span::current().record("rows", total);
        usage.rows_affected(total);
        let response = pb::BatchResponse { rows_affected };
        usage.bytes_out(response.encoded_len());
        Ok(Response::new(response))
    }
}

/// The gRPC deadline (`grpc-timeout`), less a small margin.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    let margin = DEADLINE_MARGIN.max(timeout / 20);
    Some(Instant::now() + timeout.saturating_sub(margin))
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

fn clamp_rows(requested: u32, default: usize, max: usize) -> usize {
    match requested {
        0 => default,
        n => (n as usize).min(max),
    }
}

#[tonic::async_trait]
impl<S: RouteSource> Router for RouterService<S> {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let (tenant, deadline) = self.admit(&request)?;
        let mut usage =
            self.core
                .usage
                .begin(&tenant, method::QUERY, request.get_ref().encoded_len());
        let result = self
            .query_in(&tenant, deadline, request.into_inner(), &mut usage)
            .await;
        usage.finish_with(&result);
        result
    }

    type QueryStreamStream = ResponseStream<pb::RowBatch>;

    async fn query_stream(
        &self,
        request: Request<pb::QueryStreamRequest>,
    ) -> Result<Response<Self::QueryStreamStream>, Status> {
        let (tenant, deadline) = self.admit(&request)?;
        let mut usage = self.core.usage.begin(
            &tenant,
            method::QUERY_STREAM,
            request.get_ref().encoded_len(),
        );
        let message = request.into_inner();
        let statement = match SqlStatement::try_from(message.statement) {
            Ok(statement) => statement,
            Err(error) => {
                let status = Status::from(RouterError::from(error));
                usage.set_code(status.code());
                return Err(status);
            }
        };
        let limits = &self.core.limits;
        let batch_size = clamp_rows(
            message.batch_size,
            limits.default_batch_size,
            limits.max_batch_size,
        );
        let lease = match self.core.lease(&tenant, deadline).await {
            Ok(lease) => lease,
            Err(error) => {
                let status = Status::from(error);
                usage.set_code(status.code());
                return Err(status);
            }
        };
        let batches = lease.stream(statement, batch_size, limits.max_response_bytes, deadline);
        let mut counted = SpanRows::current();
        let stream = ReceiverStream::new(batches).map(move |batch| {
            if let Ok(batch) = &batch {
                counted.add(batch.rows.len() as u64);
            }
            batch
                .map(pb::RowBatch::from)
                .map_err(|e| Status::from(RouterError::from(e)))
        });
        let stream = MeteredBatches {
            inner: stream,
            usage: Some(usage),
            started: std::time::Instant::now(),
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let (tenant, deadline) = self.admit(&request)?;
        let mut usage =
            self.core
                .usage
                .begin(&tenant, method::EXECUTE, request.get_ref().encoded_len());
        let result = self
            .execute_in(&tenant, deadline, request.into_inner(), &mut usage)
            .await;
        usage.finish_with(&result);
        result
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let (tenant, deadline) = self.admit(&request)?;
        let mut usage =
            self.core
                .usage
                .begin(&tenant, method::BATCH, request.get_ref().encoded_len());
        let result = self
            .batch_in(&tenant, deadline, request.into_inner(), &mut usage)
            .await;
        usage.finish_with(&result);
        result
    }

    type TransactionStream = ResponseStream<pb::TransactionResponse>;

    async fn transaction(
        &self,
        request: Request<Streaming<pb::TransactionRequest>>,
    ) -> Result<Response<Self::TransactionStream>, Status> {
        let (tenant, deadline) = self.admit(&request)?;
        let mut usage = self.core.usage.begin(&tenant, method::TRANSACTION, 0);
        let mut incoming = request.into_inner();
        let idle = self.transaction_idle_timeout;
        let opened = async {
            let first = next_message(&mut incoming, idle).await?;
            let Some(pb::transaction_request::Kind::Begin(begin)) = first else {
                return Err(Status::from(RouterError::from(RequestError::Invalid(
                    "a transaction starts with begin",
                ))));
            };
            usage.bytes_in(begin.encoded_len());
            let revocation = self.core.watch_revocation(&tenant);
            let mut lease = self.core.lease(&tenant, deadline).await?;
            let started = std::time::Instant::now();
            let begun = lease.begin(begin_sql(&begin), deadline).await;
            usage.db_time(started.elapsed());
            begun.map_err(RouterError::from)?;
            Ok((begin, revocation, lease))
        }
        .await;
        let (begin, mut revocation, mut lease) = match opened {
            Ok(opened) => opened,
            Err(status) => {
                usage.set_code(status.code());
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let core = self.core.clone();
        let mut counted = SpanRows::current();
        let span = counted.span.clone();
        let transaction = async move {
            use pb::transaction_response::Kind as Out;
            let send = |kind| pb::TransactionResponse { kind: Some(kind) };
            let begun = send(Out::Begun(begin));
            usage.bytes_out(begun.encoded_len());
            if tx.send(Ok(begun)).await.is_err() {
                return;
            }
            // Every return without COMMIT drops the lease, whose reset rolls back (and
            // cancels a statement still running first): when the caller has gone away,
            // when the tenant stops being servable, and on any error.
            loop {
                let next = tokio::select! {
                    next = next_message(&mut incoming, idle) => next,
                    reason = revocation.revoked(&core) => Err(RouterError::from(reason).into()),
                    // The server went away while the caller was thinking: the transaction
                    // is gone (PostgreSQL rolled it back); free the slot now.
                    () = lease.connection_closed() => Err(RouterError::from(CallError::ConnectionLost).into()),
                    () = tx.closed() => return,
                };
                let message = match next {
                    Ok(Some(message)) => message,
                    // The caller closed its side without COMMIT: rolled back, as asked.
                    Ok(None) => {
                        usage.set_code(tonic::Code::Ok);
                        return;
                    }
                    Err(status) => {
                        usage.set_code(status.code());
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                usage.bytes_in(message.encoded_len());
                let started = std::time::Instant::now();
                let result = tokio::select! {
                    result = step(&mut lease, message, &core.limits, deadline) => result,
                    reason = revocation.revoked(&core) => Err(reason.into()),
                    () = tx.closed() => return,
                };
                usage.db_time(started.elapsed());
                match result {
                    Ok(out) => {
                        match &out {
                            Out::Query(rows) => {
                                counted.add(rows.rows.len() as u64);
                                usage.rows_returned(rows.rows.len() as u64);
                            }
                            Out::Execute(executed) => {
                                counted.add(executed.rows_affected);
                                usage.rows_affected(executed.rows_affected);
                            }
                            _ => {}
                        }
                        let done = matches!(out, Out::Committed(_) | Out::RolledBack(_));
                        let out = send(out);
                        usage.bytes_out(out.encoded_len());
                        if done {
                            usage.set_code(tonic::Code::Ok);
                        }
                        if tx.send(Ok(out)).await.is_err() || done {
                            return;
                        }
                    }
                    Err(error) => {
                        let status = Status::from(error);
                        usage.set_code(status.code());
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        };
        // The task's log lines carry the call's span (its tenant), which ends with it.
        tokio::spawn(tracing::Instrument::instrument(transaction, span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let tenant = self.tenant(&request)?;
        let config = self.core.config(&tenant).await?;
        let if_version = request.into_inner().if_version;
        let not_modified = !if_version.is_empty() && if_version == config.version;
        Ok(Response::new(pb::TenantConfig {
            version: config.version.clone(),
            settings: if not_modified {
                Default::default()
            } else {
                config
                    .settings
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            },
            not_modified,
        }))
    }
}

/// Runs one message of an open transaction.
async fn step(
    lease: &mut Lease,
    message: pb::transaction_request::Kind,
    limits: &CallLimits,
    deadline: Option<Instant>,
) -> Result<pb::transaction_response::Kind, RouterError> {
    use pb::transaction_request::Kind as In;
    use pb::transaction_response::Kind as Out;
    Ok(match message {
        In::Begin(_) => return Err(RequestError::Invalid("the transaction has begun").into()),
        In::Query(query) => {
            let statement = SqlStatement::try_from(query.statement)?.inside_transaction()?;
            let max_rows = clamp_rows(query.max_rows, limits.default_max_rows, limits.max_rows);
            let rows = lease
                .query(&statement, max_rows, limits.max_response_bytes, deadline)
                .await?;
            Out::Query(rows.into())
        }
        In::Execute(execute) => {
            let statement = SqlStatement::try_from(execute.statement)?.inside_transaction()?;
            let rows_affected = lease.execute(&statement, deadline).await?;
            Out::Execute(pb::ExecuteResponse { rows_affected })
        }
        In::Commit(commit) => {
            lease.end(true, deadline).await?;
            Out::Committed(commit)
        }
        In::Rollback(rollback) => {
            lease.end(false, deadline).await?;
            Out::RolledBack(rollback)
        }
    })
}

/// The next message of a transaction stream, or an error after `idle` without one.
async fn next_message(
    incoming: &mut Streaming<pb::TransactionRequest>,
    idle: Duration,
) -> Result<Option<pb::transaction_request::Kind>, Status> {
    match tokio::time::timeout(idle, incoming.message()).await {
        Err(_) => Err(RouterError::from(CallError::Idle(idle)).into()),
        Ok(Ok(Some(message))) => match message.kind {
            Some(kind) => Ok(Some(kind)),
            None => {
                Err(RouterError::from(RequestError::Invalid("empty transaction message")).into())
            }
        },
        Ok(Ok(None)) => Ok(None),
        Ok(Err(status)) => Err(status),
    }
}

fn begin_sql(begin: &pb::Begin) -> &'static str {
    use pb::IsolationLevel as Level;
    let level = Level::try_from(begin.isolation_level).unwrap_or(Level::Unspecified);
    match (level, begin.read_only) {
        (Level::Unspecified | Level::ReadCommitted, false) => {
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        }
        (Level::Unspecified | Level::ReadCommitted, true) => {
            "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"
        }
        (Level::RepeatableRead, false) => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        (Level::RepeatableRead, true) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        (Level::Serializable, false) => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        (Level::Serializable, true) => "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
    }
}
