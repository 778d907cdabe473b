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

/// Whether acme's calls are refused as not active (FAILED_PRECONDITION) within a second.
async fn refused_within_a_second(harness: &Harness) -> bool {
    crate::harness::eventually(Duration::from_secs(1), || {
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
    assert!(
        refused_within_a_second(&harness).await,
        "a suspended tenant is refused within 1 s"
    );

    harness.routes.set_state("acme", TenantState::Active);
    let works = crate::harness::eventually(Duration::from_secs(1), || {
        let mut client = client.clone();
        let request = harness.request("acme", query("SELECT 1", vec![]));
        async move { client.query(request).await.is_ok() }
    })
    .await;
    assert!(works, "a resumed tenant works again");
}

#[tokio::test]
async fn calls_in_flight_finish_when_the_tenant_is_suspended() {
    let harness = Harness::start(PoolConfig::default()).await;
    harness.add_tenant("acme", 0, TierLimits::default()).await;
    let mut slow_client = harness.client.clone();
    let slow = tokio::spawn({
        let request = harness.request("acme", query("SELECT pg_sleep(0.5), 1", vec![]));
        async move { slow_client.query(request).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    harness.routes.set_state("acme", TenantState::Suspended);
    assert!(
        refused_within_a_second(&harness).await,
        "new calls see the suspension"
    );
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
