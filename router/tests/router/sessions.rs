//! Clean sessions and interactive transactions: what one call does to its connection
//! never reaches the next, and a Transaction stream commits, rolls back or times out.

use std::time::{Duration, Instant};

use silo_proto::router::v1 as pb;
use silo_proto::router::v1::value::Kind;
use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;
use tonic::Code;

use crate::harness::{Harness, execute, int, query, text};

fn value(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

/// One connection per tenant, so consecutive calls share a session.
fn single_connection() -> TierLimits {
    TierLimits {
        max_connections: 1,
        ..TierLimits::default()
    }
}

#[tokio::test]
async fn session_state_does_not_leak_to_the_next_call() {
    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness.add_tenant("acme", 0, single_connection()).await;
    let mut client = harness.client.clone();
    for sql in [
        "SET search_path TO nowhere",
        "CREATE TEMP TABLE scratch (x int)",
        "SELECT pg_advisory_lock(42)",
        "SELECT set_config('application_name', 'changed', false)",
        "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
        "LISTEN somewhere",
        "BEGIN",
    ] {
        client
            .query(harness.request("acme", query(sql, vec![])))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // Had BEGIN stayed open, this table would never be committed.
    client
        .execute(harness.request(
            "acme",
            execute("CREATE TABLE public.committed (x int)", vec![]),
        ))
        .await
        .expect("create");
    let admin = harness.servers[0].connect(&database).await.expect("admin");
    let committed: bool = admin
        .query_one("SELECT to_regclass('public.committed') IS NOT NULL", &[])
        .await
        .expect("to_regclass")
        .get(0);
    assert!(committed, "no transaction left open");

    // The same (only) connection, reset.
    let check = client
        .query(harness.request(
            "acme",
            query(
                "SELECT current_setting('search_path'), \
                        to_regclass('pg_temp.scratch') IS NULL, \
                        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
                        current_setting('application_name'), \
                        (SELECT count(*) FROM pg_cursors WHERE name = 'held'), \
                        (SELECT count(*) FROM pg_listening_channels())",
                vec![],
            ),
        ))
        .await
        .expect("check")
        .into_inner();
    let values = &check.rows[0].values;
    assert_eq!(values[0], text("\"$user\", public"));
    assert_eq!(values[1], value(Kind::BoolValue(true)), "temp table gone");
    assert_eq!(values[2], int(0), "advisory lock released");
    assert_eq!(values[3], text("silo-router"), "settings reset");
    assert_eq!(values[4], int(0), "cursors closed");
    assert_eq!(values[5], int(0), "no channel listened to");

    // A statement prepared by SQL only goes with its connection.
    let prepared = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql";
    for sql in ["PREPARE leftover AS SELECT 1", prepared] {
        let rows = client
            .query(harness.request("acme", query(sql, vec![])))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_inner();
        if sql == prepared {
            assert_eq!(
                rows.rows[0].values[0],
                int(0),
                "no statement prepared by SQL"
            );
        }
    }

    // ROLLBACK is sent only after a BEGIN: outside a transaction PostgreSQL would log a
    // warning for every call.
    let log = std::fs::read_to_string(harness.servers[0].log_path()).expect("server log");
    assert!(
        !log.contains("there is no transaction in progress"),
        "the reset rolls back only open transactions:\n{log}"
    );
}

/// What the reset leaves out or adds by login: a superuser's session authorization is set
/// back; a tenant-like login (no superuser) cannot change it at all, and its `SET ROLE` and
/// sequence state are undone like the rest.
#[tokio::test]
async fn session_authorization_role_and_sequences_do_not_leak_for_either_kind_of_login() {
    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness.add_tenant("acme", 0, single_connection()).await;
    let admin = harness.servers[0].connect(&database).await.expect("admin");
    admin
        .batch_execute(
            "CREATE ROLE plain LOGIN; CREATE ROLE helper NOLOGIN; GRANT helper TO plain; \
             CREATE SEQUENCE counter; GRANT USAGE ON SEQUENCE counter TO plain, helper",
        )
        .await
        .expect("roles");
    let client = harness.client.clone();
    let run = |sql: &'static str| {
        let mut client = client.clone();
        let request = harness.request("acme", query(sql, vec![]));
        async move { client.query(request).await.map(|r| r.into_inner()) }
    };

    // A superuser login: SET SESSION AUTHORIZATION works, and is set back.
    run("SET SESSION AUTHORIZATION plain")
        .await
        .expect("superuser may");
    run("SELECT nextval('counter')").await.expect("nextval");
    let rows = run("SELECT session_user::text, current_user::text")
        .await
        .expect("who");
    assert_eq!(rows.rows[0].values, [text("postgres"), text("postgres")]);
    let status = run("SELECT currval('counter')")
        .await
        .expect_err("sequence state reset");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // A login without superuser, as every tenant's is.
    harness.set_route_as("acme", &database, "plain", single_connection());
    let status = run("SET SESSION AUTHORIZATION postgres")
        .await
        .expect_err("only a superuser may");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    run("SET ROLE helper").await.expect("a member may");
    run("SELECT nextval('counter')").await.expect("nextval");
    let rows = run("SELECT session_user::text, current_user::text")
        .await
        .expect("who");
    assert_eq!(
        rows.rows[0].values,
        [text("plain"), text("plain")],
        "SET ROLE undone"
    );
    let status = run("SELECT currval('counter')")
        .await
        .expect_err("sequence state reset");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn an_interactive_transaction_commits_or_rolls_back() {
    use pb::transaction_request::Kind as In;
    use pb::transaction_response::Kind as Out;

    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut client = harness.client.clone();
    client
        .execute(harness.request("acme", execute("CREATE TABLE t (id int)", vec![])))
        .await
        .expect("create");

    for commit in [true, false] {
        let end = if commit {
            In::Commit(pb::Commit {})
        } else {
            In::Rollback(pb::Rollback {})
        };
        let messages = vec![
            In::Begin(pb::Begin {
                isolation_level: pb::IsolationLevel::Serializable.into(),
                read_only: false,
            }),
            In::Execute(execute(
                "INSERT INTO t VALUES ($1)",
                vec![int(i64::from(commit))],
            )),
            In::Query(query("SELECT count(*) FROM t", vec![])),
            end,
        ]
        .into_iter()
        .map(|kind| pb::TransactionRequest { kind: Some(kind) });
        let mut responses = client
            .transaction(harness.request("acme", futures::stream::iter(messages)))
            .await
            .expect("transaction")
            .into_inner();
        let mut kinds = Vec::new();
        while let Some(response) = responses.message().await.expect("response") {
            kinds.push(response.kind.expect("kind"));
        }
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        assert!(matches!(kinds[0], Out::Begun(_)));
        assert!(matches!(
            kinds[1],
            Out::Execute(pb::ExecuteResponse { rows_affected: 1 })
        ));
        if commit {
            assert!(matches!(kinds[3], Out::Committed(_)), "{kinds:?}");
        } else {
            assert!(matches!(kinds[3], Out::RolledBack(_)), "{kinds:?}");
        }
    }
    let rows = client
        .query(harness.request("acme", query("SELECT id FROM t", vec![])))
        .await
        .expect("rows")
        .into_inner();
    assert_eq!(rows.rows.len(), 1, "only the committed insert stays");
    assert_eq!(rows.rows[0].values[0], int(1));
}

#[tokio::test]
async fn an_idle_transaction_is_rolled_back() {
    use pb::transaction_request::Kind as In;

    let harness =
        Harness::start_custom(1, PoolConfig::default(), Duration::from_millis(300), None).await;
    harness.add_tenant("acme", 0, single_connection()).await;
    let mut client = harness.client.clone();
    client
        .execute(harness.request("acme", execute("CREATE TABLE t (id int)", vec![])))
        .await
        .expect("create");

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let send = |kind| {
        let tx = tx.clone();
        async move {
            tx.send(pb::TransactionRequest { kind: Some(kind) })
                .await
                .expect("send");
        }
    };
    // The router answers the call once it has the first message.
    send(In::Begin(pb::Begin::default())).await;
    let mut responses = client
        .transaction(harness.request("acme", tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("transaction")
        .into_inner();
    responses.message().await.expect("begun").expect("message");
    send(In::Execute(execute("INSERT INTO t VALUES (1)", vec![]))).await;
    responses
        .message()
        .await
        .expect("inserted")
        .expect("message");
    // The caller goes quiet without ending the stream.
    let started = Instant::now();
    let idle = responses.message().await.expect_err("idle too long");
    assert_eq!(idle.code(), Code::Aborted, "{idle:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(tx);

    // Rolled back, and the tenant's only connection serves the next call.
    let rows = client
        .query(harness.request("acme", query("SELECT count(*) FROM t", vec![])))
        .await
        .expect("count")
        .into_inner();
    assert_eq!(rows.rows[0].values[0], int(0));
}
