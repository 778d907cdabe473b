//! Inside Batch and Transaction the router owns the transaction: a caller's statement
//! that would end or start it is refused before it runs, savepoints work, and the answer
//! always says what was committed.

use silo_proto::router::v1 as pb;
use silo_router::call::CallError;
use silo_router::pool::PoolConfig;
use silo_router::request::SqlStatement;
use silo_router::tenant::TierLimits;
use tonic::Code;

use crate::harness::{Harness, execute, int, query, tenant_id};

async fn count(harness: &Harness, sql: &str) -> pb::Value {
    let rows = harness
        .client
        .clone()
        .query(harness.request("acme", query(sql, vec![])))
        .await
        .expect("query")
        .into_inner();
    rows.rows[0].values[0].clone()
}

const TRANSACTION_CONTROL: [&str; 13] = [
    "COMMIT",
    "commit and chain",
    "END",
    "ROLLBACK",
    "rollback and chain",
    "ABORT",
    "BEGIN",
    "START TRANSACTION",
    "/* a comment */ COMMIT",
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    "ROLLBACK PREPARED 'x'",
    "-- note\nend work",
];

#[tokio::test]
async fn a_transaction_stream_refuses_statements_that_end_or_start_it() {
    use pb::transaction_request::Kind as In;
    use pb::transaction_response::Kind as Out;

    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    harness
        .client
        .clone()
        .execute(harness.request("acme", execute("CREATE TABLE t (id int)", vec![])))
        .await
        .expect("create");

    for (i, sql) in TRANSACTION_CONTROL.into_iter().enumerate() {
        let mut transaction = harness.begin("acme").await;
        let id = i64::try_from(i).expect("small");
        transaction
            .call(In::Execute(execute(
                "INSERT INTO t VALUES ($1)",
                vec![int(id)],
            )))
            .await
            .expect("insert");
        for message in [
            In::Execute(execute(sql, vec![])),
            In::Query(query(sql, vec![])),
        ] {
            let mut transaction = harness.begin("acme").await;
            let status = transaction.call(message).await.expect_err(sql);
            assert_eq!(status.code(), Code::InvalidArgument, "{sql}: {status:?}");
        }
        let status = transaction
            .call(In::Execute(execute(sql, vec![])))
            .await
            .expect_err(sql);
        assert_eq!(status.code(), Code::InvalidArgument, "{sql}: {status:?}");
        assert!(status.message().contains("SAVEPOINT"), "{status:?}");
    }
    // The input: INSERT (1), COMMIT, INSERT (2), rollback: nothing is committed.
    let mut transaction = harness.begin("acme").await;
    transaction
        .call(In::Execute(execute("INSERT INTO t VALUES (100)", vec![])))
        .await
        .expect("insert");
    let status = transaction
        .call(In::Execute(execute("COMMIT", vec![])))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    drop(transaction);
    assert_eq!(count(&harness, "SELECT count(*) FROM t").await, int(0));

    // Savepoints stay allowed.
    let mut transaction = harness.begin("acme").await;
    for sql in [
        "INSERT INTO t VALUES (1)",
        "SAVEPOINT a",
        "INSERT INTO t VALUES (2)",
        "ROLLBACK TO SAVEPOINT a",
        "INSERT INTO t VALUES (3)",
        "RELEASE SAVEPOINT a",
    ] {
        transaction
            .call(In::Execute(execute(sql, vec![])))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let committed = transaction
        .call(In::Commit(pb::Commit {}))
        .await
        .expect("commit");
    assert!(matches!(committed, Out::Committed(_)), "{committed:?}");
    assert_eq!(count(&harness, "SELECT sum(id) FROM t").await, int(4));
}

#[tokio::test]
async fn a_batch_refuses_transaction_control_and_stays_all_or_nothing() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    client
        .execute(harness.request("acme", execute("CREATE TABLE t (id int)", vec![])))
        .await
        .expect("create");
    let batch = |sqls: &[&str]| pb::BatchRequest {
        statements: sqls
            .iter()
            .map(|sql| pb::Statement {
                sql: (*sql).to_owned(),
                params: vec![],
            })
            .collect(),
    };
    for sqls in [
        &[
            "INSERT INTO t VALUES (10)",
            "COMMIT",
            "INSERT INTO t VALUES (11)",
            "INSERT INTO t VALUES ('x')",
        ][..],
        &[
            "INSERT INTO t VALUES (20)",
            "ROLLBACK",
            "INSERT INTO t VALUES (21)",
        ],
    ] {
        let status = client
            .batch(harness.request("acme", batch(sqls)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{sqls:?}: {status:?}");
    }
    for sql in TRANSACTION_CONTROL {
        let status = client
            .batch(harness.request("acme", batch(&["INSERT INTO t VALUES (1)", sql])))
            .await
            .expect_err(sql);
        assert_eq!(status.code(), Code::InvalidArgument, "{sql}: {status:?}");
    }
    assert_eq!(count(&harness, "SELECT count(*) FROM t").await, int(0));
    client
        .batch(harness.request(
            "acme",
            batch(&[
                "INSERT INTO t VALUES (1)",
                "SAVEPOINT a",
                "INSERT INTO t VALUES (2)",
                "ROLLBACK TO a",
            ]),
        ))
        .await
        .expect("savepoints in a batch");
    assert_eq!(count(&harness, "SELECT sum(id) FROM t").await, int(1));
}

/// Beneath the statement check: a transaction that something ended early is reported,
/// never answered as committed or rolled back.
#[tokio::test]
async fn ending_a_transaction_that_already_ended_is_an_error() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let statement = |sql: &str| SqlStatement {
        sql: sql.to_owned(),
        params: vec![],
    };
    for commit in [true, false] {
        let mut lease = harness
            .core
            .lease(&tenant_id("acme"), None)
            .await
            .expect("lease");
        lease.begin("BEGIN", None).await.expect("begin");
        lease
            .execute(&statement("COMMIT"), None)
            .await
            .expect("the caller's COMMIT");
        let error = lease.end(commit, None).await.expect_err("already ended");
        assert!(matches!(error, CallError::TransactionLost(_)), "{error:?}");
    }
}
