//! The `rds` provisioner against moto's server, a real AWS-protocol peer on loopback:
//! onboarding through the ControlPlane API to a served tenant, deletion with a final
//! snapshot, and the reconciler.

use std::time::Duration;

use silo_control_plane::{Hooks, provisioner::rds::identifiers::final_snapshot_id};
use silo_proto::controlplane::v1 as pb;
use silo_tests::{
    TestControlPlane, TestEnv,
    moto::Moto,
    rds::{RdsTier, assert_serves, delete_tenant, rds_client},
    token, with_token,
};

const DONE: Duration = Duration::from_secs(60);

async fn onboard(cp: &TestControlPlane, tenant: &str) {
    let operation = cp
        .create_tenant(tenant, &format!("req-{tenant}"))
        .await
        .unwrap();
    let done = cp.wait_done(&operation.operation_id, DONE).await;
    assert_eq!(
        done.status(),
        pb::OperationStatus::Succeeded,
        "{tenant}: {}",
        done.error
    );
}

async fn instance(rds: &aws_sdk_rds::Client, id: &str) -> Option<aws_sdk_rds::types::DbInstance> {
    match rds
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
    {
        Ok(output) => output.db_instances().first().cloned(),
        Err(error) => {
            let code = aws_sdk_rds::error::ProvideErrorMetadata::code(&error).map(str::to_owned);
            assert_eq!(code.as_deref(), Some("DBInstanceNotFound"), "{error:?}");
            None
        }
    }
}

