//! A caller that goes away (cancels, lets its deadline pass, drops its connection) on any
//! RPC stops its statement in PostgreSQL at once, and the connection goes back clean.

use std::time::{Duration, Instant};

use silo_proto::router::v1 as pb;
use silo_proto::router::v1::router_client::RouterClient;
use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;

use crate::harness::{Harness, eventually, execute, int, query, running};

const SLEEP: &str = "SELECT pg_sleep(12)";

/// Started, the caller gives up after this long.
const PATIENCE: Duration = Duration::from_millis(400);

/// How soon after the caller left the statement must have stopped. The aim is 100 ms; the
/// bound leaves room for a loaded test machine, and is far below the statement's 12 s.
const STOPPED_WITHIN: Duration = Duration::from_millis(600);

struct Setup {
    harness: Harness,
    admin: tokio_postgres::Client,
}

async fn setup() -> Setup {
    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness
        .add_tenant(
            "acme",
            0,
            TierLimits {
                max_connections: 1,
                ..TierLimits::default()
            },
        )
        .await;
    let admin = harness.servers[0].connect(&database).await.expect("admin");
    harness
        .client
        .clone()
        .execute(harness.request("acme", execute("CREATE TABLE t (id int)", vec![])))
        .await
        .expect("create");
    Setup { harness, admin }
}

impl Setup {
    /// Waits until the statement runs, lets `leave` make the caller go away, then checks
    /// that the backend stopped in time and the (single) connection serves the next call
    /// with nothing left of the abandoned one.
    async fn check(&self, rpc: &str, leave: impl std::future::Future<Output = ()>) {
        eventually(
            Duration::from_secs(5),
            &format!("{rpc}: the statement started"),
            || async { running(&self.admin, SLEEP).await == 1 },
        )
        .await;
        leave.await;
        let left = Instant::now();
        eventually(
            STOPPED_WITHIN,
            &format!("{rpc}: the statement to stop within {STOPPED_WITHIN:?}"),
            || async { running(&self.admin, SLEEP).await == 0 },
        )
        .await;
        println!(
            "{rpc}: statement stopped {:?} after the caller left",
            left.elapsed()
        );
        let mut client = self.harness.client.clone();
        let rows = client
            .query(
                self.harness
                    .request("acme", query("SELECT count(*) FROM t", vec![])),
            )
            .await
            .unwrap_or_else(|e| panic!("{rpc}: the connection serves again: {e:?}"))
            .into_inner();
        assert_eq!(
            rows.rows[0].values[0],
            int(0),
            "{rpc}: nothing of it committed"
        );
    }
}

/// Runs `call` until the statement runs, then drops it (the client resets the stream).
async fn abandon<F>(setup: &Setup, rpc: &str, call: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    let call = tokio::spawn(async move {
        let _ = call.await;
    });
    setup
        .check(rpc, async {
            tokio::time::sleep(PATIENCE).await;
            call.abort();
        })
        .await;
}

#[tokio::test]
async fn a_cancelled_query_stops_its_statement() {
    let setup = setup().await;
    let mut client = setup.harness.client.clone();
    let request = setup.harness.request("acme", query(SLEEP, vec![]));
    abandon(&setup, "Query", async move { client.query(request).await }).await;
}

#[tokio::test]
async fn a_cancelled_execute_stops_its_statement() {
    let setup = setup().await;
    let mut client = setup.harness.client.clone();
    let request = setup.harness.request("acme", execute(SLEEP, vec![]));
    abandon(
        &setup,
        "Execute",
        async move { client.execute(request).await },
    )
    .await;
}

#[tokio::test]
async fn a_cancelled_batch_stops_its_statement() {
    let setup = setup().await;
    let mut client = setup.harness.client.clone();
    let request = setup.harness.request(
        "acme",
        pb::BatchRequest {
            statements: vec![
                pb::Statement {
                    sql: "INSERT INTO t VALUES (1)".into(),
                    params: vec![],
                },
                pb::Statement {
                    sql: SLEEP.into(),
                    params: vec![],
                },
            ],
        },
    );
    abandon(&setup, "Batch", async move { client.batch(request).await }).await;
}

#[tokio::test]
async fn a_cancelled_query_stream_stops_its_statement_before_any_row() {
    let setup = setup().await;
    let mut client = setup.harness.client.clone();
    let request = setup.harness.request(
        "acme",
        pb::QueryStreamRequest {
            statement: crate::harness::statement(SLEEP, vec![]),
            batch_size: 0,
        },
    );
    let mut stream = client
        .query_stream(request)
        .await
        .expect("stream")
        .into_inner();
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    setup
        .check("QueryStream", async {
            tokio::time::sleep(PATIENCE).await;
            reader.abort();
        })
        .await;
}

#[tokio::test]
async fn a_transaction_whose_caller_leaves_mid_statement_is_stopped_and_rolled_back() {
    use pb::transaction_request::Kind as In;
    let setup = setup().await;
    let mut transaction = setup.harness.begin("acme").await;
    transaction
        .call(In::Execute(execute("INSERT INTO t VALUES (1)", vec![])))
        .await
        .expect("insert");
    transaction.send(In::Query(query(SLEEP, vec![]))).await;
    setup
        .check("Transaction", async {
            tokio::time::sleep(PATIENCE).await;
            drop(transaction);
        })
        .await;
}

#[tokio::test]
async fn a_caller_whose_connection_drops_has_its_statement_stopped() {
    let setup = setup().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", setup.harness.address))
            .expect("endpoint")
            .connect()
            .await
            .expect("connects");
    let mut client = RouterClient::new(channel);
    let request = setup.harness.request(
        "acme",
        pb::QueryStreamRequest {
            statement: crate::harness::statement(SLEEP, vec![]),
            batch_size: 0,
        },
    );
    let stream = client
        .query_stream(request)
        .await
        .expect("stream")
        .into_inner();
    setup
        .check("QueryStream, connection dropped", async {
            tokio::time::sleep(PATIENCE).await;
            // The only handles on this HTTP/2 connection: it closes.
            drop(stream);
            drop(client);
        })
        .await;
}
