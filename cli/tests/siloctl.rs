//! siloctl against a real control plane (real PostgreSQL, gRPC over loopback).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Output;

use silo_control_plane::Hooks;
use silo_tests::{TestControlPlane, TestEnv, token};

async fn siloctl(cp: &TestControlPlane, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_siloctl"))
        .args(args)
        .env("SILO_CONTROL_PLANE", format!("http://{}", cp.address()))
        .env("SILO_TOKEN", token("admin"))
        .env_remove("SILO_OUTPUT")
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "siloctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(output)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siloctl_manages_a_tenant_from_creation_to_deletion() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;

    let created = siloctl(
        &cp,
        &[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme Corp",
            "--request-id",
            "r1",
        ],
    )
    .await;
    let text = stdout(&created);
    assert!(
        text.contains("MIGRATING") && text.contains("Succeeded"),
        "{text}"
    );

    let listed = json(&siloctl(&cp, &["tenants", "list", "-o", "json"]).await);
    assert_eq!(listed[0]["tenant_id"], "acme");
    assert_eq!(listed[0]["state"], "Active");
    assert_eq!(listed[0]["display_name"], "Acme Corp");
    let table = stdout(&siloctl(&cp, &["tenants", "list"]).await);
    assert!(
        table.contains("acme") && table.contains("Active") && table.contains("TENANT"),
        "{table}"
    );

    let suspended = json(&siloctl(&cp, &["tenants", "suspend", "acme", "-o", "json"]).await);
    assert_eq!(suspended["state"], "Suspended");
    let resumed = json(&siloctl(&cp, &["tenants", "resume", "acme", "-o", "json"]).await);
    assert_eq!(resumed["state"], "Active");
    let rotated = siloctl(&cp, &["tenants", "rotate-credentials", "acme"]).await;
    stdout(&rotated);

    let dry = json(&siloctl(&cp, &["migrate", "--dry-run", "-o", "json"]).await);
    assert_eq!(dry["operation"]["migration"]["dry_run"], true);

    let missing = siloctl(&cp, &["tenants", "get", "nobody"]).await;
    assert!(!missing.status.success());
    let error = String::from_utf8_lossy(&missing.stderr);
    assert!(
        error.contains("NotFound"),
        "gRPC code in the error: {error}"
    );
    let invalid = siloctl(&cp, &["tenants", "create", "Not_Valid"]).await;
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("InvalidArgument"));

    let deleted = json(&siloctl(&cp, &["tenants", "delete", "acme", "-o", "json"]).await);
    assert_eq!(deleted["status"], "Succeeded");
    let gone = json(&siloctl(&cp, &["tenants", "get", "acme", "-o", "json"]).await);
    assert_eq!(gone["state"], "Deleted");
}

#[tokio::test]
async fn siloctl_mints_tokens_the_services_accept() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_siloctl"))
        .args([
            "token",
            "--hmac-secret",
            "0123456789abcdef0123456789abcdef",
            "--tenant",
            "acme",
        ])
        .output()
        .await
        .unwrap();
    let token = stdout(&output);
    let verifier = silo_auth::JwtVerifier::new(silo_auth::VerifierConfig {
        algorithms: vec![silo_auth::Algorithm::HS256],
        keys: silo_auth::KeySource::HmacSecret(
            "0123456789abcdef0123456789abcdef".to_owned().into(),
        ),
        issuer: Some("silo-dev".into()),
        audience: Some("silo".into()),
        leeway: std::time::Duration::from_secs(5),
    })
    .unwrap();
    let claims: serde_json::Value = verifier.verify(token.trim()).unwrap();
    assert_eq!(claims["tenant_id"], "acme");
}