/// The instance's server takes TLS logins only, as a default RDS instance does
/// (`rds.force_ssl = 1`): the tier verifies it (`verify-full`, the `rds` default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_onboards_a_served_tenant_and_deletes_it_with_a_final_snapshot() {
    let env = TestEnv::start_tls(1).await;
    let moto = Moto::start().await;
    let config = env.rds_config(
        &moto.endpoint_url(),
        RdsTier {
            managed_password: true,
        },
        &[],
    );
    let cp = env.control_plane_with(config, Hooks::default()).await;
    onboard(&cp, "acme").await;
    assert_serves(&cp, "acme").await;
    // The router serves it: ResolveTenant's route (rewritten to the harness server) works.
    let router = silo_tests::router::TestRouter::start(&cp, Default::default()).await;
    let answer = router
        .client
        .clone()
        .query(silo_tests::router::call(
            silo_proto::router::v1::QueryRequest {
                statement: silo_tests::router::statement(
                    "SELECT value FROM silo_tenant_info",
                    vec![],
                ),
                max_rows: 0,
            },
            &silo_tests::router::tenant_token("acme"),
            None,
        ))
        .await
        .expect("the router serves the rds tenant")
        .into_inner();
    assert_eq!(answer.rows.len(), 1);
    let tenant = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (tenant.provisioner.as_str(), tenant.placement.as_str()),
        ("rds", "silo-acme")
    );
    let route = cp.resolve("acme").await.unwrap();
    assert_eq!(route.sslmode, "verify-full");

    let rds = rds_client(&moto.endpoint_url()).await;
    let made = instance(&rds, "silo-acme").await.expect("instance in moto");
    let tags: Vec<(&str, &str)> = made
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")))
        .collect();
    assert!(tags.contains(&("silo:tenant-id", "acme")), "{tags:?}");
    assert!(tags.contains(&("silo:request-id", "req-acme")), "{tags:?}");
    assert_eq!(made.engine(), Some("postgres"));
    assert_eq!(made.storage_encrypted(), Some(true));
    assert_eq!(made.deletion_protection(), Some(true));
    assert!(
        made.master_user_secret()
            .and_then(|s| s.secret_arn())
            .is_some(),
        "the master password lives in Secrets Manager"
    );

    let deleted = delete_tenant(&cp, "acme").await;
    assert_eq!(
        deleted.status(),
        pb::OperationStatus::Succeeded,
        "{}",
        deleted.error
    );
    assert!(instance(&rds, "silo-acme").await.is_none(), "instance gone");
    let snapshot = final_snapshot_id("silo-acme", "req-acme");
    let snapshots = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(&snapshot)
        .send()
        .await
        .expect("final snapshot exists");
    assert_eq!(
        snapshots
            .db_snapshots()
            .first()
            .and_then(|s| s.db_instance_identifier()),
        Some("silo-acme")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_reconciler_reports_and_deletes_only_silo_orphans_when_told() {
    let env = TestEnv::start(1).await;
    let moto = Moto::start().await;
    let config = env.rds_config(
        &moto.endpoint_url(),
        RdsTier {
            managed_password: false,
        },
        &[],
    );
    let cp = env.control_plane_with(config, Hooks::default()).await;
    onboard(&cp, "acme").await;
    onboard(&cp, "globex").await;

    let rds = rds_client(&moto.endpoint_url()).await;
    let tag = |k: &str, v: &str| aws_sdk_rds::types::Tag::builder().key(k).value(v).build();
    for (id, tags) in [
        (
            "silo-ghost",
            vec![
                tag("silo:tenant-id", "ghost"),
                tag("silo:request-id", "req-ghost"),
            ],
        ),
        ("payments-db", vec![tag("team", "payments")]),
    ] {
        rds.create_db_instance()
            .db_instance_identifier(id)
            .engine("postgres")
            .db_instance_class("db.t4g.micro")
            .allocated_storage(20)
            .master_username("postgres")
            .master_user_password("not-a-real-password")
            .set_tags(Some(tags))
            .send()
            .await
            .unwrap();
    }
    // globex's instance disappears behind silo's back.
    rds.modify_db_instance()
        .db_instance_identifier("silo-globex")
        .deletion_protection(false)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
    rds.delete_db_instance()
        .db_instance_identifier("silo-globex")
        .skip_final_snapshot(true)
        .send()
        .await
        .unwrap();

    let reconcile = |delete_orphans: bool| {
        let mut client = cp.client();
        async move {
            client
                .reconcile_rds_instances(with_token(
                    pb::ReconcileRdsInstancesRequest { delete_orphans },
                    &token("admin"),
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let report = reconcile(false).await;
    assert_eq!(
        (
            report.instances_seen,
            report.foreign_instances,
            report.matched
        ),
        (3, 1, 1)
    );
    let orphans: Vec<_> = report
        .orphans
        .iter()
        .map(|o| (o.instance_id.as_str(), o.tenant_id.as_str()))
        .collect();
    assert_eq!(orphans, [("silo-ghost", "ghost")]);
    assert!(
        report.orphans[0].action.is_empty(),
        "nothing deleted unless told"
    );
    let missing: Vec<_> = report
        .missing
        .iter()
        .map(|m| (m.tenant_id.as_str(), m.instance_id.as_str()))
        .collect();
    assert_eq!(missing, [("globex", "silo-globex")]);
    assert!(instance(&rds, "silo-ghost").await.is_some());

    // A viewer may look, not delete.
    let refused = cp
        .client()
        .reconcile_rds_instances(with_token(
            pb::ReconcileRdsInstancesRequest {
                delete_orphans: true,
            },
            &token("viewer"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let report = reconcile(true).await;
    assert_eq!(report.orphans.len(), 1);
    assert!(!report.orphans[0].action.is_empty());
    assert!(
        instance(&rds, "silo-ghost").await.is_none(),
        "the orphan is deleted"
    );
    rds.describe_db_snapshots()
        .db_snapshot_identifier(final_snapshot_id("silo-ghost", "req-ghost"))
        .send()
        .await
        .expect("the orphan's final snapshot exists");
    assert!(
        instance(&rds, "payments-db").await.is_some(),
        "foreign instance untouched"
    );
    assert!(
        instance(&rds, "silo-acme").await.is_some(),
        "live tenant untouched"
    );
    assert_serves(&cp, "acme").await;
}
