use std::time::Duration;

use futures::StreamExt;
use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_tests::{TestControlPlane, TestEnv, token, with_token};

async fn watch(cp: &TestControlPlane, from: u64) -> tonic::Streaming<pb::TenantEvent> {
    cp.client()
        .watch_tenants(with_token(
            pb::WatchTenantsRequest {
                from_sequence: from,
                from_head: false,
            },
            &token("router"),
        ))
        .await
        .expect("watch opens")
        .into_inner()
}

/// Reads events until one for `tenant` of `kind` arrives; returns all read.
async fn read_until(
    stream: &mut tonic::Streaming<pb::TenantEvent>,
    tenant: &str,
    kind: pb::TenantEventKind,
) -> Vec<pb::TenantEvent> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event ok");
        let stop = event.tenant_id == tenant && event.kind() == kind;
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

fn kinds(events: &[pb::TenantEvent]) -> Vec<pb::TenantEventKind> {
    events.iter().map(pb::TenantEvent::kind).collect()
}

async fn admin_call<T>(request: T) -> tonic::Request<T> {
    with_token(request, &token("admin"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_delete_show_in_the_catalog_and_as_ordered_events() {
    use pb::TenantEventKind as K;
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let mut client = cp.client();

    let mut watcher = watch(&cp, 0).await;
    let created = cp.create_tenant("umbrella", "req-1").await.unwrap();
    cp.wait_done(&created.operation_id, Duration::from_secs(60))
        .await;
    let onboarding = read_until(&mut watcher, "umbrella", K::Activated).await;
    assert_eq!(kinds(&onboarding).first(), Some(&K::Created));

    let suspended = client
        .suspend_tenant(
            admin_call(pb::SuspendTenantRequest {
                tenant_id: "umbrella".into(),
                reason: "unpaid".into(),
            })
            .await,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.state(), pb::TenantState::Suspended);
    assert_eq!(
        cp.get_tenant("umbrella").await.unwrap().state(),
        pb::TenantState::Suspended
    );
    let route = cp.resolve("umbrella").await.unwrap();
    assert_eq!(route.state(), pb::TenantState::Suspended);
    assert!(
        route.password.is_empty(),
        "no credentials for a tenant routers must not serve"
    );

    let got = read_until(&mut watcher, "umbrella", K::Suspended).await;
    let last_seen = got.last().unwrap().sequence;
    drop(watcher); // the router disconnects

    let resumed = client
        .resume_tenant(
            admin_call(pb::ResumeTenantRequest {
                tenant_id: "umbrella".into(),
            })
            .await,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state(), pb::TenantState::Active);
    let deletion = client
        .delete_tenant(
            admin_call(pb::DeleteTenantRequest {
                tenant_id: "umbrella".into(),
                keep_database: false,
                request_id: "del-1".into(),
            })
            .await,
        )
        .await
        .unwrap()
        .into_inner();
    cp.wait_succeeded(&deletion.operation_id).await;
    assert_eq!(
        cp.get_tenant("umbrella").await.unwrap().state(),
        pb::TenantState::Deleted
    );
    assert_eq!(
        cp.resolve("umbrella").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // A retry of the finished deletion gets the same operation; any other finds it gone.
    let delete_again = |request_id: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .delete_tenant(
                    admin_call(pb::DeleteTenantRequest {
                        tenant_id: "umbrella".into(),
                        keep_database: false,
                        request_id: request_id.into(),
                    })
                    .await,
                )
                .await
        }
    };
    let retried = delete_again("del-1")
        .await
        .expect("the same deletion")
        .into_inner();
    assert_eq!(retried.operation_id, deletion.operation_id);
    assert_eq!(retried.status(), pb::OperationStatus::Succeeded);
    assert_eq!(
        delete_again("del-2").await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // The router reconnects from the last sequence it saw and misses nothing.
    let mut resumed_watch = watch(&cp, last_seen).await;
    let rest = read_until(&mut resumed_watch, "umbrella", K::Deleted).await;
    assert_eq!(kinds(&rest), [K::Resumed, K::Deleting, K::Deleted]);
    assert!(rest.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(rest[0].sequence, last_seen + 1);

    // A full replay has every event once, in order.
    let mut replay = watch(&cp, 0).await;
    let all = read_until(&mut replay, "umbrella", K::Deleted).await;
    assert!(
        all.len() > rest.len(),
        "the replay holds the history: {all:?}"
    );
    assert!(all.windows(2).all(|w| w[1].sequence == w[0].sequence + 1));

    let name = cp.get_tenant("umbrella").await.unwrap().role;
    let admin = env.admin_client(0, "postgres").await;
    let leftovers: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE $1 || '%')
                  + (SELECT count(*) FROM pg_roles WHERE rolname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "database and role are dropped");

    // Suspending a deleted tenant is NOT_FOUND.
    let gone = client
        .suspend_tenant(
            admin_call(pb::SuspendTenantRequest {
                tenant_id: "umbrella".into(),
                reason: String::new(),
            })
            .await,
        )
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_can_keep_the_database_renamed() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let created = cp.create_tenant("wayne", "req-1").await.unwrap();
    cp.wait_done(&created.operation_id, Duration::from_secs(60))
        .await;
    let route = cp.resolve("wayne").await.unwrap();
    {
        let admin = env.admin_client(0, &route.database).await;
        admin
            .batch_execute(&format!(
                "SET ROLE {}; CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (1)",
                route.user
            ))
            .await
            .unwrap();
    }
    let deletion = cp
        .client()
        .delete_tenant(with_token(
            pb::DeleteTenantRequest {
                tenant_id: "wayne".into(),
                keep_database: true,
                request_id: String::new(),
            },
            &token("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    cp.wait_succeeded(&deletion.operation_id).await;

    let admin = env.admin_client(0, "postgres").await;
    let kept: Vec<String> = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 || '\\_deleted\\_%'",
            &[&route.database],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(kept.len(), 1, "the database is kept under a new name");
    let role: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&route.user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, 0, "the role is dropped");
    let inside = env.admin_client(0, &kept[0]).await;
    let rows: i64 = inside
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the data is kept");
}
