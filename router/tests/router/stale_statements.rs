//! The router's prepared-statement cache never fails a call: DDL, a re-created type or
//! enum, a caller's `DEALLOCATE` / `DISCARD`, each of which makes a cached statement stale,
//! is recovered from by preparing afresh, where nothing has run yet.

use silo_proto::router::v1 as pb;
use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;
use tonic::Code;

use crate::harness::{Harness, execute, int, query, text};

/// One connection, so every call reuses the statements the earlier ones cached.
fn single_connection() -> TierLimits {
    TierLimits {
        max_connections: 1,
        ..TierLimits::default()
    }
}

async fn run(harness: &Harness, sql: &str) {
    harness
        .client
        .clone()
        .execute(harness.request("acme", execute(sql, vec![])))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

async fn select(harness: &Harness, sql: &str) -> Result<pb::QueryResponse, tonic::Status> {
    harness
        .client
        .clone()
        .query(harness.request("acme", query(sql, vec![])))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_schema_change_under_a_cached_statement_does_not_fail_the_call() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, single_connection()).await;

    // A column added: the cached plan's result type changes (0A000 before the fix).
    run(&harness, "CREATE TABLE t (a int)").await;
    run(&harness, "INSERT INTO t VALUES (1)").await;
    assert_eq!(
        select(&harness, "SELECT * FROM t")
            .await
            .expect("warm")
            .columns
            .len(),
        1
    );
    run(&harness, "ALTER TABLE t ADD COLUMN b int").await;
    for _ in 0..3 {
        let rows = select(&harness, "SELECT * FROM t")
            .await
            .expect("after ALTER");
        assert_eq!(rows.columns.len(), 2, "the new column is there");
    }

    // The table re-created with another column type: the cached parameter type is stale.
    let mut client = harness.client.clone();
    run(&harness, "CREATE TABLE v (a int)").await;
    client
        .execute(harness.request("acme", execute("INSERT INTO v VALUES ($1)", vec![int(1)])))
        .await
        .expect("warm with an int");
    run(&harness, "DROP TABLE v").await;
    run(&harness, "CREATE TABLE v (a text)").await;
    for _ in 0..2 {
        client
            .execute(harness.request(
                "acme",
                execute("INSERT INTO v VALUES ($1)", vec![text("x")]),
            ))
            .await
            .expect("a string binds to the re-created text column");
    }

    // An enum dropped and re-created: the cached statement names a type that is gone
    // (XX000 cache lookup failed before the fix).
    run(&harness, "CREATE TYPE mood AS ENUM ('ok', 'sad')").await;
    run(&harness, "CREATE TABLE m (x mood)").await;
    run(&harness, "INSERT INTO m VALUES ('ok')").await;
    select(&harness, "SELECT x FROM m").await.expect("warm");
    run(&harness, "DROP TABLE m").await;
    run(&harness, "DROP TYPE mood").await;
    run(&harness, "CREATE TYPE mood AS ENUM ('ok', 'sad', 'glad')").await;
    run(&harness, "CREATE TABLE m (x mood)").await;
    run(&harness, "INSERT INTO m VALUES ('glad')").await;
    for _ in 0..2 {
        let rows = select(&harness, "SELECT x FROM m")
            .await
            .expect("after re-create");
        assert_eq!(rows.rows[0].values[0], text("glad"));
    }

    // An error that has nothing to do with the cache still fails, once.
    let status = select(&harness, "SELECT no_such_column FROM t")
        .await
        .expect_err("bad SQL");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn a_callers_deallocate_or_discard_does_not_break_later_calls() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, single_connection()).await;
    run(&harness, "CREATE TYPE mood AS ENUM ('ok')").await;
    for command in [
        "DEALLOCATE ALL",
        "deallocate prepare all",
        "DISCARD ALL",
        "DISCARD PLANS",
    ] {
        select(&harness, "SELECT 1").await.expect("warm");
        select(&harness, "SELECT 'ok'::mood")
            .await
            .expect("warm a type lookup");
        run(&harness, command).await;
        for _ in 0..3 {
            select(&harness, "SELECT 1")
                .await
                .unwrap_or_else(|e| panic!("after {command}: {e:?}"));
            select(&harness, "SELECT 'ok'::mood")
                .await
                .unwrap_or_else(|e| panic!("after {command}: {e:?}"));
        }
    }

    // Inside one transaction: the statements cached before DEALLOCATE are forgotten.
    use pb::transaction_request::Kind as In;
    let mut transaction = harness.begin("acme").await;
    transaction
        .call(In::Query(query("SELECT 1", vec![])))
        .await
        .expect("warm");
    transaction
        .call(In::Execute(execute("DEALLOCATE ALL", vec![])))
        .await
        .expect("deallocate");
    transaction
        .call(In::Query(query("SELECT 1", vec![])))
        .await
        .expect("after DEALLOCATE in the same transaction");
    transaction
        .call(In::Commit(pb::Commit {}))
        .await
        .expect("commit");
}

