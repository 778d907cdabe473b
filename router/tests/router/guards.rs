//! Requests the router refuses before touching a silo: an empty batch, a transaction that
//! does not start with BEGIN or begins twice, an empty transaction message, and values of
//! types it cannot carry.

use pb::transaction_request::Kind as In;
use silo_proto::router::v1 as pb;
use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;
use tonic::Code;

use crate::harness::{Harness, execute, int, query};

/// The first answer of a Transaction stream sent exactly `messages`.
async fn transaction_status(
    harness: &Harness,
    messages: Vec<pb::TransactionRequest>,
) -> tonic::Status {
    let mut client = harness.client.clone();
    let request = harness.request("acme", futures::stream::iter(messages));
    match client.transaction(request).await {
        Err(status) => status,
        Ok(response) => {
            let mut responses = response.into_inner();
            loop {
                match responses.message().await {
                    Err(status) => return status,
                    // The answers to what came before the bad message.
                    Ok(Some(pb::TransactionResponse {
                        kind:
                            Some(
                                pb::transaction_response::Kind::Begun(_)
                                | pb::transaction_response::Kind::Execute(_),
                            ),
                    })) => continue,
                    Ok(other) => panic!("expected a refusal, got {other:?}"),
                }
            }
        }
    }
}

fn message(kind: In) -> pb::TransactionRequest {
    pb::TransactionRequest { kind: Some(kind) }
}

#[tokio::test]
async fn an_empty_batch_is_invalid() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let status = harness
        .client
        .clone()
        .batch(harness.request("acme", pb::BatchRequest { statements: vec![] }))
        .await
        .expect_err("empty batch");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "a batch needs at least one statement");
}

#[tokio::test]
async fn malformed_transaction_streams_are_invalid_and_leave_nothing_open() {
    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness.add_tenant("acme", 0, TierLimits::default()).await;
    harness
        .client
        .clone()
        .execute(harness.request("acme", execute("CREATE TABLE t (id int)", vec![])))
        .await
        .expect("create");

    let cases = [
        (
            "no begin",
            vec![message(In::Execute(execute(
                "INSERT INTO t VALUES (1)",
                vec![],
            )))],
            "a transaction starts with begin",
        ),
        (
            "begin twice",
            vec![
                message(In::Begin(pb::Begin::default())),
                message(In::Execute(execute("INSERT INTO t VALUES (2)", vec![]))),
                message(In::Begin(pb::Begin::default())),
            ],
            "the transaction has begun",
        ),
        (
            "empty message",
            vec![
                message(In::Begin(pb::Begin::default())),
                message(In::Execute(execute("INSERT INTO t VALUES (3)", vec![]))),
                pb::TransactionRequest { kind: None },
            ],
            "empty transaction message",
        ),
    ];
    for (case, messages, expected) in cases {
        let status = transaction_status(&harness, messages).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{case}: {:?} should say {expected:?}",
            status.message()
        );
    }
    // Nothing the refused streams sent was committed.
    let admin = harness.servers[0].connect(&database).await.expect("admin");
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn values_of_unsupported_types_are_refused_with_the_type_named() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    for (sql, params, named) in [
        ("SELECT point(1, 2)", vec![], "point"),
        // No row to read: only the check of the columns before running can refuse it.
        ("SELECT point(1, 2) WHERE false", vec![], "point"),
        ("SELECT ARRAY[point(1, 2)]", vec![], "point"),
        ("SELECT $1::int8::money", vec![int(1)], "money"),
    ] {
        let status = client
            .query(harness.request("acme", query(sql, params)))
            .await
            .expect_err(sql);
        assert_eq!(status.code(), Code::InvalidArgument, "{sql}: {status:?}");
        assert!(
            status.message().contains(named) && status.message().contains("not supported"),
            "{sql}: {:?}",
            status.message()
        );
    }
    // A cast, as the message suggests, makes the same value readable.
    let rows = client
        .query(harness.request("acme", query("SELECT point(1, 2)::text", vec![])))
        .await
        .expect("cast to text")
        .into_inner();
    assert_eq!(rows.rows.len(), 1);
}
