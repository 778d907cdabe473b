//! Tenant isolation and identity codes through the real service.

use std::time::Duration;

use silo_auth::StandardClaims;
use silo_router::pool::PoolConfig;
use silo_router::tenant::{TenantState, TierLimits};
use tonic::Code;

use crate::harness::{Harness, authorized, execute, int, query, text};

#[tokio::test]
async fn each_tenant_sees_only_its_own_rows_and_may_not_name_another() {
    let harness = Harness::start(PoolConfig::default()).await;
    let mut client = harness.client.clone();
    for tenant in ["acme", "globex"] {
        harness.add_tenant(tenant, 0, TierLimits::default()).await;
        client
            .execute(harness.request(tenant, execute("CREATE TABLE notes (body text)", vec![])))
            .await
            .expect("create table");
        client
            .execute(harness.request(
                tenant,
                execute(
                    "INSERT INTO notes VALUES ($1)",
                    vec![text(&format!("{tenant} note"))],
                ),
            ))
            .await
            .expect("insert");
    }
    for tenant in ["acme", "globex"] {
        let rows = client
            .query(harness.request(tenant, query("SELECT body FROM notes", vec![])))
            .await
            .expect("query")
            .into_inner();
        assert_eq!(rows.rows.len(), 1);
        assert_eq!(rows.rows[0].values[0], text(&format!("{tenant} note")));
        assert_eq!(rows.columns[0].name, "body");
        assert_eq!(rows.columns[0].type_name, "text");
    }

    // A token for acme naming another tenant: the same answer whether it exists or not.
    let acme = harness.tenant_token("acme");
    let mut statuses = Vec::new();
    for other in ["globex", "no-such-tenant"] {
        let status = client
            .query(authorized(query("SELECT 1", vec![]), &acme, Some(other)))
            .await
            .expect_err("denied");
        statuses.push((status.code(), status.message().to_owned()));
    }
    assert_eq!(statuses[0].0, Code::PermissionDenied);
    assert_eq!(statuses[0], statuses[1]);

    // Its own tenant unknown: NOT_FOUND.
    let status = client
        .query(harness.request("initech", query("SELECT 1", vec![])))
        .await
        .expect_err("unknown tenant");
    assert_eq!(status.code(), Code::NotFound);

    // A service token picks a listed tenant.
    let service = harness.token(
        StandardClaims::new("jobs", Duration::from_secs(60)).claim("tenants", vec!["globex"]),
    );
    let rows = client
        .query(authorized(
            query("SELECT count(*) FROM notes", vec![]),
            &service,
            Some("globex"),
        ))
        .await
        .expect("service token")
        .into_inner();
    assert_eq!(rows.rows[0].values[0], int(1));
    let status = client
        .query(authorized(
            query("SELECT 1", vec![]),
            &service,
            Some("acme"),
        ))
        .await
        .expect_err("not listed");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Bad tokens.
    let expired = harness.token(
        StandardClaims::new("svc", Duration::from_secs(60))
            .claim("tenant_id", "acme")
            .expires_at(silo_auth::unix_now() - 3600),
    );
    for token in [expired.as_str(), "garbage", "a.b.c"] {
        let status = client
            .query(authorized(query("SELECT 1", vec![]), token, None))
            .await
            .expect_err("bad token");
        assert_eq!(status.code(), Code::Unauthenticated, "{token}");
    }
}

/// Waits until acme's calls are refused as not active (FAILED_PRECONDITION); panics
/// naming `what` after a second.
async fn refused_within_a_second(harness: &Harness, what: &str) {
    crate::harness::eventually(Duration::from_secs(1), what, || {
        let mut client = harness.client.clone();
        let request = harness.request("acme", query("SELECT 1", vec![]));
        async move {
            matches!(client.query(request).await, Err(status) if status.code() == Code::FailedPrecondition)
        }
    })
    .await
}

