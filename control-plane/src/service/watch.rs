//! Server streams: an operation's progress, and the tenant-event log. Each stream re-reads
//! the catalog when it changes (or every second at the latest) and ends when the client
//! goes away, the operation is done, or the control plane shuts down.

use std::{pin::Pin, time::Duration};

use futures::Stream;
use silo_proto::controlplane::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use super::convert;
use crate::{catalog::Catalog, error::ControlPlaneError};

pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const RECHECK: Duration = Duration::from_secs(1);
const EVENT_BATCH: i64 = 500;
/// An idle tenant-event stream carries a heartbeat this often (the proto documents it), so
/// that a router can tell a quiet stream from a dead one. The stream re-reads the log at
/// least every [`RECHECK`], which bounds the interval from above.
const HEARTBEAT: Duration = Duration::from_secs(2);
const MIGRATION_UPDATE_INTERVAL: Duration = Duration::from_millis(250);

pub fn operation(
    catalog: Catalog,
    id: Uuid,
    shutdown: CancellationToken,
) -> ResponseStream<pb::Operation> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut last_sent: Option<pb::Operation> = None;
        loop {
            let wait = catalog.changes().wait(RECHECK);
            tokio::pin!(wait);
            let current = match catalog.get_operation(id).await {
                Ok(record) => convert::operation(&record),
                Err(error) => {
                    let _ = tx.send(Err(ControlPlaneError::from(error).into())).await;
                    return;
                }
            };
            let changed = last_sent
                .as_ref()
                .is_none_or(|last| comparable(last) != comparable(&current));
            if changed {
                let done = current.done;
                if tx.send(Ok(current.clone())).await.is_err() || done {
                    return;
                }
                last_sent = Some(current);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                () = &mut wait => {}
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

pub fn migration(
    catalog: Catalog,
    migrations: std::sync::Arc<crate::migrations::MigrationSet>,
    id: Uuid,
    shutdown: CancellationToken,
) -> ResponseStream<pb::MigrationRun> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut last_sent: Option<pb::MigrationRun> = None;
        loop {
            let wait = catalog.changes().wait(super::migrations::WATCH_RECHECK);
            tokio::pin!(wait);
            let run = match catalog.get_operation(id).await {
                Ok(record) => {
                    super::migrations::migration_run(&catalog, &migrations, &record).await
                }
                Err(error) => Err(error.into()),
            };
            let current = match run {
                Ok(run) => run,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            let done = current.operation.as_ref().is_some_and(|op| op.done);
            let changed = last_sent
                .as_ref()
                .is_none_or(|last| last.counts != current.counts || done);
            if changed {
                if tx.send(Ok(current.clone())).await.is_err() || done {
                    return;
                }
                last_sent = Some(current);
                // A run changes with every tenant; a few updates a second are plenty, and
                // reading the whole run on every change would cost as much as the run.
                tokio::time::sleep(MIGRATION_UPDATE_INTERVAL).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                () = &mut wait => {}
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// An operation without the fields that change on every read (running steps' durations).
fn comparable(operation: &pb::Operation) -> pb::Operation {
    let mut copy = operation.clone();
    for step in &mut copy.steps {
        step.duration = None;
    }
    copy
}

/// Where a tenant-event stream starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After the event with this sequence number.
    After(i64),
    /// After the newest event, whose sequence number this is; announced by a heartbeat.
    Head(i64),
}

pub fn tenant_events(
    catalog: Catalog,
    start: Start,
    shutdown: CancellationToken,
) -> ResponseStream<pb::TenantEvent> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut last = match start {
            Start::After(from) => from,
            Start::Head(head) => {
                if tx.send(Ok(convert::heartbeat(head))).await.is_err() {
                    return;
                }
                head
            }
        };
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let wait = catalog.changes().wait(RECHECK);
            tokio::pin!(wait);
            let events = match catalog.events_after(last, EVENT_BATCH).await {
                Ok(events) => events,
                Err(error) => {
                    let _ = tx.send(Err(ControlPlaneError::from(error).into())).await;
                    return;
                }
            };
            let full = events.len() as i64 == EVENT_BATCH;
            for event in &events {
                if tx.send(Ok(convert::event(event))).await.is_err() {
                    return;
                }
                last = event.sequence;
                last_sent = tokio::time::Instant::now();
            }
            if full {
                continue;
            }
            if last_sent.elapsed() >= HEARTBEAT {
                if tx.send(Ok(convert::heartbeat(last))).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                () = &mut wait => {}
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
