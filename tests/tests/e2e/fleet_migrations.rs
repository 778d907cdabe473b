//! Schema migrations across every silo (StartMigration / ResumeMigration).

use std::time::Duration;

use futures::StreamExt;
use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_tests::{TenantMigrations, TestControlPlane, TestEnv, eventually, token, with_token};

/// V2: a table, a column and an index, plus a log row that shows how often it ran.
const V2: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL);
ALTER TABLE silo_tenant_info ADD COLUMN note text;
CREATE INDEX orders_total_idx ON orders (total);
CREATE TABLE IF NOT EXISTS migration_log (version int, at timestamptz DEFAULT now());
INSERT INTO migration_log (version) VALUES (2);
";

async fn onboard_many(cp: &TestControlPlane, prefix: &str, count: usize) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cp.onboard(&refs).await;
    names
}

async fn run_of(cp: &TestControlPlane, operation_id: &str) -> pb::MigrationRun {
    cp.client()
        .get_migration(with_token(
            pb::GetMigrationRequest {
                operation_id: operation_id.into(),
            },
            &token("admin"),
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Follows WatchMigration to the end and returns the last update.
async fn watch_to_end(cp: &TestControlPlane, operation_id: &str) -> pb::MigrationRun {
    let mut stream = cp
        .client()
        .watch_migration(with_token(
            pb::GetMigrationRequest {
                operation_id: operation_id.into(),
            },
            &token("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(update) = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("progress in time")
    {
        last = Some(update.unwrap());
    }
    let last = last.expect("at least one update");
    assert!(
        last.operation.as_ref().unwrap().done,
        "the stream ends when the run is done"
    );
    last
}

/// (max applied version, rows in migration_log) of a tenant's silo, read as the superuser.
async fn silo_state(env: &TestEnv, cp: &TestControlPlane, tenant: &str) -> (i64, i64) {
    let record = cp.get_tenant(tenant).await.unwrap();
    let server = usize::from(record.placement == "pg1");
    let client = env.admin_client(server, &record.database).await;
    let version: i64 = client
        .query_one("SELECT max(version) FROM silo_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    let has_log: bool = client
        .query_one("SELECT to_regclass('migration_log') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    let logged: i64 = if has_log {
        client
            .query_one("SELECT count(*) FROM migration_log", &[])
            .await
            .unwrap()
            .get(0)
    } else {
        0
    };
    (version, logged)
}

fn request(concurrency: u32, policy: pb::FailurePolicy) -> pb::StartMigrationRequest {
    pb::StartMigrationRequest {
        concurrency,
        failure_policy: policy.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_tenants_on_two_servers_reach_the_new_version_and_the_catalog_agrees() {
    let env = TestEnv::start(2).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let tenants = onboard_many(&first, "fleet", 30).await;
    first.stop().await;

    migrations.write("V0002__orders.sql", V2);
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;

    let mut dry = request(8, pb::FailurePolicy::Continue);
    dry.dry_run = true;
    let planned = cp.start_migration(dry).await.unwrap();
    assert!(planned.done, "a dry run is finished at once");
    let plan = run_of(&cp, &planned.operation_id).await;
    assert_eq!(plan.tenants.len(), 30);
    assert!(
        plan.tenants
            .iter()
            .all(|t| t.state() == pb::TenantMigrationState::Planned && t.migrations == [2])
    );
    assert_eq!(
        silo_state(&env, &cp, &tenants[0]).await,
        (1, 0),
        "a dry run changes nothing"
    );

    let started = cp
        .start_migration(request(8, pb::FailurePolicy::Continue))
        .await
        .unwrap();
    assert_eq!(started.migration.as_ref().unwrap().total, 30);
    let finished = watch_to_end(&cp, &started.operation_id).await;
    let counts = finished.counts.unwrap();
    assert_eq!(
        (
            counts.done,
            counts.failed,
            counts.pending,
            counts.target_version
        ),
        (30, 0, 0, 2)
    );
    assert_eq!(
        finished.operation.unwrap().status(),
        pb::OperationStatus::Succeeded
    );
    for tenant in &tenants {
        assert_eq!(
            cp.get_tenant(tenant).await.unwrap().schema_version,
            2,
            "catalog mirror of {tenant}"
        );
        assert_eq!(
            silo_state(&env, &cp, tenant).await,
            (2, 1),
            "silo of {tenant}"
        );
    }
    // A tenant created now is created at the latest version and needs no migration.
    let late = onboard_many(&cp, "late", 1).await;
    assert_eq!(silo_state(&env, &cp, &late[0]).await, (2, 1));
    let again = cp
        .start_migration(request(8, pb::FailurePolicy::Continue))
        .await
        .unwrap();
    let counts = again.migration.unwrap();
    assert_eq!(
        (counts.total, counts.skipped),
        (31, 31),
        "nobody is below the target any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_silo_is_reported_keeps_serving_and_is_resumed_after_the_fix() {
    let env = TestEnv::start(2).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let tenants = onboard_many(&first, "fix", 30).await;
    first.stop().await;
    let broken = tenants[7].clone();
    let broken_record = first_record(&env, &broken).await;
    {
        let admin = env.admin_client(broken_record.0, &broken_record.1).await;
        admin
            .batch_execute("CREATE TABLE orders (legacy text)")
            .await
            .unwrap();
    }

    migrations.write("V0002__orders.sql", V2);
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let started = cp
        .start_migration(request(8, pb::FailurePolicy::Continue))
        .await
        .unwrap();
    let run = watch_to_end(&cp, &started.operation_id).await;
    let counts = run.counts.unwrap();
    assert_eq!((counts.done, counts.failed), (29, 1));
    let operation = run.operation.unwrap();
    assert_eq!(operation.status(), pb::OperationStatus::Failed);
    assert!(
        operation.error.contains("1 tenant(s) failed"),
        "{}",
        operation.error
    );
    let failed = run.tenants.iter().find(|t| t.tenant_id == broken).unwrap();
    assert_eq!(failed.state(), pb::TenantMigrationState::Failed);
    assert!(
        failed.detail.contains("already exists"),
        "the silo's error is recorded: {}",
        failed.detail
    );

    // The failed tenant kept its old version and still answers.
    assert_eq!(cp.get_tenant(&broken).await.unwrap().schema_version, 1);
    assert_eq!(
        cp.get_tenant(&broken).await.unwrap().state(),
        pb::TenantState::Active
    );
    let route = cp.resolve(&broken).await.unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host(&route.host)
        .port(u16::try_from(route.port).unwrap())
        .user(&route.user)
        .password(&route.password)
        .dbname(&route.database);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let version: i64 = client
        .query_one("SELECT max(version) FROM silo_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);

    // Fix the silo and resume: only the failed tenant runs.
    {
        let admin = env.admin_client(broken_record.0, &broken_record.1).await;
        admin.batch_execute("DROP TABLE orders").await.unwrap();
    }
    let resumed = cp
        .client()
        .resume_migration(with_token(
            pb::ResumeMigrationRequest {
                operation_id: started.operation_id.clone(),
            },
            &token("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.operation_id, started.operation_id);
    let run = watch_to_end(&cp, &started.operation_id).await;
    assert_eq!(run.counts.unwrap().done, 30);
    assert_eq!(
        run.operation.unwrap().status(),
        pb::OperationStatus::Succeeded
    );
    let attempts = run_attempts(&env, &started.operation_id).await;
    for tenant in &tenants {
        let expected = if *tenant == broken { 2 } else { 1 };
        assert_eq!(
            attempts[tenant.as_str()],
            expected,
            "{tenant} ran {} time(s)",
            attempts[tenant.as_str()]
        );
        assert_eq!(silo_state(&env, &cp, tenant).await, (2, 1), "{tenant}");
    }
}

/// (server index, database) of a tenant, read from the catalog.
async fn first_record(env: &TestEnv, tenant: &str) -> (usize, String) {
    let catalog = env.admin_client(0, &env.catalog_database).await;
    let row = catalog
        .query_one(
            "SELECT placement_server, database_name FROM tenants WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap();
    let server: String = row.get(0);
    (usize::from(server == "pg1"), row.get(1))
}

async fn run_attempts(
    env: &TestEnv,
    operation_id: &str,
) -> std::collections::BTreeMap<String, i32> {
    let catalog = env.admin_client(0, &env.catalog_database).await;
    let id = uuid::Uuid::parse_str(operation_id).unwrap();
    catalog
        .query(
            "SELECT tenant_id, attempts FROM migration_tenants WHERE operation_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_a_crash_completes_after_restart_migrating_each_silo_once() {
    let env = TestEnv::start(2).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let tenants = onboard_many(&first, "crash", 12).await;
    first.stop().await;

    migrations.write("V0002__orders.sql", &format!("{V2}SELECT pg_sleep(0.3);\n"));
    let doomed = env
        .control_plane_with(
            env.config(&[&migrations.flag(), "--workers=1"]),
            Hooks::default(),
        )
        .await;
    let started = doomed
        .start_migration(request(2, pb::FailurePolicy::Stop))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "a few tenants to be migrated",
        || async {
            let counts = run_of(&doomed, &started.operation_id).await.counts?;
            (counts.done >= 3).then_some(())
        },
    )
    .await;
    doomed.abort();

    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let before = run_of(&cp, &started.operation_id).await.counts.unwrap();
    assert!(before.done < 12, "the crash happened mid-run");
    let run = watch_to_end(&cp, &started.operation_id).await;
    assert_eq!(run.counts.unwrap().done, 12);
    for tenant in &tenants {
        assert_eq!(
            silo_state(&env, &cp, tenant).await,
            (2, 1),
            "{tenant} migrated exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_wave_keeps_the_rest_from_starting() {
    let env = TestEnv::start(1).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let tenants = onboard_many(&first, "wave", 6).await;
    first.stop().await;
    let canary = tenants[0].clone();
    env.admin_client(0, &first_record(&env, &canary).await.1)
        .await
        .batch_execute("CREATE TABLE orders (legacy text)")
        .await
        .unwrap();

    migrations.write("V0002__orders.sql", V2);
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let mut with_canary = request(4, pb::FailurePolicy::Continue);
    with_canary.waves = vec![
        pb::MigrationWave {
            name: "canary".into(),
            tenant_ids: vec![canary.clone()],
            ..Default::default()
        },
        pb::MigrationWave {
            name: "everyone".into(),
            ..Default::default()
        },
    ];
    let started = cp.start_migration(with_canary).await.unwrap();
    let run = watch_to_end(&cp, &started.operation_id).await;
    let operation = run.operation.unwrap();
    assert_eq!(operation.status(), pb::OperationStatus::Failed);
    assert!(
        operation.error.contains("wave canary")
            && operation.error.contains("later waves were not started"),
        "{}",
        operation.error
    );
    let mut listed: Vec<&str> = run.tenants.iter().map(|t| t.tenant_id.as_str()).collect();
    listed.sort_unstable();
    let mut onboarded: Vec<&str> = tenants.iter().map(String::as_str).collect();
    onboarded.sort_unstable();
    assert_eq!(
        listed, onboarded,
        "the run lists every tenant, canary included"
    );
    for tenant in &run.tenants {
        if tenant.tenant_id == canary {
            assert_eq!(tenant.state(), pb::TenantMigrationState::Failed);
        } else {
            assert_eq!(
                (tenant.state(), tenant.wave_name.as_str()),
                (pb::TenantMigrationState::Pending, "everyone")
            );
            assert_eq!(
                silo_state(&env, &cp, &tenant.tenant_id).await.0,
                1,
                "untouched"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_applied_migration_is_refused() {
    let env = TestEnv::start(1).await;
    let migrations = TenantMigrations::from_repository();
    migrations.write("V0002__orders.sql", V2);
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let tenants = onboard_many(&first, "edit", 2).await;
    first.stop().await;

    migrations.write("V0002__orders.sql", &V2.replace("numeric", "bigint"));
    migrations.write(
        "V0003__more.sql",
        "ALTER TABLE orders ADD COLUMN placed_at timestamptz;\n",
    );
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let started = cp
        .start_migration(request(2, pb::FailurePolicy::Continue))
        .await
        .unwrap();
    let run = watch_to_end(&cp, &started.operation_id).await;
    assert_eq!(run.counts.unwrap().failed, 2);
    for tenant in &run.tenants {
        assert!(
            tenant.detail.contains("was changed after it was applied"),
            "clear checksum error: {}",
            tenant.detail
        );
    }
    for tenant in &tenants {
        assert_eq!(
            silo_state(&env, &cp, tenant).await.0,
            2,
            "nothing of V3 applied"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_migration_waits_for_every_tenant_and_bad_requests_are_refused() {
    let env = TestEnv::start(1).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    onboard_many(&first, "contract", 2).await;
    first.stop().await;

    migrations.write(
        "V0002__expand.sql",
        "ALTER TABLE silo_tenant_info ADD COLUMN new_value text;\n",
    );
    migrations.write(
        "V0003__contract.sql",
        "-- silo:requires-all-tenants-at 2\nALTER TABLE silo_tenant_info DROP COLUMN value;\n",
    );
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let refused = cp
        .start_migration(request(2, pb::FailurePolicy::Stop))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("needs every tenant at version 2"),
        "{}",
        refused.message()
    );

    let mut expand = request(2, pb::FailurePolicy::Stop);
    expand.target_version = 2;
    let run = cp.start_migration(expand).await.unwrap();
    assert_eq!(
        watch_to_end(&cp, &run.operation_id)
            .await
            .counts
            .unwrap()
            .done,
        2
    );
    let contract = cp
        .start_migration(request(2, pb::FailurePolicy::Stop))
        .await
        .unwrap();
    assert_eq!(
        watch_to_end(&cp, &contract.operation_id)
            .await
            .counts
            .unwrap()
            .done,
        2
    );

    for (bad, code) in [
        (
            pb::StartMigrationRequest {
                target_version: 99,
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            pb::StartMigrationRequest {
                concurrency: 10_000,
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            pb::StartMigrationRequest {
                waves: vec![pb::MigrationWave {
                    tenant_ids: vec!["nobody".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            pb::StartMigrationRequest {
                waves: vec![pb::MigrationWave {
                    percent: 10,
                    tier: "standard".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
    ] {
        assert_eq!(cp.start_migration(bad).await.unwrap_err().code(), code);
    }
    let viewer = cp
        .client()
        .start_migration(with_token(
            pb::StartMigrationRequest::default(),
            &token("viewer"),
        ))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), tonic::Code::PermissionDenied);
}

/// Callers keep querying a table at the full width of the tenant's pool while a fleet
/// migration (what `siloctl migrate` starts) alters that table: every cached statement of
/// every pooled connection goes stale at once, and no call may fail for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_at_full_pool_width_see_no_failure_while_a_migration_alters_their_table() {
    use silo_proto::router::v1 as rpb;
    use silo_router::pool::PoolConfig;
    use silo_tests::router::{TestRouter, call, statement, tenant_token};

    let env = TestEnv::start(1).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let tenants = onboard_many(&first, "busy", 2).await;
    first.stop().await;
    migrations.write("V0002__orders.sql", V2);
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;

    // The standard tier's pool has 10 connections; 10 callers per tenant keep them all
    // busy, paced under the tier's rate limit.
    let stop = tokio_util::sync::CancellationToken::new();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut callers = Vec::new();
    for tenant in &tenants {
        for _ in 0..10 {
            let mut client = router.client.clone();
            let token = tenant_token(tenant);
            let stop = stop.clone();
            let served = served.clone();
            callers.push(tokio::spawn(async move {
                let (mut calls, mut failures) = (0u32, Vec::new());
                while !stop.is_cancelled() {
                    let request = rpb::QueryRequest {
                        statement: statement("SELECT * FROM silo_tenant_info", vec![]),
                        max_rows: 0,
                    };
                    calls += 1;
                    match client.query(call(request, &token, None)).await {
                        Ok(_) => drop(served.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                        Err(status) => failures.push(status),
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                (calls, failures)
            }));
        }
    }
    let load = Duration::from_secs(10);
    eventually(load, "the callers to be under way", || async {
        (served.load(std::sync::atomic::Ordering::Relaxed) >= 40).then_some(())
    })
    .await;
    let started = cp
        .start_migration(request(2, pb::FailurePolicy::Continue))
        .await
        .expect("migration starts");
    let finished = watch_to_end(&cp, &started.operation_id).await;
    assert_eq!(
        finished.counts.expect("counts").done,
        2,
        "both silos migrated"
    );
    // Calls go on for a while after the migration: the condition under test, not a wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (mut calls, mut failures) = (0, Vec::new());
    for caller in callers {
        let (made, failed) = caller.await.expect("caller");
        calls += made;
        failures.extend(failed);
    }
    assert!(calls > 200, "the callers kept calling: {calls}");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    // Every caller now sees the new column.
    for tenant in &tenants {
        let request = rpb::QueryRequest {
            statement: statement("SELECT * FROM silo_tenant_info", vec![]),
            max_rows: 0,
        };
        let rows = router
            .client
            .clone()
            .query(call(request, &tenant_token(tenant), None))
            .await
            .expect("query")
            .into_inner();
        assert_eq!(
            rows.columns.len(),
            3,
            "{tenant}: key, value and the new note"
        );
    }
}
