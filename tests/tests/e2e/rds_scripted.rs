//! The `rds` provisioner against the scripted fake RDS: status sequences and faults that
//! moto cannot produce, each through the real ControlPlane API and the real SDK client.

use std::time::Duration;

use silo_control_plane::{Hooks, tenant::TenantState};
use silo_proto::controlplane::v1 as pb;
use silo_tests::{
    TestControlPlane, TestEnv, eventually,
    fake_rds::{FakeInstance, FakeRds, Fault},
    rds::{RdsTier, assert_serves, delete_tenant},
};

const DONE: Duration = Duration::from_secs(60);
const CREATE: &str = "CreateDBInstance";
const DESCRIBE: &str = "DescribeDBInstances";

struct Setup {
    env: TestEnv,
    fake: FakeRds,
    cp: TestControlPlane,
}

async fn setup(prepare: impl FnOnce(&FakeRds)) -> Setup {
    setup_with(&[], prepare).await
}

async fn setup_with(flags: &[&str], prepare: impl FnOnce(&FakeRds)) -> Setup {
    let env = TestEnv::start(1).await;
    let fake = FakeRds::start().await;
    prepare(&fake);
    let config = env.rds_config(
        &fake.endpoint_url(),
        RdsTier {
            managed_password: false,
        },
        flags,
    );
    let cp = env.control_plane_with(config, Hooks::default()).await;
    Setup { env, fake, cp }
}

async fn onboard(cp: &TestControlPlane, tenant: &str) -> pb::Operation {
    let operation = cp
        .create_tenant(tenant, &format!("req-{tenant}"))
        .await
        .unwrap();
    cp.wait_done(&operation.operation_id, DONE).await
}

fn assert_succeeded(done: &pb::Operation) {
    assert_eq!(
        done.status(),
        pb::OperationStatus::Succeeded,
        "{}",
        done.error
    );
}

