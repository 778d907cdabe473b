//! The router against the real control plane: tenants on two servers, identity, push
//! invalidation, credential rotation.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::future::join_all;
use silo_control_plane::Hooks;
use silo_proto::controlplane::v1 as cpb;
use silo_proto::router::v1::{self as rpb, router_client::RouterClient};
use silo_router::pool::PoolConfig;
use silo_tests::{
    AUDIENCE, ISSUER, TestEnv, eventually, fixture,
    router::{ROUTER_AUDIENCE, TestRouter, call, int, statement, tenant_token, text},
    token, with_token,
};
use tokio_stream::StreamExt as _;
use tonic::{Code, transport::Channel};

fn strings(rows: &[rpb::Row]) -> Vec<String> {
    rows.iter()
        .map(|row| match &row.values[0].kind {
            Some(rpb::value::Kind::StringValue(s)) => s.clone(),
            other => panic!("unexpected value {other:?}"),
        })
        .collect()
}

async fn query(
    client: &mut RouterClient<Channel>,
    tenant: &str,
    sql: &str,
) -> Result<Vec<String>, tonic::Status> {
    let request = rpb::QueryRequest {
        statement: statement(sql, vec![]),
        max_rows: 0,
    };
    client
        .query(call(request, &tenant_token(tenant), None))
        .await
        .map(|r| strings(&r.into_inner().rows))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_two_servers_only_ever_see_their_own_rows_through_every_rpc() {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;
    let tenants = ["acme", "globex", "initech"];
    cp.onboard(&tenants).await;
    let placements: Vec<String> = join_all(
        tenants
            .iter()
            .map(|t| async { cp.get_tenant(t).await.unwrap().placement }),
    )
    .await;
    assert!(placements.contains(&"pg0".to_owned()) && placements.contains(&"pg1".to_owned()));
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let mut client = router.client.clone();

    for tenant in tenants {
        let token = tenant_token(tenant);
        let create = rpb::ExecuteRequest {
            statement: statement(
                "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)",
                vec![],
            ),
        };
        client.execute(call(create, &token, None)).await.unwrap();
        let inserts = rpb::BatchRequest {
            statements: (1..=3)
                .map(|i| rpb::Statement {
                    sql: "INSERT INTO notes VALUES ($1, $2)".into(),
                    params: vec![int(i), text(&format!("{tenant}-{i}"))],
                })
                .collect(),
        };
        let affected = client
            .batch(call(inserts, &token, Some(tenant)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(affected.rows_affected, [1, 1, 1]);
    }

    for tenant in tenants {
        let token = tenant_token(tenant);
        let own = query(&mut client, tenant, "SELECT body FROM notes ORDER BY id")
            .await
            .unwrap();
        assert_eq!(
            own,
            (1..=3).map(|i| format!("{tenant}-{i}")).collect::<Vec<_>>()
        );

        let streamed = client
            .query_stream(call(
                rpb::QueryStreamRequest {
                    statement: statement("SELECT body FROM notes", vec![]),
                    batch_size: 2,
                },
                &token,
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        let batches: Vec<rpb::RowBatch> = streamed.map(|b| b.unwrap()).collect().await;
        assert!(
            batches.len() >= 2 && batches.iter().all(|b| b.rows.len() <= 2),
            "{tenant}: 3 rows arrive in batches of at most 2: {batches:?}"
        );
        let rows: Vec<rpb::Row> = batches.into_iter().flat_map(|b| b.rows).collect();
        let mut streamed_bodies = strings(&rows);
        streamed_bodies.sort();
        assert_eq!(
            streamed_bodies, own,
            "{tenant}: the stream holds exactly its own rows"
        );

        let deleted = client
            .execute(call(
                rpb::ExecuteRequest {
                    statement: statement("DELETE FROM notes WHERE id = 3", vec![]),
                },
                &token,
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            deleted.rows_affected, 1,
            "a tenant's DELETE touches only its own silo"
        );

        // An interactive transaction sees only this tenant's rows too.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(rpb::TransactionRequest {
            kind: Some(rpb::transaction_request::Kind::Begin(rpb::Begin::default())),
        })
        .await
        .unwrap();
        tx.send(rpb::TransactionRequest {
            kind: Some(rpb::transaction_request::Kind::Query(rpb::QueryRequest {
                statement: statement("SELECT body FROM notes ORDER BY id", vec![]),
                max_rows: 0,
            })),
        })
        .await
        .unwrap();
        tx.send(rpb::TransactionRequest {
            kind: Some(rpb::transaction_request::Kind::Commit(rpb::Commit {})),
        })
        .await
        .unwrap();
        drop(tx);
        let mut responses = client
            .transaction(call(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &token,
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Some(response) = responses.next().await {
            if let Some(rpb::transaction_response::Kind::Query(result)) = response.unwrap().kind {
                seen = strings(&result.rows);
            }
        }
        assert_eq!(seen, [format!("{tenant}-1"), format!("{tenant}-2")]);
    }

    // Another tenant, existing or not, is PERMISSION_DENIED, alike.
    let acme = tenant_token("acme");
    let request = || rpb::QueryRequest {
        statement: statement("SELECT body FROM notes", vec![]),
        max_rows: 0,
    };
    let existing = client
        .query(call(request(), &acme, Some("globex")))
        .await
        .unwrap_err();
    let missing = client
        .query(call(request(), &acme, Some("no-such-tenant")))
        .await
        .unwrap_err();
    assert_eq!(existing.code(), Code::PermissionDenied);
    assert_eq!(
        (missing.code(), missing.message()),
        (existing.code(), existing.message())
    );
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn forged_tokens() -> Vec<(&'static str, String)> {
    let now = silo_auth::unix_now();
    let claims = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = serde_json::json!({
            "sub": "svc", "iss": ISSUER, "aud": ROUTER_AUDIENCE, "exp": now + 600, "tenant_id": "acme"
        });
        edit(&mut claims);
        claims
    };
    let rsa = silo_tests::signer();
    let other = silo_auth::TokenSigner::from_pem_file(
        fixture("other_rsa_private.pem"),
        silo_auth::Algorithm::RS256,
    )
    .unwrap();
    let public_pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let hs_with_public_key = {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = b64(claims(&|_| {}).to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public_pem).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(&|_| {}).to_string().as_bytes())
    );
    vec![
        ("wrong key", other.sign(&claims(&|_| {})).unwrap()),
        ("alg none", alg_none),
        (
            "HS256 with the RSA public key as secret",
            hs_with_public_key,
        ),
        (
            "expired",
            rsa.sign(&claims(&|c| c["exp"] = (now - 3600).into()))
                .unwrap(),
        ),
        (
            "nbf in the future",
            rsa.sign(&claims(&|c| c["nbf"] = (now + 3600).into()))
                .unwrap(),
        ),
        (
            "wrong aud",
            rsa.sign(&claims(&|c| c["aud"] = AUDIENCE.into())).unwrap(),
        ),
        (
            "wrong iss",
            rsa.sign(&claims(&|c| c["iss"] = "someone-else".into()))
                .unwrap(),
        ),
        (
            "no tenant claim",
            rsa.sign(&claims(&|c| {
                c.as_object_mut().unwrap().remove("tenant_id");
            }))
            .unwrap(),
        ),
        ("garbage", "not.a.token".into()),
        ("empty", String::new()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_broken_tokens_are_unauthenticated_and_events_reach_the_router_at_once() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let mut client = router.client.clone();
    assert_eq!(
        query(&mut client, "acme", "SELECT 'ok'::text")
            .await
            .unwrap(),
        ["ok"]
    );

    for (what, forged) in forged_tokens() {
        let request = rpb::QueryRequest {
            statement: statement("SELECT 'x'::text", vec![]),
            max_rows: 0,
        };
        let status = client
            .query(call(request, &forged, None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }

    // Suspend: the next call is refused within a second, no TTL wait.
    let mut cp_client = cp.client();
    let admin = token("admin");
    cp_client
        .suspend_tenant(with_token(
            cpb::SuspendTenantRequest {
                tenant_id: "acme".into(),
                reason: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let started = Instant::now();
    eventually(
        Duration::from_secs(1),
        "the suspension to reach the router",
        || {
            let mut client = client.clone();
            async move {
                let refused = query(&mut client, "acme", "SELECT 'x'::text").await.err()?;
                (refused.code() == Code::FailedPrecondition).then_some(())
            }
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    cp_client
        .resume_tenant(with_token(
            cpb::ResumeTenantRequest {
                tenant_id: "acme".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(2),
        "the resumption to reach the router",
        || {
            let mut client = client.clone();
            async move { query(&mut client, "acme", "SELECT 'back'::text").await.ok() }
        },
    )
    .await;

    // Rotation: the router drops the pool and logs in with the new password.
    cp_client
        .rotate_credentials(with_token(
            cpb::RotateCredentialsRequest {
                tenant_id: "acme".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    eventually(Duration::from_secs(2), "a call after rotation", || {
        let mut client = client.clone();
        async move {
            query(&mut client, "acme", "SELECT 'rotated'::text")
                .await
                .ok()
        }
    })
    .await;
    let admin_db = env.admin_client(0, "postgres").await;
    let acme_database = cp.get_tenant("acme").await.unwrap().database;
    admin_db
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&acme_database],
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(2),
        "a fresh connection with the new password",
        || {
            let mut client = client.clone();
            async move {
                query(&mut client, "acme", "SELECT 'fresh'::text")
                    .await
                    .ok()
            }
        },
    )
    .await;

    // Deleted: NOT_FOUND for its own token.
    let deletion = cp_client
        .delete_tenant(with_token(
            cpb::DeleteTenantRequest {
                tenant_id: "acme".into(),
                keep_database: false,
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    cp.wait_done(&deletion.operation_id, Duration::from_secs(30))
        .await;
    eventually(Duration::from_secs(3), "NOT_FOUND after deletion", || {
        let mut client = client.clone();
        async move {
            (query(&mut client, "acme", "SELECT 'x'::text")
                .await
                .err()?
                .code()
                == Code::NotFound)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_tenants_keep_working_while_the_control_plane_is_down() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let mut client = router.client.clone();
    let status = |service: &'static str| silo_tests::health_status(router.address, service);
    eventually(Duration::from_secs(10), "ready once connected", || async {
        (status("silo.router.v1.Router").await == Some(ServingStatus::Serving)
            && status(silo_router::CONTROL_PLANE_HEALTH).await == Some(ServingStatus::Serving))
        .then_some(())
    })
    .await;
    assert_eq!(
        query(&mut client, "acme", "SELECT current_database()::text")
            .await
            .unwrap()
            .len(),
        1
    );

    cp.stop().await;
    eventually(
        Duration::from_secs(10),
        "the outage is reported",
        || async {
            (status(silo_router::CONTROL_PLANE_HEALTH).await == Some(ServingStatus::NotServing))
                .then_some(())
        },
    )
    .await;
    // Still ready: readiness must not take every router out of service in an outage.
    assert_eq!(
        status("silo.router.v1.Router").await,
        Some(ServingStatus::Serving)
    );
    assert_eq!(status("").await, Some(ServingStatus::Serving));
    for _ in 0..3 {
        let rows = query(&mut client, "acme", "SELECT current_database()::text")
            .await
            .expect("a known tenant keeps working");
        assert_eq!(rows.len(), 1);
    }
    // A tenant the router never resolved cannot be routed: UNAVAILABLE, at once.
    let started = Instant::now();
    let unknown = query(&mut client, "globex", "SELECT 1::text")
        .await
        .expect_err("no route");
    assert_eq!(unknown.code(), Code::Unavailable, "{unknown:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
