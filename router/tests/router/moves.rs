//! A tenant whose silo moves (state MOVING): its new calls are held until the new route
//! arrives and then run on the new database; a hold that runs out is UNAVAILABLE, a
//! shorter deadline DEADLINE_EXCEEDED; its open transactions end with ABORTED.

use std::time::{Duration, Instant};

use silo_proto::router::v1 as pb;
use silo_router::pool::PoolConfig;
use silo_router::tenant::{TenantState, TierLimits};
use tonic::Code;

use crate::harness::{Harness, eventually, execute, query, tenant_id};

/// Two databases of one tenant, on two servers, each with a `here` table naming itself:
/// the old one (routed) and the new one.
async fn tenant_with_two_silos(harness: &Harness) -> (String, String) {
    let old = harness.add_tenant("acme", 0, TierLimits::default()).await;
    let new = harness.servers[1]
        .create_unique_database("acme")
        .await
        .expect("database");
    for (server, database, name) in [(0, &old, "old"), (1, &new, "new")] {
        let admin = harness.servers[server]
            .connect(database)
            .await
            .expect("admin");
        admin
            .batch_execute(&format!(
                "CREATE TABLE here (name text); INSERT INTO here VALUES ('{name}')"
            ))
            .await
            .expect("table");
    }
    (old, new)
}

async fn here(harness: &Harness, timeout: Option<Duration>) -> Result<String, tonic::Status> {
    let mut request = harness.request("acme", query("SELECT name FROM here", vec![]));
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let rows = harness
        .client
        .clone()
        .query(request)
        .await?
        .into_inner()
        .rows;
    match rows[0].values[0].kind.as_ref() {
        Some(pb::value::Kind::StringValue(name)) => Ok(name.clone()),
        other => panic!("{other:?}"),
    }
}

/// Waits until the router has taken in the MOVING event.
async fn router_sees_moving(harness: &Harness) {
    let tenant = tenant_id("acme");
    eventually(Duration::from_secs(5), "the router sees MOVING", || async {
        harness
            .core
            .routes
            .get(&tenant)
            .await
            .is_ok_and(|route| route.state == TenantState::Moving)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_held_during_a_move_run_on_the_new_database() {
    let harness = std::sync::Arc::new(Harness::start_with(2, PoolConfig::default()).await);
    let (_, new) = tenant_with_two_silos(&harness).await;
    assert_eq!(here(&harness, None).await.unwrap(), "old");

    harness.routes.set_state("acme", TenantState::Moving);
    router_sees_moving(&harness).await;
    let held_since = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let harness = harness.clone();
            tokio::spawn(async move {
                here(&harness, Some(Duration::from_secs(10)))
                    .await
                    .map(|name| (name, Instant::now()))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        calls.iter().all(|call| !call.is_finished()),
        "calls ran while the tenant was moving"
    );

    let switched = Instant::now();
    harness.set_route_tls("acme", 1, &new, TierLimits::default(), Default::default());
    for call in calls {
        let (name, answered) = call.await.unwrap().expect("a held call succeeds");
        assert_eq!(name, "new", "a held call ran on the old database");
        assert!(answered >= switched);
    }
    let held = held_since.elapsed();
    assert!(held < Duration::from_secs(2), "held {held:?}");
    // Calls after the switch go to the new database too.
    assert_eq!(here(&harness, None).await.unwrap(), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_past_the_hold_is_unavailable_and_a_shorter_deadline_wins() {
    let harness = Harness::start_with(2, PoolConfig::default()).await;
    let (old, _) = tenant_with_two_silos(&harness).await;
    harness.routes.set_state("acme", TenantState::Moving);
    router_sees_moving(&harness).await;

    let started = Instant::now();
    let short = here(&harness, Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::DeadlineExceeded, "{short:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));

    let started = Instant::now();
    let held = here(&harness, None).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(held.code(), Code::Unavailable, "{held:?}");
    assert!(held.message().contains("moving"), "{held:?}");
    assert!(held.metadata().get("retry-after-ms").is_some(), "{held:?}");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(5)).contains(&waited),
        "held {waited:?}, not the default 2 s"
    );
    // Writes held the same way are not applied anywhere.
    let write = harness
        .client
        .clone()
        .execute(harness.request("acme", execute("INSERT INTO here VALUES ('x')", vec![])))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::Unavailable);
    let admin = harness.servers[0].connect(&old).await.expect("admin");
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM here", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "a held write ran on the old database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_ends_with_aborted_when_its_tenant_starts_moving() {
    let harness = Harness::start_with(2, PoolConfig::default()).await;
    tenant_with_two_silos(&harness).await;
    let mut transaction = harness.begin("acme").await;
    transaction
        .call(pb::transaction_request::Kind::Execute(execute(
            "INSERT INTO here VALUES ('in the transaction')",
            vec![],
        )))
        .await
        .expect("insert");
    harness.routes.set_state("acme", TenantState::Moving);
    let ended = tokio::time::timeout(Duration::from_secs(5), transaction.next())
        .await
        .expect("the transaction ends")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("moving"), "{ended:?}");
}
