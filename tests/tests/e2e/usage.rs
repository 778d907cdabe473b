//! Usage metering end to end: a known load over three tenants through two routers, one
//! router restarted mid-way and the control plane down for 20 s; GetUsage's totals equal
//! the load exactly.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use silo_control_plane::Hooks;
use silo_proto::controlplane::v1 as pb;
use silo_proto::router::v1 as rpb;
use silo_router::pool::PoolConfig;
use silo_router::routes::{LinkConfig, RouteCacheConfig};
use silo_tests::{
    TestEnv,
    proxy::LinkProxy,
    router::{TestRouter, call, int, statement, tenant_token},
    token, with_token,
};

/// What a tenant's calls should have been metered as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Expected {
    calls: u64,
    failed: u64,
    rows_returned: u64,
    rows_affected: u64,
}

/// One round of calls for `tenant` through `router`: a query returning `rows` rows, an
/// insert, a batch of two inserts and a statement that fails (INVALID_ARGUMENT). Adds
/// what it did to `expected`.
async fn round(router: &TestRouter, tenant: &str, n: i64, rows: i64, expected: &mut Expected) {
    let token = tenant_token(tenant);
    let mut client = router.client.clone();
    let queried = client
        .query(call(
            rpb::QueryRequest {
                statement: statement("SELECT id FROM seed WHERE id <= $1", vec![int(rows)]),
                max_rows: 0,
            },
            &token,
            None,
        ))
        .await
        .expect("query")
        .into_inner();
    assert_eq!(queried.rows.len() as i64, rows);
    client
        .execute(call(
            rpb::ExecuteRequest {
                statement: statement("INSERT INTO written VALUES ($1)", vec![int(n * 10)]),
            },
            &token,
            None,
        ))
        .await
        .expect("execute");
    client
        .batch(call(
            rpb::BatchRequest {
                statements: vec![
                    statement("INSERT INTO written VALUES ($1)", vec![int(n * 10 + 1)])
                        .expect("statement"),
                    statement("INSERT INTO written VALUES ($1)", vec![int(n * 10 + 2)])
                        .expect("statement"),
                ],
            },
            &token,
            None,
        ))
        .await
        .expect("batch");
    let refused = client
        .execute(call(
            rpb::ExecuteRequest {
                statement: statement("INSERT INTO nowhere VALUES (1)", vec![]),
            },
            &token,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    expected.calls += 4;
    expected.failed += 1;
    expected.rows_returned += rows as u64;
    expected.rows_affected += 3;
}

async fn get_usage(
    cp: &silo_tests::TestControlPlane,
    tenant: &str,
    from: SystemTime,
    to: SystemTime,
) -> pb::GetUsageResponse {
    cp.client()
        .get_usage(with_token(
            pb::GetUsageRequest {
                tenant_id: tenant.into(),
                from: Some(from.into()),
                to: Some(to.into()),
                granularity: pb::UsageGranularity::Minute.into(),
            },
            &token("viewer"),
        ))
        .await
        .expect("GetUsage")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_totals_equal_the_load_through_a_router_restart_and_a_control_plane_outage() {
    let env = TestEnv::start(1).await;
    let mut cp = env
        .control_plane_with(
            env.config(&["--usage-size-interval-secs=1"]),
            Hooks::default(),
        )
        .await;
    let tenants = ["acme", "globex", "initech"];
    cp.onboard(&tenants).await;
    let started = SystemTime::now();
    for tenant in tenants {
        let database = cp.get_tenant(tenant).await.unwrap().database;
        env.admin_client(0, &database)
            .await
            .batch_execute(
                "CREATE TABLE seed (id int PRIMARY KEY);
                 INSERT INTO seed SELECT generate_series(1, 100);
                 CREATE TABLE written (id int PRIMARY KEY);
                 GRANT SELECT ON seed TO PUBLIC; GRANT INSERT ON written TO PUBLIC",
            )
            .await
            .unwrap();
    }
    // Both routers reach the control plane through a proxy, so a control plane started
    // again on another port is found at the same address.
    let proxy = LinkProxy::start(cp.address()).await;
    let (routes, link) = (RouteCacheConfig::default(), LinkConfig::default());
    let start_router =
        || TestRouter::start_with(proxy.address(), PoolConfig::default(), &routes, &link);
    let mut first = start_router().await;
    let second = start_router().await;
    let mut expected: BTreeMap<&str, Expected> = BTreeMap::new();
    let mut n = 0;
    let mut load = async |routers: [&TestRouter; 2], expected: &mut BTreeMap<&str, Expected>| {
        for _ in 0..3 {
            for (i, tenant) in tenants.iter().enumerate() {
                for router in routers {
                    n += 1;
                    let rows = (n % 7 + i as i64 * 10) + 1;
                    round(router, tenant, n, rows, expected.entry(tenant).or_default()).await;
                }
            }
        }
    };
    load([&first, &second], &mut expected).await;
    // While the routers run, their records arrive every flush interval (1 s here).
    let shipped = silo_tests::eventually_reporting(
        Duration::from_secs(10),
        "the first shipments",
        || async {
            let far = SystemTime::now() + Duration::from_secs(120);
            let usage = get_usage(&cp, "", started - Duration::from_secs(120), far).await;
            let calls = usage.total.map_or(0, |t| t.calls);
            let want: u64 = expected.values().map(|e| e.calls).sum();
            if calls == want {
                Ok(calls)
            } else {
                Err(format!(
                    "{calls} of {want} calls; shipments {:?} / {:?}",
                    first.usage.shipments, second.usage.shipments
                ))
            }
        },
    )
    .await;
    assert!(shipped > 0);

    // A router restarted mid-way: on SIGTERM it ships what it has left.
    first.stop().await;
    first = start_router().await;
    load([&first, &second], &mut expected).await;

    // The control plane down for 20 s while both routers serve the tenants they know.
    cp.abort();
    let outage = tokio::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(20) {
        load([&first, &second], &mut expected).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    cp = env
        .control_plane_with(
            env.config(&["--usage-size-interval-secs=1"]),
            Hooks::default(),
        )
        .await;
    proxy.retarget(cp.address());
    // What the routers kept through the outage arrives with their next shipments.
    let want: u64 = expected.values().map(|e| e.calls).sum();
    silo_tests::eventually_reporting(Duration::from_secs(15), "the kept records", || async {
        let far = SystemTime::now() + Duration::from_secs(120);
        let usage = get_usage(&cp, "", started - Duration::from_secs(120), far).await;
        let calls = usage.total.map_or(0, |t| t.calls);
        if calls == want {
            Ok(())
        } else {
            Err(format!("{calls} of {want} calls"))
        }
    })
    .await;
    load([&first, &second], &mut expected).await;
    first.stop().await;
    second.stop().await;

    let to = SystemTime::now() + Duration::from_secs(120);
    let from = started - Duration::from_secs(120);
    let mut all_calls = 0;
    for tenant in tenants {
        let want = expected[tenant];
        let usage = get_usage(&cp, tenant, from, to).await;
        let total = usage.total.clone().expect("total");
        let got = Expected {
            calls: total.calls,
            failed: total.failed_calls,
            rows_returned: total.rows_returned,
            rows_affected: total.rows_affected,
        };
        assert_eq!(got, want, "{tenant}: {usage:?}");
        assert!(total.bytes_in > 0 && total.bytes_out > 0, "{total:?}");
        assert!(total.db_time_us > 0, "{total:?}");
        assert!(total.peak_concurrent_calls >= 1, "{total:?}");
        // Calls by method and code add up to the calls.
        let by_method: u64 = usage
            .periods
            .iter()
            .flat_map(|p| &p.by_method)
            .map(|m| m.calls)
            .sum();
        assert_eq!(by_method, want.calls, "{tenant}");
        let failed: u64 = usage
            .periods
            .iter()
            .flat_map(|p| &p.by_method)
            .filter(|m| m.code == "INVALID_ARGUMENT")
            .map(|m| m.calls)
            .sum();
        assert_eq!(failed, want.failed, "{tenant}");
        all_calls += want.calls;
    }
    // Every tenant at once: the same sums.
    let all = get_usage(&cp, "", from, to).await;
    assert_eq!(all.total.expect("total").calls, all_calls);
    // Database sizes were sampled.
    let sized = silo_tests::eventually(Duration::from_secs(10), "a database size sample", || {
        let cp = &cp;
        async move {
            let usage = get_usage(cp, "acme", from, to).await;
            let bytes = usage.total.map_or(0, |t| t.database_bytes);
            (bytes > 0).then_some(bytes)
        }
    })
    .await;
    println!("{all_calls} calls metered over 3 tenants; acme's database {sized} bytes");
    cp.stop().await;
}

/// GetUsage refuses a reversed range and a caller without a reading role; RecordUsage
/// is for routers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_calls_refuse_bad_ranges_and_wrong_roles() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let now = SystemTime::now();
    let reversed = cp
        .client()
        .get_usage(with_token(
            pb::GetUsageRequest {
                tenant_id: String::new(),
                from: Some(now.into()),
                to: Some((now - Duration::from_secs(60)).into()),
                granularity: 0,
            },
            &token("admin"),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        reversed.code(),
        tonic::Code::InvalidArgument,
        "{reversed:?}"
    );
    let forged = cp
        .client()
        .record_usage(with_token(
            pb::RecordUsageRequest {
                router_instance: "not-a-router".into(),
                records: vec![],
            },
            &token("admin"),
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{forged:?}");
    let odd_minute = cp
        .client()
        .record_usage(with_token(
            pb::RecordUsageRequest {
                router_instance: "r".into(),
                records: vec![pb::UsageRecord {
                    tenant_id: "acme".into(),
                    minute: Some(prost_types::Timestamp {
                        seconds: 61,
                        nanos: 0,
                    }),
                    calls: 1,
                    ..Default::default()
                }],
            },
            &token("router"),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        odd_minute.code(),
        tonic::Code::InvalidArgument,
        "{odd_minute:?}"
    );
    cp.stop().await;
}

/// A tier's monthly call quota: once the routers' usage shows it used up, the tenant's SQL
/// calls are RESOURCE_EXHAUSTED naming the quota (another tenant is not affected), and an
/// admin raising the tenant's own quota serves it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_monthly_quota_refuses_calls_until_an_admin_raises_it() {
    let env = TestEnv::start(1).await;
    let cp = env
        .control_plane_with_tiers(
            "default_tier = \"standard\"\n\
         [tiers.standard]\nprovisioner = \"postgres\"\n\
         [tiers.metered]\nprovisioner = \"postgres\"\nmonthly_call_quota = 5\n",
        )
        .await;
    for (tenant, tier) in [("acme", "metered"), ("globex", "standard")] {
        cp.onboard_in_tier(tenant, tier).await;
    }
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let select = |tenant: &'static str| {
        let mut client = router.client.clone();
        async move {
            client
                .query(call(
                    rpb::QueryRequest {
                        statement: statement("SELECT 1", vec![]),
                        max_rows: 0,
                    },
                    &tenant_token(tenant),
                    None,
                ))
                .await
        }
    };
    for _ in 0..5 {
        select("acme").await.expect("within the quota");
    }
    // Usage arrives with the router's next shipment (every second here).
    let refused = silo_tests::eventually(Duration::from_secs(15), "the quota to bite", || async {
        select("acme").await.err()
    })
    .await;
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("monthly call quota of 5 calls used"),
        "{refused:?}"
    );
    select("globex").await.expect("another tier, no quota");

    let raised = cp
        .client()
        .set_tenant_quota(with_token(
            pb::SetTenantQuotaRequest {
                tenant_id: "acme".into(),
                monthly_calls: Some(1_000),
                monthly_rows: None,
            },
            &token("admin"),
        ))
        .await
        .expect("SetTenantQuota")
        .into_inner();
    assert_eq!(
        (raised.monthly_calls, raised.exhausted.as_str()),
        (1_000, "")
    );
    assert!(raised.calls_used >= 5, "{raised:?}");
    silo_tests::eventually(Duration::from_secs(10), "served again", || async {
        select("acme").await.ok()
    })
    .await;
    let viewer = cp
        .client()
        .set_tenant_quota(with_token(
            pb::SetTenantQuotaRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            },
            &token("viewer"),
        ))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), tonic::Code::PermissionDenied);
    router.stop().await;
    cp.stop().await;
}
