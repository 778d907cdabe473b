use silo_auth::{Algorithm, StandardClaims, TokenSigner};
use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_tests::{AUDIENCE, ISSUER, TestEnv, fixture, token, with_token};
use std::time::Duration;
use tonic::Code;

fn create(tenant: &str) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        tenant_id: tenant.into(),
        display_name: "x".into(),
        tier: String::new(),
        request_id: "r".into(),
    }
}

fn foreign_token() -> String {
    let claims = StandardClaims::new("intruder", Duration::from_secs(600))
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .claim("role", "admin");
    TokenSigner::from_pem_file(fixture("other_rsa_private.pem"), Algorithm::RS256)
        .unwrap()
        .sign(&claims)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_codes_and_writes_nothing() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let mut client = cp.client();
    let admin = token("admin");

    for bad in [
        "",
        "A",
        "Acme",
        "1acme",
        "acme_corp",
        "acme corp",
        "a",
        "-x",
        &"a".repeat(64),
        "acme;drop table tenants",
    ] {
        let status = client
            .create_tenant(with_token(create(bad), &admin))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "tenant id {bad:?}");
        let status = client
            .get_tenant(with_token(
                pb::GetTenantRequest {
                    tenant_id: bad.into(),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "get {bad:?}");
    }
    let mut unknown_tier = create("acme");
    unknown_tier.tier = "platinum".into();
    assert_eq!(
        client
            .create_tenant(with_token(unknown_tier, &admin))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut long_name = create("acme");
    long_name.display_name = "n".repeat(201);
    assert_eq!(
        client
            .create_tenant(with_token(long_name, &admin))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Unknown tenant / operation.
    let status = client
        .get_tenant(with_token(
            pb::GetTenantRequest {
                tenant_id: "nobody".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .suspend_tenant(with_token(
            pb::SuspendTenantRequest {
                tenant_id: "nobody".into(),
                reason: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .delete_tenant(with_token(
            pb::DeleteTenantRequest {
                tenant_id: "nobody".into(),
                keep_database: false,
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_operation(with_token(
            pb::GetOperationRequest {
                operation_id: uuid::Uuid::new_v4().to_string(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_operation(with_token(
            pb::GetOperationRequest {
                operation_id: "not-a-uuid".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = cp.resolve("nobody").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .list_tenants(with_token(
            pb::ListTenantsRequest {
                page_token: "%%%".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Missing, malformed, foreign-signed tokens.
    let status = client
        .create_tenant(tonic::Request::new(create("acme")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    for bad_token in ["garbage", "a.b.c", &foreign_token()] {
        let status = client
            .create_tenant(with_token(create("acme"), bad_token))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "token {bad_token:.20}"
        );
    }

    // Valid tokens without the right role.
    for role in ["viewer", "router", "intern"] {
        let status = client
            .create_tenant(with_token(create("acme"), &token(role)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "role {role}");
    }
    let status = client
        .resolve_tenant(with_token(
            pb::ResolveTenantRequest {
                tenant_id: "acme".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "admins do not get tenant credentials"
    );
    let status = client
        .get_tenant(with_token(
            pb::GetTenantRequest {
                tenant_id: "acme".into(),
            },
            &token("router"),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "routers only resolve and watch"
    );
    let listed = client
        .list_tenants(with_token(
            pb::ListTenantsRequest::default(),
            &token("viewer"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tenants.is_empty());

    let catalog = env.admin_client(0, &env.catalog_database).await;
    let written: i64 = catalog
        .query_one(
            "SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM operations)
                  + (SELECT count(*) FROM tenant_events)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "rejected calls write nothing to the catalog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tenants_pages_and_filters() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let mut client = cp.client();
    let admin = token("admin");
    let names = ["t-alpha", "t-bravo", "t-charlie", "t-delta", "t-echo"];
    for name in names {
        let operation = cp.create_tenant(name, "r").await.unwrap();
        cp.wait_done(&operation.operation_id, Duration::from_secs(60))
            .await;
    }
    let mut request = pb::CreateTenantRequest {
        tier: "enterprise".into(),
        ..create("t-foxtrot")
    };
    request.request_id = "r".into();
    let operation = client
        .create_tenant(with_token(request, &admin))
        .await
        .unwrap()
        .into_inner();
    cp.wait_done(&operation.operation_id, Duration::from_secs(60))
        .await;
    client
        .suspend_tenant(with_token(
            pb::SuspendTenantRequest {
                tenant_id: "t-bravo".into(),
                reason: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tenants(with_token(
                pb::ListTenantsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.tenants.len() <= 2);
        seen.extend(page.tenants.into_iter().map(|t| t.tenant_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        [
            "t-alpha",
            "t-bravo",
            "t-charlie",
            "t-delta",
            "t-echo",
            "t-foxtrot"
        ]
    );

    let suspended = client
        .list_tenants(with_token(
            pb::ListTenantsRequest {
                state: pb::TenantState::Suspended.into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        suspended
            .tenants
            .iter()
            .map(|t| t.tenant_id.as_str())
            .collect::<Vec<_>>(),
        ["t-bravo"]
    );
    let enterprise = client
        .list_tenants(with_token(
            pb::ListTenantsRequest {
                tier: "enterprise".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        enterprise
            .tenants
            .iter()
            .map(|t| t.tenant_id.as_str())
            .collect::<Vec<_>>(),
        ["t-foxtrot"]
    );
}
