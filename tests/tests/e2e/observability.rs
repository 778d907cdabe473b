//! Health, reflection and metrics of the control plane.

use std::time::Duration;

use silo_control_plane::Hooks;
use silo_tests::{TestEnv, eventually, health_status, http_get};
use tokio_stream::StreamExt as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_catalog_and_metrics_and_reflection_are_served() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", cp.address()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |service: &'static str| health_status(cp.address(), service);
    eventually(Duration::from_secs(10), "SERVING", || async {
        (status("silo.controlplane.v1.ControlPlane").await == Some(ServingStatus::Serving))
            .then_some(())
    })
    .await;

    // The catalog goes away: NOT_SERVING; it comes back: SERVING.
    env.servers[0].stop().await.unwrap();
    eventually(Duration::from_secs(15), "NOT_SERVING", || async {
        (status("").await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    env.servers[0].restart().await.unwrap();
    eventually(Duration::from_secs(15), "SERVING again", || async {
        (status("").await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    let _ = health.check(HealthCheckRequest::default()).await;

    // Calls show up in the metrics, by method and code.
    let _ = cp.get_tenant("nobody").await;
    let _ = cp.create_tenant("metered", "r").await.unwrap();
    let scraped = http_get(cp.metrics_address(), "/metrics").await;
    assert!(
        scraped.contains(r#"silo_controlplane_grpc_calls_total{method="/silo.controlplane.v1.ControlPlane/GetTenant",code="NotFound"} 1"#),
        "{scraped}"
    );
    assert!(scraped.contains("silo_controlplane_grpc_call_duration_seconds_bucket"));
    // The control plane labels no tenants: no series carries an always-empty tenant_id.
    assert!(!scraped.contains(r#"tenant_id="""#), "{scraped}");
    assert!(scraped.contains("silo_controlplane_catalog_calls_total"));
    let done = cp
        .wait_done(
            &cp.create_tenant("metered", "r").await.unwrap().operation_id,
            Duration::from_secs(30),
        )
        .await;
    assert!(done.error.is_empty(), "{}", done.error);
    eventually(Duration::from_secs(30), "step durations", || async {
        let scraped = http_get(cp.metrics_address(), "/metrics").await;
        scraped
            .contains(r#"silo_controlplane_step_duration_seconds_count{step="MIGRATING"}"#)
            .then_some(scraped)
    })
    .await;
    // One onboarding so far ("metered"): each state it passed through observed once,
    // however many passes the state took (MIGRATING stores the password first).
    let scraped = http_get(cp.metrics_address(), "/metrics").await;
    for step in ["PROVISIONING", "WAITING_AVAILABLE", "MIGRATING"] {
        let line = format!(r#"silo_controlplane_step_duration_seconds_count{{step="{step}"}} 1"#);
        assert!(scraped.contains(&line), "{step}:\n{scraped}");
    }
    // A deletion: its DELETING step, and one duration per operation, request to end.
    let deleted = silo_tests::rds::delete_tenant(&cp, "metered").await;
    assert!(deleted.error.is_empty(), "{}", deleted.error);
    let scraped = http_get(cp.metrics_address(), "/metrics").await;
    for line in [
        r#"silo_controlplane_step_duration_seconds_count{step="DELETING"} 1"#,
        r#"silo_controlplane_operation_duration_seconds_count{kind="create_tenant",result="succeeded"} 1"#,
        r#"silo_controlplane_operation_duration_seconds_count{kind="delete_tenant",result="succeeded"} 1"#,
    ] {
        assert!(scraped.contains(line), "{line}:\n{scraped}");
    }

    // Reflection lists the services, for grpcurl without .proto files.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"silo.controlplane.v1.ControlPlane"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}