async fn assert_failed_with(
    cp: &TestControlPlane,
    tenant: &str,
    done: &pb::Operation,
    words: &str,
) {
    assert_eq!(done.status(), pb::OperationStatus::Failed);
    assert!(done.error.contains(words), "error: {}", done.error);
    let record = cp.get_tenant(tenant).await.unwrap();
    assert_eq!(record.state(), pb::TenantState::Failed);
    assert!(
        record.failure_reason.contains(words),
        "{}",
        record.failure_reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_then_backing_up_then_available_onboards_and_deletes_with_a_final_snapshot() {
    let s = setup(|fake| fake.script_create(&["creating", "creating", "backing-up", "available"]))
        .await;
    let done = onboard(&s.cp, "acme").await;
    assert_succeeded(&done);
    assert!(s.fake.calls(DESCRIBE) >= 4, "polled through every status");
    assert_eq!(s.fake.calls(CREATE), 1);
    assert_serves(&s.cp, "acme").await;
    let instance = s.fake.instance("silo-acme").unwrap();
    assert!(
        instance
            .tags
            .contains(&("silo:tenant-id".into(), "acme".into()))
    );
    assert!(
        instance
            .tags
            .contains(&("silo:request-id".into(), "req-acme".into()))
    );
    assert!(instance.deletion_protection);

    assert_succeeded(&delete_tenant(&s.cp, "acme").await);
    assert!(s.fake.instance("silo-acme").is_none(), "instance gone");
    assert_eq!(
        s.fake.calls("ModifyDBInstance"),
        1,
        "deletion protection turned off"
    );
    assert_eq!(s.fake.snapshots_of("silo-acme").len(), 1);
    drop(s.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_then_failed_fails_the_tenant() {
    let s = setup(|fake| fake.script_create(&["creating", "failed"])).await;
    let done = onboard(&s.cp, "acme").await;
    assert_failed_with(&s.cp, "acme", &done, "instance status is failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_full_fails_the_tenant_instead_of_waiting_forever() {
    let s = setup(|fake| fake.script_create(&["creating", "storage-full"])).await;
    let done = onboard(&s.cp, "acme").await;
    assert_failed_with(&s.cp, "acme", &done, "storage-full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_right_after_create_keeps_waiting() {
    let s = setup(|fake| {
        fake.script_create(&["creating", "available"]);
        fake.hide_new_instances(3);
    })
    .await;
    let done = onboard(&s.cp, "acme").await;
    assert_succeeded(&done);
    assert_eq!(
        s.fake.calls(CREATE),
        1,
        "a NotFound within the grace window is not a lost instance"
    );
    assert_eq!(s.fake.instance_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_until_it_succeeds() {
    let s = setup(|fake| {
        fake.fail_next(CREATE, Fault::throttling());
        fake.fail_next(DESCRIBE, Fault::throttling());
        fake.fail_next(DESCRIBE, Fault::throttling());
    })
    .await;
    let done = onboard(&s.cp, "acme").await;
    assert_succeeded(&done);
    assert_eq!(
        s.fake.calls(CREATE),
        2,
        "the throttled create was tried again"
    );
    assert_eq!(s.fake.instance_count(), 1);
    assert_serves(&s.cp, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_instance_with_our_tags_is_adopted() {
    let s = setup(|fake| {
        fake.insert_instance(
            "silo-acme",
            FakeInstance {
                statuses: ["available".to_owned()].into(),
                tags: vec![("silo:tenant-id".into(), "acme".into())],
                // Not visible to the first describe: the create meets DBInstanceAlreadyExists.
                hidden_describes: 1,
                ..FakeInstance::default()
            },
        );
    })
    .await;
    let done = onboard(&s.cp, "acme").await;
    assert_succeeded(&done);
    assert_eq!(
        s.fake.calls(CREATE),
        1,
        "the create met DBInstanceAlreadyExists"
    );
    assert_eq!(s.fake.instance_count(), 1);
    let placement = s.cp.get_tenant("acme").await.unwrap().placement;
    assert_eq!(placement, "silo-acme");
    assert_serves(&s.cp, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_instance_with_foreign_tags_fails_the_tenant_and_stays_untouched() {
    let foreign = FakeInstance {
        statuses: ["available".to_owned()].into(),
        tags: vec![("silo:tenant-id".into(), "someone-else".into())],
        hidden_describes: 1,
        ..FakeInstance::default()
    };
    let s = setup(|fake| fake.insert_instance("silo-acme", foreign.clone())).await;
    let done = onboard(&s.cp, "acme").await;
    assert_failed_with(&s.cp, "acme", &done, "not this tenant's").await;

    // Deleting the failed tenant does not touch the instance either.
    assert_succeeded(&delete_tenant(&s.cp, "acme").await);
    let after = s.fake.instance("silo-acme").expect("instance still there");
    assert_eq!(after.tags, foreign.tags);
    assert!(!after.modified);
    assert_eq!(
        s.fake.calls("ModifyDBInstance") + s.fake.calls("DeleteDBInstance"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_errors_after_making_the_instance_is_adopted_on_retry() {
    let s = setup(|fake| fake.fail_next(CREATE, Fault::internal_after_effect())).await;
    let done = onboard(&s.cp, "acme").await;
    assert_succeeded(&done);
    assert_eq!(s.fake.calls(CREATE), 1, "no second CreateDBInstance");
    assert_eq!(s.fake.instance_count(), 1);
    assert_serves(&s.cp, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_keeps_polling_the_same_instance() {
    let env = TestEnv::start(1).await;
    let fake = FakeRds::start().await;
    fake.script_create(&["creating"]);
    let config = || {
        env.rds_config(
            &fake.endpoint_url(),
            RdsTier {
                managed_password: false,
            },
            &["--workers=1"],
        )
    };
    let first = env.control_plane_with(config(), Hooks::default()).await;
    let operation = first.create_tenant("acme", "req-acme").await.unwrap();
    eventually(DONE, "the first control plane to poll", || async {
        (fake.calls(DESCRIBE) >= 3).then_some(())
    })
    .await;
    first.abort();

    let catalog = env.admin_client(0, &env.catalog_database).await;
    let state: String = catalog
        .query_one("SELECT state FROM tenants WHERE tenant_id = 'acme'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, TenantState::WaitingAvailable.as_str());

    let polls_before = fake.calls(DESCRIBE);
    let second = env.control_plane_with(config(), Hooks::default()).await;
    eventually(DONE, "the second control plane to poll", || async {
        (fake.calls(DESCRIBE) >= polls_before + 2).then_some(())
    })
    .await;
    fake.set_status("silo-acme", "available");
    let done = second.wait_done(&operation.operation_id, DONE).await;
    assert_succeeded(&done);
    assert_eq!(
        fake.calls(CREATE),
        1,
        "CreateDBInstance was never called again"
    );
    assert_eq!(fake.instance_count(), 1);
    assert_serves(&second, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_kms_faults_fail_at_once_with_the_aws_reason() {
    let s = setup(|fake| {
        fake.fail_next(CREATE, Fault::permanent("InstanceQuotaExceeded"));
        fake.fail_next(CREATE, Fault::permanent("KMSKeyNotAccessibleFault"));
    })
    .await;
    let done = onboard(&s.cp, "acme").await;
    assert_failed_with(&s.cp, "acme", &done, "InstanceQuotaExceeded").await;
    let done = onboard(&s.cp, "globex").await;
    assert_failed_with(&s.cp, "globex", &done, "KMSKeyNotAccessibleFault").await;
    assert_eq!(s.fake.calls(CREATE), 2, "no retry of a permanent fault");
    assert_eq!(s.fake.instance_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_lost_after_the_grace_window_is_created_again() {
    let s = setup_with(&["--rds-not-found-grace-secs=0"], |fake| {
        fake.script_create(&["creating"]);
    })
    .await;
    let operation = s.cp.create_tenant("acme", "req-acme").await.unwrap();
    eventually(DONE, "the instance to be polled", || async {
        (s.fake.calls(DESCRIBE) >= 3).then_some(())
    })
    .await;
    s.fake.remove_instance("silo-acme");
    eventually(DONE, "the instance to be created again", || async {
        (s.fake.calls(CREATE) == 2).then_some(())
    })
    .await;
    s.fake.set_status("silo-acme", "available");
    let done = s.cp.wait_done(&operation.operation_id, DONE).await;
    assert_succeeded(&done);
    assert_eq!(s.fake.calls(CREATE), 2);
    assert_serves(&s.cp, "acme").await;
}

/// Waiting for an instance is not failing: after more polls than `--max-step-attempts`, a
/// DescribeDBInstances throttled past the SDK's own retries is still retried (polls used to
/// count as attempts, so the first transient error after a long creation failed the
/// tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_leaves_the_attempts_to_a_later_transient_error() {
    let s = setup_with(&["--max-step-attempts=3"], |fake| {
        fake.script_create(&["creating"]);
    })
    .await;
    let operation = s.cp.create_tenant("acme", "req-acme").await.unwrap();
    eventually(
        Duration::from_secs(30),
        "six polls of a creating instance",
        || async { (s.fake.calls(DESCRIBE) >= 6).then_some(()) },
    )
    .await;
    // More throttles than the SDK retries (--rds-max-attempts=3): the step sees a
    // transient error.
    for _ in 0..4 {
        s.fake.fail_next(DESCRIBE, Fault::throttling());
    }
    s.fake.set_status("silo-acme", "available");
    let done = s.cp.wait_done(&operation.operation_id, DONE).await;
    assert_succeeded(&done);
    assert_serves(&s.cp, "acme").await;
}
