//! The clients of the moves bench: each writes `writes (client, n)` and reads its count back
//! through the router, and notes its slowest call and its failed calls.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

use silo_proto::router::v1 as rpb;
use silo_tests::router::{TestRouter, call, int, statement, tenant_token};

/// Each client's pause after a write and a read: four clients stay under the default
/// tier's 1,000 calls a second, so the router's rate limit does not refuse them.
const CLIENT_PAUSE: Duration = Duration::from_millis(10);

/// What the clients saw since it was last taken.
#[derive(Default)]
pub(crate) struct Observed {
    pub(crate) slowest: Duration,
    pub(crate) failures: Vec<String>,
}

/// Clients writing `writes (client, n)` and reading their count back through the router.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    observed: Arc<Mutex<Observed>>,
    clients: Vec<tokio::task::JoinHandle<(i64, Vec<i64>)>>,
}

impl Load {
    pub(crate) fn start(
        router: &TestRouter,
        tenant: &str,
        clients: i64,
        deadline: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let token = tenant_token(tenant);
        let clients = (0..clients)
            .map(|client| {
                let (stop, observed) = (stop.clone(), observed.clone());
                let (mut router, token) = (router.client.clone(), token.clone());
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let mut write = call(
                            rpb::ExecuteRequest {
                                statement: statement(
                                    "INSERT INTO writes VALUES ($1, $2)",
                                    vec![int(client), int(n)],
                                ),
                            },
                            &token,
                            None,
                        );
                        write.set_timeout(deadline);
                        let started = Instant::now();
                        let mut failures = Vec::new();
                        match router.execute(write).await {
                            Ok(_) => acknowledged.push(n),
                            Err(status) => failures.push(("INSERT", status)),
                        }
                        let wrote = started.elapsed();
                        let mut read = call(
                            rpb::QueryRequest {
                                statement: statement(
                                    "SELECT count(*) FROM writes WHERE client = $1",
                                    vec![int(client)],
                                ),
                                max_rows: 0,
                            },
                            &token,
                            None,
                        );
                        read.set_timeout(deadline);
                        let started = Instant::now();
                        if let Err(status) = router.query(read).await {
                            failures.push(("SELECT", status));
                        }
                        let slowest = wrote.max(started.elapsed());
                        {
                            let mut observed = observed.lock().expect("observed");
                            observed.slowest = observed.slowest.max(slowest);
                            for (what, status) in failures {
                                observed.failures.push(format!(
                                    "{what}: {:?}: {}",
                                    status.code(),
                                    status.message()
                                ));
                            }
                        }
                        tokio::time::sleep(CLIENT_PAUSE).await;
                    }
                    (client, acknowledged)
                })
            })
            .collect();
        Self {
            stop,
            observed,
            clients,
        }
    }

    /// What the clients saw since the last call, and a fresh start.
    pub(crate) fn take(&self) -> Observed {
        std::mem::take(&mut *self.observed.lock().expect("observed"))
    }

    /// Stops the clients; each one's acknowledged writes.
    pub(crate) async fn stop(self) -> Vec<(i64, Vec<i64>)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut written = Vec::new();
        for client in self.clients {
            written.push(client.await.expect("client task"));
        }
        written
    }
}