#[tokio::test]
async fn a_stale_statement_in_a_transaction_is_retried_only_before_anything_ran() {
    use pb::transaction_request::Kind as In;
    use pb::transaction_response::Kind as Out;

    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, single_connection()).await;
    run(&harness, "CREATE TABLE t (a int)").await;
    run(&harness, "CREATE TABLE log (n int)").await;

    // First statement of the transaction: rolled back, begun again, run afresh.
    select(&harness, "SELECT * FROM t").await.expect("warm");
    run(&harness, "ALTER TABLE t ADD COLUMN b int").await;
    let mut transaction = harness.begin("acme").await;
    let Out::Query(rows) = transaction
        .call(In::Query(query("SELECT * FROM t", vec![])))
        .await
        .expect("retried at the start of the transaction")
    else {
        panic!("a query answer");
    };
    assert_eq!(rows.columns.len(), 2);
    transaction
        .call(In::Execute(execute("INSERT INTO log VALUES (1)", vec![])))
        .await
        .expect("insert");
    transaction
        .call(In::Commit(pb::Commit {}))
        .await
        .expect("commit");

    // After another statement ran: the transaction ends ABORTED (retryable), rolled back.
    select(&harness, "SELECT * FROM t").await.expect("warm");
    run(&harness, "ALTER TABLE t ADD COLUMN c int").await;
    let mut transaction = harness.begin("acme").await;
    transaction
        .call(In::Execute(execute("INSERT INTO log VALUES (2)", vec![])))
        .await
        .expect("insert");
    let status = transaction
        .call(In::Query(query("SELECT * FROM t", vec![])))
        .await
        .expect_err("too late to retry");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    // The caller's retry of the whole transaction works.
    let mut transaction = harness.begin("acme").await;
    transaction
        .call(In::Execute(execute("INSERT INTO log VALUES (3)", vec![])))
        .await
        .expect("insert");
    let Out::Query(rows) = transaction
        .call(In::Query(query("SELECT * FROM t", vec![])))
        .await
        .expect("the retried transaction")
    else {
        panic!("a query answer");
    };
    assert_eq!(rows.columns.len(), 3);
    transaction
        .call(In::Commit(pb::Commit {}))
        .await
        .expect("commit");
    let rows = select(&harness, "SELECT n FROM log ORDER BY n")
        .await
        .expect("log");
    let logged: Vec<_> = rows.rows.iter().map(|row| row.values[0].clone()).collect();
    assert_eq!(
        logged,
        [int(1), int(3)],
        "the aborted transaction left nothing"
    );
}

#[tokio::test]
async fn a_batch_reruns_whole_when_a_cached_statement_is_stale() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, single_connection()).await;
    run(&harness, "CREATE TABLE log (n int)").await;
    run(&harness, "CREATE TABLE v (a int)").await;
    let batch = |params: pb::Value| pb::BatchRequest {
        statements: vec![
            pb::Statement {
                sql: "INSERT INTO log VALUES (1)".into(),
                params: vec![],
            },
            pb::Statement {
                sql: "INSERT INTO v VALUES ($1)".into(),
                params: vec![params],
            },
        ],
    };
    let mut client = harness.client.clone();
    client
        .batch(harness.request("acme", batch(int(1))))
        .await
        .expect("warm");
    run(&harness, "DROP TABLE v").await;
    run(&harness, "CREATE TABLE v (a text)").await;
    client
        .batch(harness.request("acme", batch(text("x"))))
        .await
        .expect("the batch reran with fresh statements");
    let rows = select(&harness, "SELECT count(*) FROM log")
        .await
        .expect("count");
    assert_eq!(
        rows.rows[0].values[0],
        int(2),
        "the first run left nothing behind"
    );
}
