use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use silo_control_plane::{HookAction, Hooks, tenant::TenantState};
use silo_proto::controlplane::v1 as pb;
use silo_tests::{TestEnv, eventually};

/// Halts the worker the first time a tenant reaches `state`, as if the process died there.
fn crash_at(state: TenantState) -> (Hooks, Arc<AtomicBool>) {
    let crashed = Arc::new(AtomicBool::new(false));
    let flag = crashed.clone();
    let hooks = Hooks {
        after_transition: Some(Arc::new(move |_, reached| {
            if reached == state && !flag.swap(true, Ordering::SeqCst) {
                HookAction::Halt
            } else {
                HookAction::Continue
            }
        })),
    };
    (hooks, crashed)
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    let mut total = 0;
    for index in 0..env.servers.len() {
        let admin = env.admin_client(index, "postgres").await;
        let n: i64 = admin.query_one(sql, &[]).await.unwrap().get(0);
        total += n;
    }
    total
}

async fn crash_and_resume(state: TenantState, tenant: &str) {
    let env = TestEnv::start(2).await;
    let (hooks, crashed) = crash_at(state);
    let first = env
        .control_plane_with(env.config(&["--workers=1"]), hooks)
        .await;
    let operation = first.create_tenant(tenant, "req-crash").await.unwrap();
    eventually(Duration::from_secs(30), "the worker to crash", || async {
        crashed.load(Ordering::SeqCst).then_some(())
    })
    .await;
    first.abort();

    let catalog = env.admin_client(0, &env.catalog_database).await;
    let stuck: String = catalog
        .query_one("SELECT state FROM tenants WHERE tenant_id = $1", &[&tenant])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stuck,
        state.as_str(),
        "the crash left the tenant where it stopped"
    );

    let second = env.control_plane(Hooks::default()).await;
    second.wait_succeeded(&operation.operation_id).await;
    assert_eq!(
        second.get_tenant(tenant).await.unwrap().state(),
        pb::TenantState::Active
    );
    let record = second.get_tenant(tenant).await.unwrap();
    assert_eq!(record.database, record.role);
    assert!(
        record.role.starts_with("s_"),
        "an opaque name: {}",
        record.role
    );
    let name = record.role;
    assert_eq!(
        count(
            &env,
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{name}%'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &env,
            &format!("SELECT count(*) FROM pg_roles WHERE rolname LIKE '{name}%'")
        )
        .await,
        1
    );
    let route = second.resolve(tenant).await.unwrap();
    assert!(!route.password.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_resumes_after_a_crash_in_provisioning() {
    crash_and_resume(TenantState::Provisioning, "crashy-one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_resumes_after_a_crash_before_migrating() {
    crash_and_resume(TenantState::Migrating, "crashy-two").await;
}
