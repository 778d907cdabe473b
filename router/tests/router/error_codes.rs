//! The error table, row by row, through the real service: every SQLSTATE class PostgreSQL
//! defines raised by a real server, and the faults that used to be answered UNAVAILABLE
//! (a code clients retry) although no retry can fix them.

use silo_auth::StandardClaims;
use silo_proto::router::v1 as pb;
use silo_proto::router::v1::value::Kind;
use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;
use tonic::Code;

use crate::harness::{Harness, authorized, execute, int, query, text};

/// The README's SQLSTATE table: a code of each class (and the codes mapped on their own),
/// with the gRPC code the caller gets.
const SQLSTATE_TABLE: &[(&str, Code)] = &[
    ("03000", Code::InvalidArgument), // SQL statement not yet complete
    ("08006", Code::Unavailable),     // connection failure
    ("09000", Code::FailedPrecondition), // triggered action exception
    ("0A000", Code::Unimplemented),   // feature not supported
    ("0B000", Code::FailedPrecondition), // invalid transaction initiation
    ("0F000", Code::InvalidArgument), // locator exception
    ("0L000", Code::InvalidArgument), // invalid grantor
    ("0P000", Code::InvalidArgument), // invalid role specification
    ("0Z000", Code::InvalidArgument), // diagnostics exception
    ("20000", Code::InvalidArgument), // case not found
    ("21000", Code::InvalidArgument), // cardinality violation
    ("22012", Code::InvalidArgument), // division by zero (data exception)
    ("23503", Code::FailedPrecondition), // foreign key violation
    ("23505", Code::AlreadyExists),   // unique violation
    ("24000", Code::FailedPrecondition), // invalid cursor state
    ("25006", Code::FailedPrecondition), // read-only SQL transaction
    ("26000", Code::InvalidArgument), // invalid SQL statement name
    ("27000", Code::FailedPrecondition), // triggered data change violation
    ("28000", Code::Unavailable),     // invalid authorization specification
    ("2B000", Code::FailedPrecondition), // dependent privilege descriptors still exist
    ("2D000", Code::FailedPrecondition), // invalid transaction termination
    ("2F000", Code::InvalidArgument), // SQL routine exception
    ("34000", Code::InvalidArgument), // invalid cursor name
    ("38000", Code::InvalidArgument), // external routine exception
    ("39000", Code::InvalidArgument), // external routine invocation exception
    ("3B000", Code::InvalidArgument), // savepoint exception
    ("3D000", Code::InvalidArgument), // invalid catalog name
    ("3F000", Code::InvalidArgument), // invalid schema name
    ("40001", Code::Aborted),         // serialization failure
    ("40P01", Code::Aborted),         // deadlock detected
    ("42601", Code::InvalidArgument), // syntax error
    ("42P01", Code::InvalidArgument), // undefined table
    ("42501", Code::PermissionDenied), // insufficient privilege
    ("42P07", Code::AlreadyExists),   // duplicate table
    ("42710", Code::AlreadyExists),   // duplicate object
    ("44000", Code::FailedPrecondition), // WITH CHECK OPTION violation
    ("53100", Code::ResourceExhausted), // disk full
    ("53300", Code::ResourceExhausted), // too many connections
    ("54000", Code::InvalidArgument), // program limit exceeded
    ("55000", Code::FailedPrecondition), // object not in prerequisite state
    ("55P03", Code::Aborted),         // lock not available
    ("57014", Code::DeadlineExceeded), // query canceled (statement timeout)
    ("57P01", Code::Unavailable),     // admin shutdown
    ("58030", Code::Internal),        // I/O error
    ("72000", Code::Aborted),         // snapshot too old
    ("F0000", Code::Internal),        // configuration file error
    ("HV000", Code::Internal),        // foreign data wrapper error
    ("P0001", Code::FailedPrecondition), // RAISE EXCEPTION
    ("P0004", Code::FailedPrecondition), // assert failure
    ("XX000", Code::Internal),        // internal error
];

#[tokio::test]
async fn every_sqlstate_class_maps_to_its_row_of_the_error_table() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    for (sqlstate, code) in SQLSTATE_TABLE {
        let sql =
            format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$");
        let status = client
            .execute(harness.request("acme", execute(&sql, vec![])))
            .await
            .expect_err(sqlstate);
        assert_eq!(status.code(), *code, "SQLSTATE {sqlstate}: {status:?}");
        assert_eq!(
            status
                .metadata()
                .get("x-silo-sqlstate")
                .and_then(|v| v.to_str().ok()),
            Some(*sqlstate),
            "the SQLSTATE travels in the trailer"
        );
    }
    // Nothing above broke the tenant's pool.
    client
        .query(harness.request("acme", query("SELECT 1", vec![])))
        .await
        .expect("still served");
}

fn array(values: Vec<pb::Value>) -> pb::Value {
    pb::Value {
        kind: Some(Kind::ArrayValue(pb::ArrayValue { values })),
    }
}

fn null() -> pb::Value {
    pb::Value {
        kind: Some(Kind::Null(0)),
    }
}

