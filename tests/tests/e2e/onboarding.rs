use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_tests::TestEnv;

const ONBOARDING: Duration = Duration::from_secs(60);

async fn tenant_login(
    route: &pb::TenantRoute,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&route.host)
        .port(u16::try_from(route.port).unwrap())
        .user(&route.user)
        .password(&route.password)
        .dbname(database)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_tenants_get_their_own_database_spread_over_the_fleet() {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;

    let tenants = ["acme", "globex", "initech"];
    let operations = join_all(tenants.iter().map(|t| {
        let cp = &cp;
        async move { cp.create_tenant(t, &format!("req-{t}")).await }
    }))
    .await;
    let mut placements = BTreeMap::new();
    let mut routes = BTreeMap::new();
    for (tenant, operation) in tenants.iter().zip(operations) {
        let operation = operation.expect("create accepted");
        assert_eq!(operation.tenant_id, *tenant);
        let done = cp.wait_done(&operation.operation_id, ONBOARDING).await;
        assert_eq!(
            done.status(),
            pb::OperationStatus::Succeeded,
            "{tenant}: {}",
            done.error
        );
        let steps: Vec<_> = done
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.status()))
            .collect();
        assert_eq!(
            steps,
            [
                ("PROVISIONING", pb::StepStatus::Done),
                ("WAITING_AVAILABLE", pb::StepStatus::Done),
                ("MIGRATING", pb::StepStatus::Done),
            ]
        );
        assert!(
            done.steps
                .iter()
                .all(|s| s.duration.is_some() && s.finished_at.is_some())
        );

        let record = cp.get_tenant(tenant).await.unwrap();
        assert_eq!(record.state(), pb::TenantState::Active);
        assert_eq!(record.schema_version, 1);
        placements.insert(*tenant, record.placement.clone());
        routes.insert(*tenant, cp.resolve(tenant).await.unwrap());
    }

    // Placement = fewest tenants: three tenants on two servers land 2 + 1.
    let mut per_server = BTreeMap::new();
    for server in placements.values() {
        *per_server.entry(server.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_server.len(), 2, "placements: {placements:?}");

    for (tenant, route) in &routes {
        assert_eq!(route.state(), pb::TenantState::Active);
        // Opaque names: nothing on the server says which tenant a database belongs to.
        let record = cp.get_tenant(tenant).await.unwrap();
        assert_eq!(
            (&route.database, &route.user),
            (&record.database, &record.role)
        );
        assert_eq!(record.name_scheme, "hmac-sha256-v1");
        assert!(
            route.database.starts_with("s_") && !route.database.contains(tenant),
            "{}",
            route.database
        );
        assert!(
            route.password.len() >= 43,
            "password is at least 32 random bytes"
        );
        let client = tenant_login(route, &route.database)
            .await
            .expect("tenant logs in to its own database");
        let baseline: String = client
            .query_one(
                "SELECT value FROM silo_tenant_info WHERE key = 'schema_baseline'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(baseline, "1");
        let server = usize::from(placements[tenant] == "pg1");
        let admin = env.admin_client(server, "postgres").await;
        let row = admin
            .query_one(
                "SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolcanlogin,
                        pg_get_userbyid(d.datdba), has_database_privilege('public', d.datname, 'CONNECT')
                 FROM pg_roles r, pg_database d
                 WHERE r.rolname = $1 AND d.datname = $2",
                &[&route.user, &route.database],
            )
            .await
            .unwrap();
        let flags: (bool, bool, bool, bool, String, bool) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        // silo's admin owns the database, not the tenant.
        assert_eq!(flags, (false, false, false, true, "postgres".into(), false));
    }

    // A tenant's credentials do not open another tenant's database: not on the same server
    // (no CONNECT), not on another (no such role there).
    let acme = &routes["acme"];
    for other in ["globex", "initech"] {
        let target = &routes[other];
        let mut foreign = acme.clone();
        foreign.host.clone_from(&target.host);
        foreign.port = target.port;
        let refused = tenant_login(&foreign, &target.database).await;
        let error = refused
            .err()
            .unwrap_or_else(|| panic!("acme's login opened {other}'s database"));
        let code = error.code().map(|c| c.code().to_owned());
        assert!(
            matches!(code.as_deref(), Some("42501" | "28000" | "28P01")),
            "unexpected refusal for {other}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_on_the_request_id() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;

    let first = cp.create_tenant("hooli", "req-1").await.unwrap();
    let again = cp.create_tenant("hooli", "req-1").await.unwrap();
    assert_eq!(first.operation_id, again.operation_id);

    let conflict = cp.create_tenant("hooli", "req-2").await.unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);

    let done = cp.wait_done(&first.operation_id, ONBOARDING).await;
    assert_eq!(done.status(), pb::OperationStatus::Succeeded);
    let after = cp.create_tenant("hooli", "req-1").await.unwrap();
    assert_eq!(after.operation_id, first.operation_id);
    assert!(after.done);
    assert_eq!(
        cp.create_tenant("hooli", "req-3").await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );

    let name = cp.get_tenant("hooli").await.unwrap().database;
    let admin = env.admin_client(0, "postgres").await;
    let databases: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1 || '%'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(databases, 1);
}