#[tokio::test]
async fn an_invalidation_event_takes_effect_at_once() {
    let harness = Harness::start(PoolConfig::default()).await;
    let mut client = harness.client.clone();
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    client
        .query(harness.request("acme", query("SELECT 1", vec![])))
        .await
        .expect("active tenant works");

    harness.routes.set_state("acme", TenantState::Suspended);
    refused_within_a_second(&harness, "a suspended tenant to be refused").await;

    harness.routes.set_state("acme", TenantState::Active);
    crate::harness::eventually(
        Duration::from_secs(1),
        "a resumed tenant works again",
        || {
            let mut client = client.clone();
            let request = harness.request("acme", query("SELECT 1", vec![]));
            async move { client.query(request).await.is_ok() }
        },
    )
    .await;
}

#[tokio::test]
async fn calls_in_flight_finish_when_the_tenant_is_suspended() {
    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness.add_tenant("acme", 0, TierLimits::default()).await;
    let admin = harness.servers[0].connect(&database).await.expect("admin");
    let mut slow_client = harness.client.clone();
    let slow = tokio::spawn({
        let request = harness.request("acme", query("SELECT pg_sleep(0.5), 1", vec![]));
        async move { slow_client.query(request).await }
    });
    crate::harness::eventually(
        Duration::from_millis(400),
        "the slow call to be running on the silo",
        || async { crate::harness::running(&admin, "SELECT pg_sleep(0.5), 1").await == 1 },
    )
    .await;
    harness.routes.set_state("acme", TenantState::Suspended);
    refused_within_a_second(&harness, "new calls to see the suspension").await;
    let finished = slow
        .await
        .expect("task")
        .expect("the call in flight finishes");
    assert_eq!(finished.into_inner().rows.len(), 1);
    let again = harness
        .client
        .clone()
        .query(harness.request("acme", query("SELECT 1", vec![])))
        .await
        .expect_err("still suspended");
    assert_eq!(again.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn suspension_and_deletion_end_open_transactions_within_a_second() {
    use pb::transaction_request::Kind as In;
    use silo_proto::router::v1 as pb;

    let harness = Harness::start(PoolConfig::default()).await;
    let database = harness.add_tenant("acme", 0, TierLimits::default()).await;
    let admin = harness.servers[0].connect(&database).await.expect("admin");
    harness
        .client
        .clone()
        .execute(harness.request("acme", execute("CREATE TABLE t (id int)", vec![])))
        .await
        .expect("create");

    for (ends, code) in [
        ("suspended", Code::FailedPrecondition),
        ("deleted", Code::NotFound),
    ] {
        // One stream idle between statements, one in the middle of a statement.
        let mut idle = harness.begin("acme").await;
        idle.call(In::Execute(execute("INSERT INTO t VALUES (1)", vec![])))
            .await
            .expect("insert");
        let mut busy = harness.begin("acme").await;
        busy.call(In::Execute(execute("INSERT INTO t VALUES (2)", vec![])))
            .await
            .expect("insert");
        busy.send(In::Query(query("SELECT pg_sleep(30)", vec![])))
            .await;
        crate::harness::eventually(Duration::from_secs(5), "the statement runs", || async {
            crate::harness::running(&admin, "SELECT pg_sleep(30)").await == 1
        })
        .await;

        let started = std::time::Instant::now();
        if ends == "suspended" {
            harness.routes.set_state("acme", TenantState::Suspended);
        } else {
            harness.routes.remove("acme");
        }
        for stream in [&mut idle, &mut busy] {
            let status = tokio::time::timeout(Duration::from_secs(1), stream.next())
                .await
                .unwrap_or_else(|_| panic!("{ends}: the stream ends within a second"))
                .expect_err("ended");
            assert_eq!(status.code(), code, "{ends}: {status:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        crate::harness::eventually(
            Duration::from_secs(1),
            &format!("{ends}: the running statement is cancelled"),
            || async { crate::harness::running(&admin, "SELECT pg_sleep(30)").await == 0 },
        )
        .await;
        let committed: i64 = admin
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(committed, 0, "{ends}: both transactions rolled back");

        // Back to active for the next round.
        harness.add_tenant_route("acme", &database);
    }
}
