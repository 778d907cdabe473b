//! TLS to PostgreSQL on every hop: servers with `ssl = on` whose `pg_hba.conf` admits TCP
//! logins over TLS only (`hostssl`), a CA and server certificate made in the test.

use std::time::Duration;

use silo_control_plane::Hooks;
use silo_proto::controlplane::v1 as cpb;
use silo_proto::router::v1 as rpb;
use silo_router::pool::PoolConfig;
use silo_tests::{
    FLEET_PASSWORD, TLS_ADMIN, TenantMigrations, TestControlPlane, TestEnv, eventually,
    router::{TestRouter, call, statement, tenant_token},
    tls::TestCa,
    token, with_token,
};
use tonic::Code;

async fn query_text(
    router: &TestRouter,
    tenant: &str,
    sql: &str,
    timeout: Option<Duration>,
) -> Result<Vec<String>, tonic::Status> {
    let mut request = call(
        rpb::QueryRequest {
            statement: statement(sql, vec![]),
            max_rows: 0,
        },
        &tenant_token(tenant),
        None,
    );
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let response = router.client.clone().query(request).await?.into_inner();
    Ok(response
        .rows
        .iter()
        .map(|row| match &row.values[0].kind {
            Some(rpb::value::Kind::StringValue(s)) => s.clone(),
            other => panic!("unexpected value {other:?}"),
        })
        .collect())
}

async fn create_in_tier(cp: &TestControlPlane, tenant: &str, tier: &str) {
    let operation = cp
        .client()
        .create_tenant(with_token(
            cpb::CreateTenantRequest {
                tenant_id: tenant.into(),
                display_name: tenant.into(),
                tier: tier.into(),
                request_id: format!("create-{tenant}"),
            },
            &token("admin"),
        ))
        .await
        .expect("create accepted")
        .into_inner();
    cp.wait_succeeded(&operation.operation_id).await;
}

/// Whether every connection `user` has open on server 0 uses TLS, and how many there are.
async fn sessions_of(env: &TestEnv, user: &str) -> (i64, bool) {
    let row = env
        .admin_client(0, "postgres")
        .await
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), true) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&user],
        )
        .await
        .expect("pg_stat_ssl");
    (row.get(0), row.get(1))
}

/// The router's sessions for `tenant` exist and all use TLS. A call first, in a loop: the
/// pool may be rebuilt (a route event after onboarding) between a call and the look at
/// pg_stat_ssl, leaving no session to see; a plaintext session fails at once.
async fn assert_router_sessions_encrypted(
    env: &TestEnv,
    router: &TestRouter,
    tenant: &str,
    role: &str,
) {
    eventually(
        Duration::from_secs(10),
        &format!("a session of {tenant}'s to look at"),
        || async {
            query_text(router, tenant, "SELECT 'ok'", None)
                .await
                .expect("query");
            let (sessions, all_tls) = sessions_of(env, role).await;
            assert!(all_tls, "a session of {tenant}'s without TLS");
            (sessions > 0).then_some(())
        },
    )
    .await;
}

