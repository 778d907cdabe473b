//! Guards of the control plane reached through its API: suspend / resume asked of a tenant
//! in the wrong state, and a second migration run while one runs.

use silo_control_plane::Hooks;
use silo_proto::controlplane::v1 as pb;
use silo_tests::{TenantMigrations, TestControlPlane, TestEnv, token, with_token};
use tonic::Code;

async fn suspend(cp: &TestControlPlane, tenant: &str) -> Result<pb::Tenant, tonic::Status> {
    let request = pb::SuspendTenantRequest {
        tenant_id: tenant.into(),
        reason: "guard test".into(),
    };
    cp.client()
        .suspend_tenant(with_token(request, &token("admin")))
        .await
        .map(tonic::Response::into_inner)
}

async fn resume(cp: &TestControlPlane, tenant: &str) -> Result<pb::Tenant, tonic::Status> {
    let request = pb::ResumeTenantRequest {
        tenant_id: tenant.into(),
    };
    cp.client()
        .resume_tenant(with_token(request, &token("admin")))
        .await
        .map(tonic::Response::into_inner)
}

/// Asserts `result` is FAILED_PRECONDITION naming `state`.
fn assert_wrong_state<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    state: &str,
    what: &str,
) {
    let status = result.expect_err(what);
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains(state),
        "{what}: {:?} should name {state}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_from_the_wrong_state_are_refused_and_change_nothing() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["guarded"]).await;

    // Asking for the state a tenant is already in is idempotent (a retried call), not
    // a wrong state.
    let same = resume(&cp, "guarded")
        .await
        .expect("resume an active tenant");
    assert_eq!(same.state(), pb::TenantState::Active);
    suspend(&cp, "guarded").await.expect("suspend");
    let same = suspend(&cp, "guarded").await.expect("suspend again");
    assert_eq!(same.state(), pb::TenantState::Suspended);
    resume(&cp, "guarded").await.expect("resume");

    // A deletion under way (as one that keeps failing leaves it), then a tenant whose
    // onboarding failed: the catalog says so, and neither may be suspended or resumed.
    let catalog = env.admin_client(0, &env.catalog_database).await;
    for (stuck, expected) in [
        ("DELETING", pb::TenantState::Deleting),
        ("FAILED", pb::TenantState::Failed),
    ] {
        catalog
            .execute(
                "UPDATE tenants SET state = $1 WHERE tenant_id = 'guarded'",
                &[&stuck],
            )
            .await
            .expect("catalog");
        assert_wrong_state(
            suspend(&cp, "guarded").await,
            stuck,
            &format!("suspend a {stuck} tenant"),
        );
        assert_wrong_state(
            resume(&cp, "guarded").await,
            stuck,
            &format!("resume a {stuck} tenant"),
        );
        assert_eq!(
            cp.get_tenant("guarded").await.expect("get").state(),
            expected,
            "refused calls change nothing"
        );
    }
}

fn migrate(concurrency: u32) -> pb::StartMigrationRequest {
    pb::StartMigrationRequest {
        concurrency,
        failure_policy: pb::FailurePolicy::Continue.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_migration_run_is_refused_while_one_runs() {
    let env = TestEnv::start(1).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    first.onboard(&["run-a", "run-b"]).await;
    first.stop().await;

    // Slow enough (two tenants one after the other) for the second request to find the
    // first run still going.
    migrations.write("V0002__slow.sql", "SELECT pg_sleep(1.5);\n");
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let running = cp
        .start_migration(migrate(1))
        .await
        .expect("the first run starts");
    assert!(!running.done);

    let refused = cp
        .start_migration(migrate(1))
        .await
        .expect_err("a second run");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&running.operation_id)
            && refused.message().contains("still running"),
        "{:?}",
        refused.message()
    );
    cp.wait_succeeded(&running.operation_id).await;
    let run = cp
        .client()
        .get_migration(with_token(
            pb::GetMigrationRequest {
                operation_id: running.operation_id.clone(),
            },
            &token("admin"),
        ))
        .await
        .expect("get migration")
        .into_inner();
    assert_eq!(run.counts.expect("counts").done, 2, "the first run went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioner_that_is_not_configured_is_a_failed_precondition() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let status = cp
        .client()
        .reconcile_rds_instances(with_token(
            pb::ReconcileRdsInstancesRequest::default(),
            &token("admin"),
        ))
        .await
        .expect_err("no rds provisioner here");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "the rds provisioner is not configured");
}
