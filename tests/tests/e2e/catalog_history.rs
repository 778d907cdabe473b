//! Nothing in silo costs in proportion to the catalog's history: a router starts at the
//! head of the tenant-event log, replays only what it missed across a short break, and
//! after a break longer than the log keeps it resolves what it caches again; the control
//! plane trims old events and operations.

use std::time::{Duration, Instant};

use silo_control_plane::Hooks;
use silo_control_plane::catalog::Catalog;
use silo_control_plane::metrics::ControlPlaneMetrics;
use silo_control_plane::retention::{Retention, trim};
use silo_proto::controlplane::v1 as cpb;
use silo_router::pool::PoolConfig;
use silo_router::routes::{LinkConfig, RouteCacheConfig};
use silo_tests::calls::{select_one, suspend, until_refused};
use silo_tests::proxy::LinkProxy;
use silo_tests::router::TestRouter;
use silo_tests::{TestEnv, token, with_token};
use tokio_util::sync::CancellationToken;

/// Appends `count` events of tenants that do not exist, straight into the catalog, as a
/// long history would have left them.
async fn add_history(env: &TestEnv, count: i64) {
    let catalog = env.admin_client(0, &env.catalog_database).await;
    catalog
        .execute(
            "INSERT INTO tenant_events (sequence, tenant_id, kind, state, occurred_at)
             SELECT (SELECT coalesce(max(sequence), 0) FROM tenant_events) + g,
                    'ghost-' || g, 'state_changed', 'ACTIVE', now()
             FROM generate_series(1, $1::bigint) g",
            &[&count],
        )
        .await
        .expect("history");
}

async fn router_behind(proxy: &LinkProxy) -> TestRouter {
    TestRouter::start_with(
        proxy.address(),
        PoolConfig::default(),
        &RouteCacheConfig::default(),
        &LinkConfig::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_starts_at_the_head_and_replays_only_what_it_missed() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["head-a", "head-b"]).await;
    add_history(&env, 2_000).await;
    let proxy = LinkProxy::start(cp.address()).await;
    let router = router_behind(&proxy).await;
    select_one(&router, "head-a").await.expect("served");
    select_one(&router, "head-b").await.expect("served");
    // One new event as a marker: the stream is in order, so any replayed history would
    // reach the router before it. Waiting for the marker replaces a sleep.
    add_history(&env, 1).await;
    silo_tests::eventually(Duration::from_secs(5), "the marker event", || async {
        (router.metrics.tenant_events.get() > 0).then_some(())
    })
    .await;
    assert_eq!(
        router.metrics.tenant_events.get(),
        1,
        "a new router replays none of the history, only the marker after it"
    );

    // A short break (the link goes silent); what happens meanwhile is replayed, and only
    // that.
    proxy.freeze_existing();
    suspend(&cp, "head-b").await;
    add_history(&env, 10).await;
    // The suspension during the break is obeyed.
    until_refused(&router, "head-b", Duration::from_secs(15)).await;
    // The marker, then the suspension and the 10 events of the break.
    silo_tests::eventually(Duration::from_secs(5), "the replay", || async {
        (router.metrics.tenant_events.get() >= 12).then_some(())
    })
    .await;
    assert_eq!(router.metrics.tenant_events.get(), 12, "each event once");
    select_one(&router, "head-a").await.expect("still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_break_longer_than_the_log_keeps_the_router_resolves_again() {
    let env = TestEnv::start(1).await;
    // Keep no history at all: everything but the newest event goes every second.
    let config = env.config(&["--event-retention-hours=0", "--retention-interval-secs=1"]);
    let cp = env.control_plane_with(config, Hooks::default()).await;
    cp.onboard(&["gap-a"]).await;
    let proxy = LinkProxy::start(cp.address()).await;
    let router = router_behind(&proxy).await;
    select_one(&router, "gap-a").await.expect("served");

    proxy.freeze_existing();
    suspend(&cp, "gap-a").await;
    // Another event after it, so that the suspension is not the newest and is trimmed.
    add_history(&env, 1).await;
    let trimmed = silo_tests::eventually(Duration::from_secs(5), "the trim", || async {
        let catalog = env.admin_client(0, &env.catalog_database).await;
        let left: i64 = catalog
            .query_one("SELECT count(*) FROM tenant_events", &[])
            .await
            .expect("count")
            .get(0);
        (left == 1).then_some(())
    })
    .await;
    let () = trimmed;
    let events_before = router.metrics.tenant_events.get();
    let refused = until_refused(&router, "gap-a", Duration::from_secs(15)).await;
    println!("suspension obeyed {refused:?} after the break");
    assert_eq!(
        router.metrics.tenant_events.get(),
        events_before,
        "nothing was replayed: the router resolved its tenants again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_old_events_and_operations_but_keeps_the_newest_and_deletions() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["old-a", "old-b"]).await;
    cp.client()
        .delete_tenant(with_token(
            cpb::DeleteTenantRequest {
                tenant_id: "old-b".into(),
                ..Default::default()
            },
            &token("admin"),
        ))
        .await
        .expect("delete");
    silo_tests::eventually(Duration::from_secs(20), "old-b deleted", || async {
        let tenant = cp.get_tenant("old-b").await.ok()?;
        (tenant.state() == cpb::TenantState::Deleted).then_some(())
    })
    .await;
    add_history(&env, 2_500).await;
    let admin = env.admin_client(0, &env.catalog_database).await;
    // Everything so far happened two months ago.
    admin
        .batch_execute(
            "UPDATE tenant_events SET occurred_at = now() - interval '60 days';
             UPDATE operations SET finished_at = now() - interval '60 days'
             WHERE finished_at IS NOT NULL",
        )
        .await
        .expect("age");
    let count = |sql: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    let newest = count("SELECT max(sequence) FROM tenant_events").await;
    let deletions = count("SELECT count(*) FROM operations WHERE kind = 'delete_tenant'").await;
    assert_eq!(deletions, 1);

    let catalog = Catalog::open(
        env.servers[0]
            .dsn(&env.catalog_database)
            .parse()
            .expect("dsn"),
        &silo_tls::postgres::PgTls::disabled(),
        2,
        ControlPlaneMetrics::default(),
        CancellationToken::new(),
    )
    .await
    .expect("catalog");
    let retention = Retention {
        events: Duration::from_secs(3 * 86_400),
        operations: Duration::from_secs(30 * 86_400),
        usage: Duration::from_secs(400 * 86_400),
        every: Duration::from_secs(600),
    };
    let started = Instant::now();
    let trimmed = trim(&catalog, &retention).await.expect("trim");
    println!("retention pass: {trimmed:?} in {:?}", started.elapsed());
    assert!(trimmed.events >= 2_500, "{trimmed:?}");
    assert_eq!(
        count("SELECT count(*) FROM tenant_events").await,
        1,
        "only the newest event stays"
    );
    assert_eq!(
        count("SELECT max(sequence) FROM tenant_events").await,
        newest
    );
    assert_eq!(
        count("SELECT count(*) FROM operations WHERE finished_at IS NOT NULL").await,
        deletions,
        "finished operations went, the deletion stayed"
    );
    // Sequence numbers go on from the newest, and a new event is seen by watchers.
    suspend(&cp, "old-a").await;
    assert_eq!(
        count("SELECT max(sequence) FROM tenant_events").await,
        newest + 1
    );
    // The next pass takes the event that was the newest; then there is nothing more.
    assert_eq!(trim(&catalog, &retention).await.expect("trim").events, 1);
    assert_eq!(
        trim(&catalog, &retention).await.expect("trim"),
        silo_control_plane::retention::Trimmed::default()
    );
}
