//! Onboarding latency with the `postgres` provisioner: CreateTenant → ACTIVE, one tenant at
//! a time (latency) and then a concurrent batch (throughput), on a fleet of two local
//! PostgreSQL servers. Prints p50 / p99 / max; the baseline measured in the same run is a
//! bare `CREATE ROLE` + `CREATE DATABASE` + `DROP` on the same server, the floor any
//! provisioner pays.

use std::time::{Duration, Instant};

use futures::{StreamExt, future::join_all};
use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_tests::{TestControlPlane, TestEnv, token, with_token};

const TENANTS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.50);
    println!(
        "{label:<44} n={:<3} p50={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    p50
}

async fn onboard(cp: &TestControlPlane, tenant: &str) -> Duration {
    let started = Instant::now();
    let operation = cp.create_tenant(tenant, "bench").await.expect("create");
    let mut stream = cp
        .client()
        .watch_operation(with_token(
            pb::WatchOperationRequest {
                operation_id: operation.operation_id,
            },
            &token("admin"),
        ))
        .await
        .expect("watch")
        .into_inner();
    while let Some(update) = stream.next().await {
        let update = update.expect("update");
        if update.done {
            assert_eq!(
                update.status(),
                pb::OperationStatus::Succeeded,
                "{}",
                update.error
            );
            break;
        }
    }
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = TestEnv::start(2).await;
    // Every server of the bench is up: the template cluster it built (in /dev/shm) goes.
    silo_pg_server::remove_template_built_here();
    let cp = env.control_plane(Hooks::default()).await;

    let admin = env.admin_client(0, "postgres").await;
    let mut baseline = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        admin
            .batch_execute(&format!("CREATE ROLE bench_{i} LOGIN"))
            .await
            .expect("baseline role");
        admin
            .batch_execute(&format!("CREATE DATABASE bench_{i} OWNER bench_{i}"))
            .await
            .expect("baseline database");
        baseline.push(started.elapsed());
        admin
            .batch_execute(&format!("DROP DATABASE bench_{i}"))
            .await
            .expect("baseline drop");
        admin
            .batch_execute(&format!("DROP ROLE bench_{i}"))
            .await
            .expect("baseline drop");
    }
    println!("onboarding benchmark: {TENANTS} tenants, postgres provisioner, 2 local servers");
    let floor = report("baseline: CREATE ROLE + CREATE DATABASE", baseline);

    let mut sequential = Vec::new();
    for i in 0..TENANTS {
        sequential.push(onboard(&cp, &format!("seq-{i}")).await);
    }
    let p50 = report("CreateTenant -> ACTIVE, one at a time", sequential);

    let started = Instant::now();
    let batch = join_all((0..TENANTS).map(|i| {
        let cp = &cp;
        async move { onboard(cp, &format!("par-{i}")).await }
    }))
    .await;
    let wall = started.elapsed();
    report("CreateTenant -> ACTIVE, 50 at once", batch);
    println!(
        "concurrent batch wall time {:.2} s ({:.1} tenants/s); one-at-a-time p50 / baseline p50 = {:.1}x",
        wall.as_secs_f64(),
        TENANTS as f64 / wall.as_secs_f64(),
        p50.as_secs_f64() / floor.as_secs_f64()
    );
    cp.stop().await;
}
