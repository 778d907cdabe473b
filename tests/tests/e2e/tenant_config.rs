//! Per-tenant configuration: tier defaults and tenant values merged, changed through the
//! control plane, served by routers from their route cache.

use std::time::Duration;

use silo_proto::controlplane::v1 as cpb;
use silo_proto::router::v1 as rpb;
use silo_router::{metrics::ResultLabels, pool::PoolConfig};
use silo_tests::{
    TestControlPlane, TestEnv, eventually,
    router::{TestRouter, call, statement, tenant_token},
    token, with_token,
};
use tonic::Code;

const TIERS: &str = "default_tier = \"standard\"\n\
    [tiers.standard]\nprovisioner = \"postgres\"\n\
    [tiers.standard.config]\n\"beta.search\" = false\nlimits = { seats = 5, projects = 3 }\n\
    [tiers.premium]\nprovisioner = \"postgres\"\n";

async fn control_plane(env: &TestEnv, tiers: &str) -> TestControlPlane {
    env.control_plane_with_tiers(tiers).await
}

async fn set(
    cp: &TestControlPlane,
    role: &str,
    tenant: &str,
    key: &str,
    value: &str,
) -> Result<cpb::TenantConfig, tonic::Status> {
    cp.client()
        .set_tenant_config(with_token(
            cpb::SetTenantConfigRequest {
                tenant_id: tenant.into(),
                key: key.into(),
                value_json: value.into(),
            },
            &token(role),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn unset(cp: &TestControlPlane, tenant: &str, key: &str) -> cpb::TenantConfig {
    cp.client()
        .unset_tenant_config(with_token(
            cpb::UnsetTenantConfigRequest {
                tenant_id: tenant.into(),
                key: key.into(),
            },
            &token("admin"),
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn get(
    cp: &TestControlPlane,
    role: &str,
    tenant: &str,
) -> Result<cpb::TenantConfig, tonic::Status> {
    cp.client()
        .get_tenant_config(with_token(
            cpb::GetTenantConfigRequest {
                tenant_id: tenant.into(),
            },
            &token(role),
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The router's GetConfig for `tenant`'s own token, naming `header` in x-tenant-id.
async fn router_config(
    router: &TestRouter,
    tenant: &str,
    header: Option<&str>,
    if_version: &str,
) -> Result<rpb::TenantConfig, tonic::Status> {
    router
        .client
        .clone()
        .get_config(call(
            rpb::GetConfigRequest {
                if_version: if_version.into(),
            },
            &tenant_token(tenant),
            header,
        ))
        .await
        .map(tonic::Response::into_inner)
}

fn misses(router: &TestRouter) -> u64 {
    router
        .metrics
        .route_lookups
        .get_or_create(&ResultLabels {
            result: "miss".into(),
        })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_defaults_and_tenant_values_merge_per_key_and_unset_shows_the_default_again() {
    let env = TestEnv::start(1).await;
    let cp = control_plane(&env, TIERS).await;
    cp.onboard(&["acme", "globex"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;

    let fresh = get(&cp, "admin", "acme").await.unwrap();
    assert_eq!(fresh.revision, 0);
    assert_eq!(fresh.settings["beta.search"], "false");
    assert_eq!(fresh.settings["limits"], r#"{"projects":3,"seats":5}"#);
    assert!(fresh.tenant_settings.is_empty());
    let served = router_config(&router, "acme", None, "").await.unwrap();
    assert_eq!(served.version, fresh.version);
    assert_eq!(served.settings, fresh.settings);

    set(&cp, "admin", "acme", "beta.search", "true")
        .await
        .unwrap();
    // Shallow: the tenant's object replaces the tier's whole.
    let changed = set(&cp, "admin", "acme", "limits", r#"{ "seats": 50 }"#)
        .await
        .unwrap();
    assert_eq!(changed.revision, 2);
    assert_eq!(changed.settings["beta.search"], "true");
    assert_eq!(changed.settings["limits"], r#"{"seats":50}"#);
    assert_eq!(changed.tier_defaults["beta.search"], "false");
    assert_eq!(changed.tenant_settings.len(), 2);
    let served = eventually(
        Duration::from_secs(5),
        "the router serves the change",
        || {
            let router = &router;
            let version = changed.version.clone();
            async move {
                let served = router_config(router, "acme", None, "").await.unwrap();
                (served.version == version).then_some(served)
            }
        },
    )
    .await;
    assert_eq!(served.settings, changed.settings);
    // Another tenant of the tier keeps the defaults.
    let other = router_config(&router, "globex", None, "").await.unwrap();
    assert_eq!(other.settings["beta.search"], "false");

    // Setting the value it has changes nothing: same revision, no event.
    let again = set(&cp, "admin", "acme", "beta.search", "true")
        .await
        .unwrap();
    assert_eq!(again.version, changed.version);

    let unset_once = unset(&cp, "acme", "beta.search").await;
    assert_eq!(
        unset_once.settings["beta.search"], "false",
        "the default again"
    );
    assert_eq!(unset_once.revision, 3);
    assert!(!unset_once.tenant_settings.contains_key("beta.search"));
    // Unsetting what the tenant does not set changes nothing.
    let unset_twice = unset(&cp, "acme", "beta.search").await;
    assert_eq!(unset_twice.version, unset_once.version);
    eventually(
        Duration::from_secs(5),
        "the router serves the unset",
        || {
            let router = &router;
            let version = unset_once.version.clone();
            async move {
                let served = router_config(router, "acme", None, "").await.unwrap();
                (served.version == version && served.settings["beta.search"] == "false")
                    .then_some(())
            }
        },
    )
    .await;

    // A new tiers file after a restart: same revision, other defaults, another version.
    // acme overrides `limits`, so its settings and version stay; globex's change.
    let (acme_before, globex_before) = (
        get(&cp, "viewer", "acme").await.unwrap(),
        get(&cp, "viewer", "globex").await.unwrap(),
    );
    cp.stop().await;
    let cp = control_plane(&env, &TIERS.replace("projects = 3", "projects = 4")).await;
    let acme_after = get(&cp, "viewer", "acme").await.unwrap();
    assert_eq!(acme_after.version, acme_before.version);
    assert_eq!(
        acme_after.tier_defaults["limits"],
        r#"{"projects":4,"seats":5}"#
    );
    let globex_after = get(&cp, "viewer", "globex").await.unwrap();
    assert_eq!(globex_after.revision, globex_before.revision);
    assert_ne!(globex_after.version, globex_before.version);
    assert_eq!(
        globex_after.settings["limits"],
        r#"{"projects":4,"seats":5}"#
    );
    // A router that resolves globex now serves the new default under the new version.
    let late = TestRouter::start(&cp, PoolConfig::default()).await;
    let served = router_config(&late, "globex", None, "").await.unwrap();
    assert_eq!(served.version, globex_after.version);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_reaches_a_router_without_a_call_on_the_request_path_and_keeps_the_pool() {
    let env = TestEnv::start(1).await;
    let cp = control_plane(&env, TIERS).await;
    cp.onboard(&["acme"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let query = || rpb::QueryRequest {
        statement: statement("SELECT 1", vec![]),
        max_rows: 0,
    };
    router
        .client
        .clone()
        .query(call(query(), &tenant_token("acme"), None))
        .await
        .unwrap();
    let (misses_before, pools_before) = (misses(&router), router.metrics.pool_creations.get());
    assert_eq!(misses_before, 1, "the first call resolved the tenant");

    let changed = set(&cp, "admin", "acme", "beta.search", "true")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(2),
        "the router serves the change",
        || {
            let router = &router;
            let version = changed.version.clone();
            async move {
                let served = router_config(router, "acme", None, "").await.unwrap();
                (served.version == version).then_some(())
            }
        },
    )
    .await;
    router
        .client
        .clone()
        .query(call(query(), &tenant_token("acme"), None))
        .await
        .unwrap();
    // The route was refreshed in the background: no call waited for the control plane,
    // and the tenant's pool (its connections) stayed.
    assert_eq!(misses(&router), misses_before);
    assert_eq!(router.metrics.pool_creations.get(), pools_before);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_values_and_limits_are_refused_with_the_reason_and_nothing_is_written() {
    let env = TestEnv::start(1).await;
    let cp = control_plane(&env, TIERS).await;
    cp.onboard(&["acme"]).await;
    let before = get(&cp, "admin", "acme").await.unwrap();
    let big = format!("\"{}\"", "x".repeat(64 * 1024));
    let long_key = "k".repeat(129);
    for (key, value, reason) in [
        ("Beta", "true", "config key"),
        ("", "true", "config key"),
        ("a/b", "true", "config key"),
        (".x", "true", "config key"),
        (long_key.as_str(), "true", "config key"),
        ("region", "eu", "not valid JSON"),
        ("region", "", "not valid JSON"),
        ("region", "1 2", "not valid JSON"),
        ("blob", big.as_str(), "at most 65536"),
    ] {
        let status = set(&cp, "admin", "acme", key, value).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key:?} {status:?}");
        assert!(status.message().contains(reason), "{key:?} {status:?}");
    }
    let status = set(&cp, "admin", "no-such", "beta", "true")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = set(&cp, "admin", "Not_A_Tenant", "beta", "true")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let after = get(&cp, "admin", "acme").await.unwrap();
    assert_eq!(after.revision, before.revision, "nothing written");
    assert_eq!(after.version, before.version);

    // The per-tenant bounds: 128 keys, 256 KiB of values together.
    for i in 0..128 {
        set(&cp, "admin", "acme", &format!("k{i}"), "1")
            .await
            .unwrap();
    }
    let status = set(&cp, "admin", "acme", "one-more", "1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 128"), "{status:?}");
    // Replacing one of them is still fine.
    set(&cp, "admin", "acme", "k0", "2").await.unwrap();
    let chunk = format!("\"{}\"", "x".repeat(60 * 1024));
    for i in 1..=4 {
        set(&cp, "admin", "acme", &format!("k{i}"), &chunk)
            .await
            .unwrap();
    }
    let status = set(&cp, "admin", "acme", "k5", &chunk).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("262144"), "{status:?}");
    let full = get(&cp, "admin", "acme").await.unwrap();
    assert_eq!(
        full.tenant_settings["k5"], "1",
        "the refused value was not written"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reads_only_its_own_config_and_another_is_denied_exactly_like_an_unknown_one() {
    let env = TestEnv::start(1).await;
    let cp = control_plane(&env, TIERS).await;
    cp.onboard(&["acme", "globex"]).await;
    set(&cp, "admin", "globex", "secret-flag", "true")
        .await
        .unwrap();
    let router = TestRouter::start(&cp, PoolConfig::default()).await;

    let own = router_config(&router, "acme", Some("acme"), "")
        .await
        .unwrap();
    assert!(!own.settings.contains_key("secret-flag"));
    let other = router_config(&router, "acme", Some("globex"), "")
        .await
        .unwrap_err();
    let unknown = router_config(&router, "acme", Some("nobody"), "")
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    assert_eq!(unknown.code(), Code::PermissionDenied);
    assert_eq!(other.message(), unknown.message());
    // A token of a tenant the control plane does not know: NOT_FOUND, as for SQL calls.
    let missing = router_config(&router, "nobody", None, "")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_version_answers_not_modified_until_the_config_changes() {
    let env = TestEnv::start(1).await;
    let cp = control_plane(&env, TIERS).await;
    cp.onboard(&["acme"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let first = router_config(&router, "acme", None, "").await.unwrap();
    assert!(!first.not_modified && !first.settings.is_empty());
    let same = router_config(&router, "acme", None, &first.version)
        .await
        .unwrap();
    assert!(same.not_modified);
    assert!(same.settings.is_empty());
    assert_eq!(same.version, first.version);
    let stale = router_config(&router, "acme", None, "0-0000000000000000")
        .await
        .unwrap();
    assert!(!stale.not_modified);
    assert_eq!(stale.settings, first.settings);

    set(&cp, "admin", "acme", "region", r#""eu""#)
        .await
        .unwrap();
    let changed = eventually(Duration::from_secs(5), "a new version", || {
        let router = &router;
        let version = first.version.clone();
        async move {
            let answer = router_config(router, "acme", None, &version).await.unwrap();
            (!answer.not_modified).then_some(answer)
        }
    })
    .await;
    assert_ne!(changed.version, first.version);
    assert_eq!(changed.settings["region"], r#""eu""#);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_config_but_only_an_admin_changes_it() {
    let env = TestEnv::start(1).await;
    let cp = control_plane(&env, TIERS).await;
    cp.onboard(&["acme"]).await;
    assert!(get(&cp, "viewer", "acme").await.is_ok());
    let denied = set(&cp, "viewer", "acme", "beta", "true")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = cp
        .client()
        .unset_tenant_config(with_token(
            cpb::UnsetTenantConfigRequest {
                tenant_id: "acme".into(),
                key: "beta".into(),
            },
            &token("viewer"),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Routers resolve routes; they do not read the config API.
    assert_eq!(
        get(&cp, "router", "acme").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        get(&cp, "admin", "nobody").await.unwrap_err().code(),
        Code::NotFound
    );
    set(&cp, "admin", "acme", "beta", "true").await.unwrap();
    cp.stop().await;
}
