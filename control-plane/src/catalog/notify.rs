//! Wakes watchers and workers when the catalog changes: at once for this process's own
//! writes, and through LISTEN/NOTIFY for other replicas' writes. Watchers also re-read on a
//! short timer, so a lost notification only delays, never loses, an update.

use std::time::Duration;

use futures::{StreamExt, stream};
use silo_tls::postgres::PgConnector;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

pub(crate) const CHANNEL: &str = "silo_catalog";

/// The wake-up signal of one process: `notify` after a local write, and the LISTEN task for
/// other replicas' writes, wake everyone waiting in `wait`.
#[derive(Debug, Default)]
pub struct CatalogChanges {
    notify: Notify,
}

impl CatalogChanges {
    /// Wakes every task waiting for a change now (not later ones).
    pub fn notify(&self) {
        self.notify.notify_waiters();
    }

    /// Waits for the next change, or at most `timeout`. Changes from the moment this is
    /// called count, even before the returned future is first polled.
    pub fn wait(&self, timeout: Duration) -> impl Future<Output = ()> + Send + '_ {
        let notified = self.notify.notified();
        async move {
            let _ = tokio::time::timeout(timeout, notified).await;
        }
    }
}

pub(crate) fn spawn_listener(
    config: tokio_postgres::Config,
    connector: PgConnector,
    changes: std::sync::Arc<CatalogChanges>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let listened = tokio::select! {
                () = shutdown.cancelled() => return,
                result = listen(&config, &connector, &changes) => result,
            };
            if let Err(error) = listened {
                tracing::debug!(error = %error, "catalog listener reconnecting");
            }
            changes.notify();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn listen(
    config: &tokio_postgres::Config,
    connector: &PgConnector,
    changes: &CatalogChanges,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(connector.clone()).await?;
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    // The connection must be driven while LISTEN runs.
    loop {
        tokio::select! {
            result = &mut listen => { result?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    }
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(_) = message? {
            changes.notify();
        }
    }
    Ok(())
}
