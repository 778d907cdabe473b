use std::time::Duration;

use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_tests::{FLEET_PASSWORD, LogCapture, TestEnv, token, with_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_key_reaches_logs_or_error_messages() {
    let logs = LogCapture::install();
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let mut client = cp.client();
    let admin = token("admin");

    let operation = cp.create_tenant("stark", "req-1").await.unwrap();
    cp.wait_done(&operation.operation_id, Duration::from_secs(60))
        .await;
    let before = cp.resolve("stark").await.unwrap();
    let rotated = client
        .rotate_credentials(with_token(
            pb::RotateCredentialsRequest {
                tenant_id: "stark".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.state(), pb::TenantState::Active);
    let after = cp.resolve("stark").await.unwrap();
    assert_ne!(before.password, after.password);
    assert!(after.credentials_version > before.credentials_version);
    let login = |password: String| {
        let route = after.clone();
        async move {
            let mut config = tokio_postgres::Config::new();
            config
                .host(&route.host)
                .port(u16::try_from(route.port).unwrap())
                .user(&route.user)
                .password(password)
                .dbname(&route.database);
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map(|(client, connection)| {
                    tokio::spawn(connection);
                    client
                })
        }
    };
    let Err(old) = login(before.password.clone()).await else {
        panic!("the old password still logs in");
    };
    assert_eq!(old.code().map(|c| c.code()), Some("28P01"), "{old}");
    login(after.password.clone())
        .await
        .expect("the new password logs in");

    // Provoke errors and collect what callers are told.
    let mut messages = Vec::new();
    for status in [
        cp.create_tenant("stark", "another").await.unwrap_err(),
        client
            .create_tenant(tonic::Request::new(pb::CreateTenantRequest::default()))
            .await
            .unwrap_err(),
        client
            .rotate_credentials(with_token(
                pb::RotateCredentialsRequest {
                    tenant_id: "nobody".into(),
                },
                &admin,
            ))
            .await
            .unwrap_err(),
    ] {
        messages.push(status.message().to_owned());
    }
    silo_tests::eventually(
        Duration::from_secs(5),
        "the capture to see the control plane's logs",
        || async {
            logs.contents()
                .contains("tenant state changed")
                .then_some(())
        },
    )
    .await;
    let logged = logs.contents();
    for secret in [
        before.password.as_str(),
        after.password.as_str(),
        env.credentials_key.as_str(),
        FLEET_PASSWORD,
    ] {
        assert!(!logged.contains(secret), "a secret was logged");
        assert!(
            messages.iter().all(|m| !m.contains(secret)),
            "a secret was in an error message"
        );
    }
}
