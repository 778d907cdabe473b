//! The call API against a real database: types, errors, streams, sizes, deadlines.

use std::time::{Duration, Instant};

use silo_proto::router::v1 as pb;
use silo_proto::router::v1::value::Kind;
use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;
use tonic::Code;

use crate::harness::{Harness, execute, int, query, statement, text};

fn value(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

fn null() -> pb::Value {
    value(Kind::Null(0))
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    let ts = prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 123_456_000,
    };
    let cases: Vec<(&str, pb::Value, &str)> = vec![
        ("bool", value(Kind::BoolValue(true)), "bool"),
        ("int2", int(-7), "int2"),
        ("int4", int(123_456), "int4"),
        ("int8", int(i64::MIN), "int8"),
        ("float4", value(Kind::DoubleValue(1.5)), "float4"),
        ("float8", value(Kind::DoubleValue(-2.25e300)), "float8"),
        ("text", text("héllo, 'world'"), "text"),
        ("varchar", text("v"), "varchar"),
        (
            "bytea",
            value(Kind::BytesValue(vec![0, 1, 254, 255])),
            "bytea",
        ),
        (
            "numeric",
            value(Kind::DecimalValue("-12345678901234567890.000120".into())),
            "numeric",
        ),
        (
            "uuid",
            value(Kind::UuidValue(
                "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            )),
            "uuid",
        ),
        ("timestamp", value(Kind::TimestampValue(ts)), "timestamp"),
        (
            "timestamptz",
            value(Kind::TimestamptzValue(ts)),
            "timestamptz",
        ),
        (
            "date",
            value(Kind::DateValue(pb::Date {
                year: 2024,
                month: 2,
                day: 29,
            })),
            "date",
        ),
        (
            "time",
            value(Kind::TimeValue(pb::TimeOfDay {
                microseconds: 45_296_789_000,
            })),
            "time",
        ),
        (
            "json",
            value(Kind::JsonValue(r#"{"a": [1, 2]}"#.into())),
            "json",
        ),
        (
            "jsonb",
            value(Kind::JsonbValue(r#"{"a": [1, 2]}"#.into())),
            "jsonb",
        ),
        (
            "int8[]",
            value(Kind::ArrayValue(pb::ArrayValue {
                values: vec![int(1), null(), int(3)],
            })),
            "_int8",
        ),
        (
            "text[]",
            value(Kind::ArrayValue(pb::ArrayValue {
                values: vec![text("a"), null()],
            })),
            "_text",
        ),
        ("int4", null(), "int4"),
    ];
    for (pg_type, param, type_name) in cases {
        let sql = format!("SELECT $1::{pg_type} AS v");
        let response = client
            .query(harness.request("acme", query(&sql, vec![param.clone()])))
            .await
            .unwrap_or_else(|e| panic!("{pg_type}: {e}"))
            .into_inner();
        assert_eq!(response.columns[0].type_name, type_name, "{pg_type}");
        assert_eq!(response.rows[0].values[0], param, "{pg_type}");
    }

    // A value that does not fit the parameter's type is a bad argument.
    let status = client
        .query(harness.request("acme", query("SELECT $1::int4", vec![text("x")])))
        .await
        .expect_err("mismatch");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .query(harness.request("acme", query("SELECT $1::int2", vec![int(1 << 20)])))
        .await
        .expect_err("out of range");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn errors_map_by_sqlstate_and_batches_are_atomic() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    client
        .execute(harness.request(
            "acme",
            execute("CREATE TABLE t (id int PRIMARY KEY)", vec![]),
        ))
        .await
        .expect("create");

    let status = client
        .query(harness.request("acme", query("SELEC 1", vec![])))
        .await
        .expect_err("syntax");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status
            .metadata()
            .get("x-silo-sqlstate")
            .and_then(|v| v.to_str().ok()),
        Some("42601")
    );
    assert!(status.message().contains("SQLSTATE 42601"));

    let insert = |id| pb::Statement {
        sql: "INSERT INTO t VALUES ($1)".into(),
        params: vec![int(id)],
    };
    let batch = pb::BatchRequest {
        statements: vec![insert(1), insert(2)],
    };
    let done = client
        .batch(harness.request("acme", batch))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(done.rows_affected, vec![1, 1]);

    // The duplicate fails the whole batch: 3 is not inserted.
    let batch = pb::BatchRequest {
        statements: vec![insert(3), insert(1)],
    };
    let status = client
        .batch(harness.request("acme", batch))
        .await
        .expect_err("duplicate");
    assert_eq!(status.code(), Code::AlreadyExists);
    let count = client
        .query(harness.request("acme", query("SELECT count(*) FROM t", vec![])))
        .await
        .expect("count")
        .into_inner();
    assert_eq!(count.rows[0].values[0], int(2));

    let status = client
        .query(harness.request("acme", query("SELECT 1/0", vec![])))
        .await
        .expect_err("division by zero");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .query(harness.request("acme", query("SELECT $1::int", vec![])))
        .await
        .expect_err("missing parameter");
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut limited = query("SELECT generate_series(1, 10)", vec![]);
    limited.max_rows = 5;
    let status = client
        .query(harness.request("acme", limited))
        .await
        .expect_err("too many rows");
    assert_eq!(status.code(), Code::ResourceExhausted);
}

/// A QueryStream of `sql` for acme.
async fn stream(harness: &Harness, sql: &str, batch_size: u32) -> tonic::Streaming<pb::RowBatch> {
    let request = pb::QueryStreamRequest {
        statement: statement(sql, vec![]),
        batch_size,
    };
    harness
        .client
        .clone()
        .query_stream(harness.request("acme", request))
        .await
        .expect("stream")
        .into_inner()
}

#[tokio::test]
async fn query_stream_sends_batches() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let sql = "SELECT g, g::text AS s FROM generate_series(1, 2500) g";
    let mut stream = stream(&harness, sql, 1000).await;
    let mut sizes = Vec::new();
    let mut first_columns = None;
    while let Some(batch) = stream.message().await.expect("batch") {
        if first_columns.is_none() {
            first_columns = Some(batch.columns.clone());
        } else {
            assert!(batch.columns.is_empty());
        }
        sizes.push(batch.rows.len());
    }
    assert_eq!(sizes, vec![1000, 1000, 500]);
    let columns = first_columns.expect("columns");
    assert_eq!(columns[1].name, "s");
    assert_eq!(columns[0].type_name, "int4");
}

#[tokio::test]
async fn responses_stay_under_the_size_limit() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    // Five rows of 1.5 MB: 7.5 MB in all, over the 4 MB a response may carry.
    let sql = "SELECT g, repeat('x', 1500000) AS filler FROM generate_series(1, 5) g";
    let refused = client
        .query(harness.request("acme", query(sql, vec![])))
        .await
        .expect_err("too large for one message");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("QueryStream"), "{refused:?}");

    let mut batches = stream(&harness, sql, 1000).await;
    let mut sizes = Vec::new();
    while let Some(batch) = batches.message().await.expect("every batch fits a message") {
        sizes.push(batch.rows.len());
    }
    assert_eq!(sizes, vec![2, 2, 1], "batches cut by size");

    // A row that alone is over the limit cannot be sent at all.
    let mut huge = stream(&harness, "SELECT repeat('x', 5000000)", 0).await;
    let refused = huge.message().await.expect_err("row too large");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // The tenant's connection is usable afterwards.
    let rows = client
        .query(harness.request("acme", query("SELECT 1", vec![])))
        .await
        .expect("works")
        .into_inner();
    assert_eq!(rows.rows.len(), 1);
}

#[tokio::test]
async fn a_deadline_cancels_the_statement_in_postgres() {
    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    let mut request = harness.request("acme", query("SELECT pg_sleep(5)", vec![]));
    request.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let status = client.query(request).await.expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    let admin = harness.servers[0]
        .connect(&database)
        .await
        .expect("admin connection");
    crate::harness::eventually(
        Duration::from_secs(1),
        "the backend stopped running the statement",
        || {
            let admin = &admin;
            async move {
                let running: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                     WHERE query = 'SELECT pg_sleep(5)' AND state = 'active'",
                        &[],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .get(0);
                running == 0
            }
        },
    )
    .await;
}