#[tokio::test]
async fn multi_dimensional_arrays_round_trip_as_nested_arrays() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    let one = |sql: &str, params: Vec<pb::Value>| {
        let request = harness.request("acme", query(sql, params));
        let mut client = client.clone();
        async move {
            client
                .query(request)
                .await
                .map(|r| r.into_inner().rows[0].values[0].clone())
        }
    };
    let two_by_two = array(vec![
        array(vec![int(1), int(2)]),
        array(vec![int(3), int(4)]),
    ]);
    assert_eq!(
        one("SELECT ARRAY[[1,2],[3,4]]", vec![]).await.expect("2-D"),
        two_by_two
    );
    assert_eq!(
        one("SELECT '{{{1},{2}},{{3},{NULL}}}'::int8[]", vec![])
            .await
            .expect("3-D"),
        array(vec![
            array(vec![array(vec![int(1)]), array(vec![int(2)])]),
            array(vec![array(vec![int(3)]), array(vec![null()])]),
        ])
    );
    assert_eq!(
        one("SELECT '{}'::int[]", vec![]).await.expect("empty"),
        array(vec![])
    );
    let texts = array(vec![array(vec![text("a")]), array(vec![text("b")])]);
    assert_eq!(
        one("SELECT ARRAY[['a'],['b']]", vec![])
            .await
            .expect("text"),
        texts
    );
    // As parameters: PostgreSQL sees the dimensions.
    assert_eq!(
        one("SELECT array_dims($1::int[])", vec![two_by_two.clone()])
            .await
            .expect("dims"),
        text("[1:2][1:2]")
    );
    assert_eq!(
        one("SELECT $1::int[]", vec![two_by_two.clone()])
            .await
            .expect("back"),
        two_by_two
    );
    assert_eq!(
        one("SELECT $1::text[] = ARRAY[['a'],['b']]", vec![texts])
            .await
            .expect("text"),
        pb::Value {
            kind: Some(Kind::BoolValue(true))
        }
    );
    // Not rectangular: refused on receipt, as PostgreSQL would.
    let ragged = array(vec![array(vec![int(1), int(2)]), array(vec![int(3)])]);
    let status = one("SELECT $1::int[]", vec![ragged])
        .await
        .expect_err("ragged");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .execute(harness.request(
            "acme",
            execute(
                "SELECT $1::int[]",
                vec![array(vec![array(vec![int(1)]), int(2)])],
            ),
        ))
        .await
        .expect_err("mixed depth");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// A route whose CA file the router cannot read (a mount missing on this router): every
/// call is UNAVAILABLE saying so, without the file's path.
#[tokio::test]
async fn a_route_whose_ca_file_is_missing_is_unavailable_without_naming_it() {
    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness.add_tenant("acme", 0, TierLimits::default()).await;
    let tls = silo_tls::postgres::PgTls::new(
        Some("verify-full"),
        Some("/nonexistent/tenant-ca/bundle.pem"),
    )
    .expect("settings");
    harness.set_route_tls("acme", 0, &database, TierLimits::default(), tls);
    let status = harness
        .client
        .clone()
        .query(harness.request("acme", query("SELECT 1", vec![])))
        .await
        .expect_err("no CA certificates");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "tenant database unreachable: TLS: the router cannot read the CA certificates of the tenant's route"
    );
}

#[tokio::test]
async fn faults_no_retry_can_fix_are_not_unavailable() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness
        .add_tenant(
            "acme",
            0,
            TierLimits {
                max_connections: 1,
                ..TierLimits::default()
            },
        )
        .await;
    let mut client = harness.client.clone();
    client
        .execute(harness.request("acme", execute("CREATE TABLE t (a int)", vec![])))
        .await
        .expect("create");

    // The copy sub-protocol, through every RPC that takes SQL.
    for sql in [
        "COPY t FROM STDIN",
        "COPY (SELECT 1) TO STDOUT",
        "copy t to stdout with (format csv)",
    ] {
        let status = client
            .query(harness.request("acme", query(sql, vec![])))
            .await
            .expect_err(sql);
        assert_eq!(status.code(), Code::Unimplemented, "{sql}: {status:?}");
        assert!(status.message().contains("COPY"), "{status:?}");
        let status = client
            .execute(harness.request("acme", execute(sql, vec![])))
            .await
            .expect_err(sql);
        assert_eq!(status.code(), Code::Unimplemented, "{sql}: {status:?}");
        let status = client
            .query_stream(harness.request(
                "acme",
                pb::QueryStreamRequest {
                    statement: crate::harness::statement(sql, vec![]),
                    batch_size: 0,
                },
            ))
            .await
            .expect_err(sql);
        assert_eq!(status.code(), Code::Unimplemented, "{sql}: {status:?}");
    }

    // A NUL byte in the SQL text, or in a text parameter.
    let status = client
        .query(harness.request("acme", query("SELECT 1\0", vec![])))
        .await
        .expect_err("NUL in SQL");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .query(harness.request("acme", query("SELECT $1::text", vec![text("a\0b")])))
        .await
        .expect_err("NUL in a parameter");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // SQLSTATE 3D000 from a statement (not a connection failure).
    let status = client
        .query(harness.request(
            "acme",
            query(
                "SELECT has_database_privilege('no_such_db', 'CONNECT')",
                vec![],
            ),
        ))
        .await
        .expect_err("3D000");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The single connection survived all of it.
    client
        .query(harness.request("acme", query("SELECT count(*) FROM t", vec![])))
        .await
        .expect("still served");
}

#[tokio::test]
async fn a_tenant_claim_that_is_no_tenant_id_is_unauthenticated_without_asking() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    for claim in [
        "a",
        "Acme",
        "acme_1",
        "1acme",
        "-acme",
        "acme corp",
        &"a".repeat(64),
    ] {
        let token = harness.token(
            StandardClaims::new("svc", std::time::Duration::from_secs(60))
                .claim("tenant_id", claim),
        );
        let status = client
            .query(authorized(query("SELECT 1", vec![]), &token, None))
            .await
            .expect_err(claim);
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{claim:?}: {status:?}"
        );
    }
    assert_eq!(
        *harness.routes.resolves.lock().expect("lock"),
        0,
        "the control plane was not asked"
    );
}