const V2: &str = "CREATE TABLE invoices (id bigint PRIMARY KEY, total numeric NOT NULL);\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_routing_cancel_and_fleet_migration_work_over_verify_full() {
    let env = TestEnv::start_tls(1).await;
    let migrations = TenantMigrations::from_repository();
    let first = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    // Onboarding: the catalog and the fleet admin both log in over verify-full.
    first.onboard(&["acme"]).await;
    let route = first.resolve("acme").await.expect("route");
    assert_eq!(route.host, "localhost");
    assert_eq!(route.sslmode, "verify-full", "inherited from the fleet DSN");
    let (admin_sessions, all_tls) = sessions_of(&env, TLS_ADMIN).await;
    assert!(
        admin_sessions > 0 && all_tls,
        "{admin_sessions} catalog sessions"
    );
    first.stop().await;

    // Fleet migration over TLS.
    migrations.write("V0002__invoices.sql", V2);
    let cp = env
        .control_plane_with(env.config(&[&migrations.flag()]), Hooks::default())
        .await;
    let started = cp
        .start_migration(cpb::StartMigrationRequest::default())
        .await
        .expect("migration accepted");
    cp.wait_succeeded(&started.operation_id).await;

    // Routing: the migration's table is there, and the router's sessions are encrypted
    // (pg_stat_ssl is closed to tenants; the superuser reads it).
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let invoices = query_text(&router, "acme", "SELECT count(*)::text FROM invoices", None)
        .await
        .expect("migrated table");
    assert_eq!(invoices, ["0"]);
    let role = cp.get_tenant("acme").await.expect("tenant").role;
    assert_router_sessions_encrypted(&env, &router, "acme", &role).await;

    // Cancel: a caller that gives up has its statement cancelled on the server, through
    // a cancel request over TLS like the statement's connection (the cancel token
    // carries sslmode=require: a plaintext attempt fails before reaching the server).
    let gave_up = query_text(
        &router,
        "acme",
        "SELECT pg_sleep(60)::text",
        Some(Duration::from_millis(300)),
    )
    .await
    .expect_err("the caller's deadline passes");
    assert!(
        matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{gave_up:?}"
    );
    let admin = env.admin_client(0, "postgres").await;
    eventually(
        Duration::from_secs(5),
        "the sleep to be cancelled",
        || async {
            let sleeping: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            (sleeping == 0).then_some(())
        },
    )
    .await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_wrong_ca_and_wrong_host_fail_with_the_certificate_problem() {
    let env = TestEnv::start_tls(1).await;
    let tls = env.tls.as_ref().expect("TLS environment");
    let server = &env.servers[0];

    // The same server refuses plaintext from silo's admin role.
    let mut plain = tokio_postgres::Config::new();
    plain
        .host("127.0.0.1")
        .port(server.port())
        .user(TLS_ADMIN)
        .password(FLEET_PASSWORD)
        .dbname("postgres");
    let refused = plain
        .connect(tokio_postgres::NoTls)
        .await
        .map(|_| ())
        .expect_err("plaintext refused");
    let db = refused.as_db_error().expect("refused by the server");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("no encryption"), "{}", db.message());

    // The fleet DSN names 127.0.0.1 with verify-ca: the certificate (for `localhost`)
    // is accepted without its name being compared, as libpq does.
    let other_ca = TestCa::new("someone else's CA").write(&env.scratch_file("other-ca.pem"));
    let tiers = env.scratch_file("tiers.toml");
    std::fs::write(
        &tiers,
        format!(
            "default_tier = \"standard\"\n\
             [tiers.standard]\nprovisioner = \"postgres\"\n\
             [tiers.plain]\nprovisioner = \"postgres\"\nsslmode = \"disable\"\n\
             [tiers.strict]\nprovisioner = \"postgres\"\nsslmode = \"verify-full\"\n\
             sslrootcert = \"{ca}\"\n\
             [tiers.foreign]\nprovisioner = \"postgres\"\nsslmode = \"verify-full\"\n\
             sslrootcert = \"{other}\"\n",
            ca = tls.ca_file.display(),
            other = other_ca.display(),
        ),
    )
    .expect("tiers written");
    let fleet = format!(
        "--postgres-server=pg0=postgres://{TLS_ADMIN}:{FLEET_PASSWORD}@127.0.0.1:{}/postgres\
         ?sslmode=verify-ca&sslrootcert={}",
        server.port(),
        tls.ca_file.display()
    );
    let mut args = vec!["silo-control-plane".to_owned()];
    args.extend(
        env.args(&[])
            .into_iter()
            .filter(|arg| !arg.starts_with("--postgres-server=")),
    );
    args.push(fleet);
    args.push(format!("--tiers-file={}", tiers.display()));
    let config = <silo_control_plane::ControlPlaneConfig as clap::Parser>::try_parse_from(args)
        .expect("config");
    let cp = env.control_plane_with(config, Hooks::default()).await;
    for (tenant, tier) in [
        ("chain", "standard"),
        ("plain", "plain"),
        ("strict", "strict"),
        ("foreign", "foreign"),
    ] {
        create_in_tier(&cp, tenant, tier).await;
    }
    let router = TestRouter::start(
        &cp,
        PoolConfig {
            connect_timeout: Duration::from_millis(500),
            ..PoolConfig::default()
        },
    )
    .await;

    let answer = query_text(&router, "chain", "SELECT 'ok'", None)
        .await
        .expect("verify-ca ignores the name");
    assert_eq!(answer, ["ok"]);
    let role = cp.get_tenant("chain").await.expect("tenant").role;
    assert_router_sessions_encrypted(&env, &router, "chain", &role).await;

    for (tenant, reason) in [
        ("plain", None),
        (
            "strict",
            Some("TLS: the server's certificate does not name the host connected to"),
        ),
        (
            "foreign",
            Some("TLS: the server's certificate is not signed by a CA in sslrootcert"),
        ),
    ] {
        let status = query_text(&router, tenant, "SELECT 'x'", None)
            .await
            .expect_err(tenant);
        assert_eq!(status.code(), Code::Unavailable, "{tenant}: {status:?}");
        let message = status.message();
        assert!(
            message.starts_with("tenant database unreachable"),
            "{tenant}: {message}"
        );
        if let Some(reason) = reason {
            assert!(message.contains(reason), "{tenant}: {message}");
        }
        for secret in ["127.0.0.1", "localhost", FLEET_PASSWORD, "ca.pem"] {
            assert!(
                !message.contains(secret),
                "{tenant}: {message} names {secret}"
            );
        }
    }
    cp.stop().await;
}
