//! A small migration (a column and an index) over a fleet of tenant databases on two local
//! PostgreSQL servers, at concurrency 1, 8 and 32: wall time and tenants per minute. The
//! baseline, measured in the same run, applies the same statements straight to every
//! database over superuser connections at concurrency 8, with no bookkeeping.
//!
//! `SILO_BENCH_TENANTS` sets the fleet size (default 1000).

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_tests::{TenantMigrations, TestControlPlane, TestEnv, token, with_token};

async fn onboard(cp: &TestControlPlane, count: usize) {
    let started = Instant::now();
    let operations: Vec<pb::Operation> = stream::iter(0..count)
        .map(|i| async move {
            cp.create_tenant(&format!("bench-{i:04}"), "bench")
                .await
                .expect("create")
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for operation in operations {
        cp.wait_succeeded(&operation.operation_id).await;
    }
    println!(
        "onboarded {count} tenants in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn migrate(cp: &TestControlPlane, concurrency: u32) -> (Duration, pb::MigrationCounts) {
    let started = Instant::now();
    let operation = cp
        .client()
        .start_migration(with_token(
            pb::StartMigrationRequest {
                concurrency,
                ..Default::default()
            },
            &token("admin"),
        ))
        .await
        .expect("start")
        .into_inner();
    let mut stream = cp
        .client()
        .watch_migration(with_token(
            pb::GetMigrationRequest {
                operation_id: operation.operation_id,
            },
            &token("admin"),
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(update) = stream.next().await {
        last = update.expect("update").counts;
    }
    (started.elapsed(), last.expect("counts"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tenants: usize = std::env::var("SILO_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let env = TestEnv::start(2).await;
    // Every server of the bench is up: the template cluster it built (in /dev/shm) goes.
    silo_pg_server::remove_template_built_here();
    let migrations = TenantMigrations::from_repository();
    let flags = |workers: &str| env.config(&[&migrations.flag(), workers]);
    let cp = env
        .control_plane_with(flags("--workers=16"), Hooks::default())
        .await;
    onboard(&cp, tenants).await;
    cp.stop().await;

    println!("fleet migration benchmark: {tenants} tenant databases on 2 local servers");
    // Baseline: the same DDL, straight to each database, no locks, no records.
    let catalog = env.admin_client(0, &env.catalog_database).await;
    let placed: Vec<(usize, String)> = catalog
        .query(
            "SELECT placement_server, database_name FROM tenants ORDER BY tenant_id",
            &[],
        )
        .await
        .expect("tenants")
        .iter()
        .map(|row| (usize::from(row.get::<_, String>(0) == "pg1"), row.get(1)))
        .collect();
    let started = Instant::now();
    let env_ref = &env;
    stream::iter(placed)
        .map(|(server, database)| async move {
            let client = env_ref.admin_client(server, &database).await;
            client
                .batch_execute(
                    "BEGIN; CREATE TABLE baseline_probe (id int, score int);
                     CREATE INDEX baseline_probe_idx ON baseline_probe (score); COMMIT;",
                )
                .await
                .expect("baseline ddl");
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let baseline = started.elapsed();
    println!(
        "{:<34} wall {:>7.2} s  {:>8.0} tenants/min",
        "baseline: direct DDL, concurrency 8",
        baseline.as_secs_f64(),
        tenants as f64 / baseline.as_secs_f64() * 60.0
    );

    for (round, concurrency) in [1u32, 8, 32].into_iter().enumerate() {
        let version = round + 2;
        migrations.write(
            &format!("V{version:04}__column_and_index_{version}.sql"),
            &format!(
                "ALTER TABLE silo_tenant_info ADD COLUMN extra_{version} integer;
                 CREATE INDEX silo_tenant_info_extra_{version}_idx ON silo_tenant_info (extra_{version});\n"
            ),
        );
        let cp = env
            .control_plane_with(flags("--workers=1"), Hooks::default())
            .await;
        let (wall, counts) = migrate(&cp, concurrency).await;
        assert_eq!(
            counts.done as usize, tenants,
            "every tenant migrated: {counts:?}"
        );
        println!(
            "{:<34} wall {:>7.2} s  {:>8.0} tenants/min  ({:.1}x baseline)",
            format!("silo StartMigration, concurrency {concurrency}"),
            wall.as_secs_f64(),
            tenants as f64 / wall.as_secs_f64() * 60.0,
            wall.as_secs_f64() / baseline.as_secs_f64()
        );
        cp.stop().await;
    }
}
