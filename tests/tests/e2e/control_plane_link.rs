//! The router keeps serving, and keeps obeying, through a hanging, silent or restarting
//! control plane. A TCP proxy between router and control plane makes the link misbehave.

use std::time::{Duration, Instant};

use silo_control_plane::Hooks;
use silo_router::pool::PoolConfig;
use silo_router::routes::{LinkConfig, RouteCacheConfig};
use silo_tests::TestEnv;
use silo_tests::calls::{resume, select_one, suspend, until_refused};
use silo_tests::proxy::{LinkProxy, Mode};
use silo_tests::router::TestRouter;

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort();
    let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
    latencies[index]
}

/// Calls every tenant in a loop for `duration`; returns the latencies and the failures.
async fn load(
    router: &TestRouter,
    tenants: &[String],
    duration: Duration,
) -> (Vec<Duration>, Vec<tonic::Status>) {
    let until = Instant::now() + duration;
    let callers = tenants.iter().flat_map(|tenant| {
        (0..2).map(move |_| async move {
            let (mut latencies, mut failures) = (Vec::new(), Vec::new());
            while Instant::now() < until {
                match select_one(router, tenant).await {
                    Ok(latency) => latencies.push(latency),
                    Err(status) => failures.push(status),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (latencies, failures)
        })
    });
    let mut all = (Vec::new(), Vec::new());
    for (latencies, failures) in futures::future::join_all(callers).await {
        all.0.extend(latencies);
        all.1.extend(failures);
    }
    all
}

fn resolutions(router: &TestRouter) -> u64 {
    ["found", "not_found", "unavailable", "invalid"]
        .iter()
        .map(|result| router.metrics.route_resolutions(result))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_control_plane_does_not_slow_known_tenants() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let tenants: Vec<String> = (0..4).map(|i| format!("hang-{i}")).collect();
    let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
    cp.onboard(&names).await;
    let proxy = LinkProxy::start(cp.address()).await;
    // Routes go stale every 200 ms, so they are revalidated all through the outage.
    let routes = RouteCacheConfig {
        ttl: Duration::from_millis(200),
        ..RouteCacheConfig::default()
    };
    let router = TestRouter::start_with(
        proxy.address(),
        PoolConfig::default(),
        &routes,
        &LinkConfig::default(),
    )
    .await;

    let (mut before, failures) = load(&router, &tenants, Duration::from_secs(2)).await;
    assert!(failures.is_empty(), "{failures:?}");
    let p99_before = percentile(&mut before, 0.99);

    // The control plane hangs: its connection goes silent, new ones are accepted and
    // never answered.
    proxy.set_mode(Mode::Hang);
    proxy.freeze_existing();
    let outage = Duration::from_secs(8);
    let resolved_before = resolutions(&router);
    let (mut during, failures) = load(&router, &tenants, outage).await;
    let attempts = resolutions(&router) - resolved_before;
    let p99_during = percentile(&mut during, 0.99);
    println!(
        "p99 before {p99_before:?}, during the hang {p99_during:?}; {} calls; {attempts} resolve attempts in {outage:?}",
        during.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        p99_during <= p99_before * 2 + Duration::from_millis(250),
        "p99 {p99_during:?} against {p99_before:?} before"
    );
    let per_tenant_per_second = attempts as f64 / tenants.len() as f64 / outage.as_secs_f64();
    assert!(per_tenant_per_second <= 2.0, "{attempts} resolve attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_made_while_the_link_is_silent_reaches_the_router() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["quiet"]).await;
    let proxy = LinkProxy::start(cp.address()).await;
    let router = TestRouter::start_with(
        proxy.address(),
        PoolConfig::default(),
        &RouteCacheConfig::default(),
        &LinkConfig::default(),
    )
    .await;
    select_one(&router, "quiet").await.expect("served");
    // The link goes silent (no FIN, no RST), as when a NAT entry is dropped; new
    // connections get through.
    proxy.freeze_existing();
    suspend(&cp, "quiet").await;
    let refused = until_refused(&router, "quiet", Duration::from_secs(15)).await;
    println!("suspension obeyed {refused:?} after it was made over a silent link");
    assert!(
        refused <= Duration::from_secs(10),
        "within the keepalive bound: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_right_after_a_restart_reaches_the_router_within_a_second_and_a_half() {
    let env = TestEnv::start(1).await;
    let mut cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["phoenix"]).await;
    let proxy = LinkProxy::start(cp.address()).await;
    let router = TestRouter::start_with(
        proxy.address(),
        PoolConfig::default(),
        &RouteCacheConfig::default(),
        &LinkConfig::default(),
    )
    .await;
    select_one(&router, "phoenix").await.expect("served");
    for cycle in 0..5 {
        cp.abort();
        // Down long enough for a back-off without a low cap to grow past seconds.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cp = env.control_plane(Hooks::default()).await;
        proxy.retarget(cp.address());
        suspend(&cp, "phoenix").await;
        let refused = until_refused(&router, "phoenix", Duration::from_secs(5)).await;
        println!("cycle {cycle}: suspension obeyed after {refused:?}");
        assert!(
            refused <= Duration::from_millis(1500),
            "cycle {cycle}: {refused:?}"
        );
        resume(&cp, "phoenix").await;
        let back = silo_tests::eventually(Duration::from_secs(5), "served again", || async {
            select_one(&router, "phoenix").await.ok()
        })
        .await;
        let _ = back;
    }
}
