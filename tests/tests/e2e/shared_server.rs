//! Tenants sharing one PostgreSQL server (issue 12): a tenant cannot see, name, touch or
//! block another, and cannot lock itself out. Every tenant here acts through its own role,
//! as the router logs it in.

use std::{collections::BTreeMap, time::Duration};

use silo_control_plane::Hooks;
use silo_proto::controlplane::v1::{self as pb};
use silo_proto::router::v1 as rpb;
use silo_router::pool::PoolConfig;
use silo_tests::{
    LogCapture, TestControlPlane, TestEnv, eventually,
    router::{TestRouter, call, statement, tenant_token},
    token, with_token,
};
use tokio_postgres::error::SqlState;

async fn login(route: &pb::TenantRoute) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&route.host)
        .port(u16::try_from(route.port).unwrap())
        .user(&route.user)
        .password(&route.password)
        .dbname(&route.database)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Runs `sql` as `tenant` through the router; Err carries the SQLSTATE.
async fn run(router: &TestRouter, tenant: &str, sql: &str) -> Result<(), String> {
    let request = rpb::ExecuteRequest {
        statement: statement(sql, vec![]),
    };
    router
        .client
        .clone()
        .execute(call(request, &tenant_token(tenant), None))
        .await
        .map(drop)
        .map_err(|status| {
            status
                .metadata()
                .get(silo_router::error::SQLSTATE_METADATA)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(status.message())
                .to_owned()
        })
}

async fn delete(cp: &TestControlPlane, tenant: &str, request_id: &str) -> pb::Operation {
    cp.client()
        .delete_tenant(with_token(
            pb::DeleteTenantRequest {
                tenant_id: tenant.into(),
                keep_database: false,
                request_id: request_id.into(),
            },
            &token("admin"),
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn roles_named(env: &TestEnv, role: &str) -> i64 {
    env.admin_client(0, "postgres")
        .await
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_finds_no_trace_of_the_others_in_any_shared_catalog_or_statistics_view() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    let tenants = ["acme", "globex", "initech"];
    cp.onboard(&tenants).await;
    let mut routes = BTreeMap::new();
    for tenant in tenants {
        routes.insert(tenant, cp.resolve(tenant).await.unwrap());
    }

    // The others are busy meanwhile: sessions in open transactions, holding locks.
    let mut busy = Vec::new();
    for other in ["globex", "initech"] {
        let client = login(&routes[other]).await;
        client
            .batch_execute(&format!(
                "BEGIN; CREATE TABLE {other}_busy (x int); LOCK {other}_busy IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .unwrap();
        busy.push(client);
    }
    let mut forbidden = vec![env.catalog_database.clone()];
    for other in ["globex", "initech"] {
        forbidden.extend([
            other.to_owned(),
            routes[other].database.clone(),
            routes[other].user.clone(),
        ]);
    }

    let acme = login(&routes["acme"]).await;
    let relations: Vec<String> = acme
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
             WHERE c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
               AND c.relkind IN ('r', 'v', 'm')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let shared: Vec<String> = env
        .admin_client(0, "postgres")
        .await
        .query(
            "SELECT oid::regclass::text FROM pg_class WHERE relisshared AND relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(shared.len() >= 10, "{shared:?}");
    assert!(shared.iter().all(|name| relations.contains(name)));
    assert!(
        relations
            .iter()
            .filter(|r| r.starts_with("pg_stat"))
            .count()
            >= 40
    );

    let mut refused = Vec::new();
    let mut read = 0;
    for relation in &relations {
        match acme
            .query(
                &format!("SELECT row_to_json(t)::text FROM {relation} t"),
                &[],
            )
            .await
        {
            Ok(rows) => {
                read += 1;
                for row in rows {
                    let text: String = row.get(0);
                    for name in &forbidden {
                        assert!(
                            !text.contains(name.as_str()),
                            "acme reads {name:?} in {relation}: {text}"
                        );
                    }
                }
            }
            Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                refused.push(relation.clone());
            }
            Err(error) => panic!("{relation}: {error}"),
        }
    }
    assert!(read > 100, "most of the catalog stays readable ({read})");
    // information_schema as on any server (these few are closed to PUBLIC by PostgreSQL).
    let closed_anyway = [
        "information_schema._pg_foreign_data_wrappers",
        "information_schema._pg_foreign_servers",
        "information_schema._pg_foreign_table_columns",
        "information_schema._pg_foreign_tables",
        "information_schema._pg_user_mappings",
        "information_schema.sql_parts",
        "information_schema.transforms",
    ];
    for relation in &refused {
        assert!(
            !relation.starts_with("information_schema")
                || closed_anyway.contains(&relation.as_str()),
            "{relation} is refused"
        );
    }
    for closed in [
        "pg_database",
        "pg_authid",
        "pg_auth_members",
        "pg_shdepend",
        "pg_shdescription",
        "pg_db_role_setting",
        "pg_roles",
        "pg_user",
        "pg_stat_activity",
        "pg_stat_database",
        "pg_locks",
    ] {
        assert!(refused.iter().any(|r| r == closed), "{closed} is readable");
    }

    // Functions that read the same, or tell whether a name exists, are closed too.
    for probe in [
        "SELECT has_database_privilege('postgres', 'CONNECT')",
        "SELECT pg_database_size('postgres')",
        "SELECT to_regrole('postgres')",
        "SELECT pg_describe_object('pg_database'::regclass, 1, 0)",
        "SELECT count(*) FROM pg_stat_get_activity(NULL)",
        "SELECT count(*) FROM pg_lock_status()",
        "SELECT pg_stat_get_db_numbackends(1)",
        "SELECT shobj_description(1, 'pg_database')",
    ] {
        let error = acme.query(probe, &[]).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{probe}"
        );
    }

    // What an application and its ORM need still works.
    let role = &routes["acme"].user;
    acme.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body varchar(200) NOT NULL);
         INSERT INTO notes VALUES (1, 'a')",
    )
    .await
    .unwrap();
    let me: String = acme
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(&me, role);
    for (sql, expected) in [
        (
            "SELECT string_agg(table_name::text, ',') FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name = 'notes'",
            "notes".to_owned(),
        ),
        (
            "SELECT string_agg(column_name || ':' || data_type || ':'
                                   || coalesce(character_octet_length::text, '-'), ','
                               ORDER BY ordinal_position)
             FROM information_schema.columns WHERE table_name = 'notes'",
            "id:integer:-,body:character varying:800".to_owned(),
        ),
        (
            "SELECT string_agg(tc.constraint_type || ':' || kcu.column_name, ',')
             FROM information_schema.table_constraints tc
             JOIN information_schema.key_column_usage kcu
               USING (constraint_schema, constraint_name)
             WHERE tc.table_name = 'notes'",
            "PRIMARY KEY:id".to_owned(),
        ),
        (
            "SELECT string_agg(a.attname::text, ',' ORDER BY a.attnum) FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relname = 'notes' AND a.attnum > 0",
            "id,body".to_owned(),
        ),
        (
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'notes'",
            role.clone(),
        ),
        (
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'notes'",
            "notes_pkey".to_owned(),
        ),
        (
            "SELECT relname::text FROM pg_stat_user_tables WHERE relname = 'notes'",
            "notes".to_owned(),
        ),
        (
            "SELECT current_database()::text",
            routes["acme"].database.clone(),
        ),
    ] {
        let got: String = acme.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(got, expected, "{sql}");
    }

    // The first input, through the router.
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    for sql in [
        "SELECT datname FROM pg_database",
        "SELECT rolname FROM pg_roles",
        "SELECT datname, usename FROM pg_stat_activity",
        "SELECT * FROM pg_stat_database",
        "SELECT * FROM pg_auth_members",
        "SELECT * FROM pg_shdepend",
        "SELECT locktype, database, relation FROM pg_locks",
    ] {
        assert_eq!(
            run(&router, "acme", sql).await,
            Err("42501".into()),
            "{sql}"
        );
    }
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_from_another_tenant_does_not_block_deleting_the_grantee() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme", "fcvic", "umbrella"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let fcvic = cp.get_tenant("fcvic").await.unwrap();

    // acme learnt fcvic's role name somehow and hands it a privilege and a default one.
    run(&router, "acme", "CREATE TABLE g (x int)")
        .await
        .unwrap();
    run(
        &router,
        "acme",
        &format!("GRANT SELECT ON g TO {}", fcvic.role),
    )
    .await
    .unwrap();
    run(
        &router,
        "acme",
        &format!(
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {}",
            fcvic.role
        ),
    )
    .await
    .unwrap();
    // Privileges on acme's database, as tenants could grant before the admin owned them;
    // umbrella holds nothing else.
    let acme_db = cp.get_tenant("acme").await.unwrap().database;
    let umbrella = cp.get_tenant("umbrella").await.unwrap();
    env.admin_client(0, "postgres")
        .await
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {acme_db} TO {}, {}",
            fcvic.role, umbrella.role
        ))
        .await
        .unwrap();
    let deletion = delete(&cp, "umbrella", "del-1").await;
    cp.wait_succeeded(&deletion.operation_id).await;
    assert_eq!(roles_named(&env, &umbrella.role).await, 0);

    let deletion = delete(&cp, "fcvic", "del-1").await;
    cp.wait_succeeded(&deletion.operation_id).await;
    assert_eq!(
        cp.get_tenant("fcvic").await.unwrap().state(),
        pb::TenantState::Deleted
    );
    assert_eq!(roles_named(&env, &fcvic.role).await, 0);
    // acme keeps its table, without the grant.
    run(&router, "acme", "INSERT INTO g VALUES (1)")
        .await
        .unwrap();
    let grants: i64 = env
        .admin_client(0, &acme_db)
        .await
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'g' AND relacl::text LIKE '%' || $1 || '%'",
            &[&fcvic.role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(grants, 0);

    // And fcvic can come back.
    let again = cp.create_tenant("fcvic", "req-again").await.unwrap();
    cp.wait_succeeded(&again.operation_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deletion_is_retried_with_delete_tenant() {
    let env = TestEnv::start(1).await;
    let cp = env
        .control_plane_with(env.config(&["--max-step-attempts=1"]), Hooks::default())
        .await;
    cp.onboard(&["hooli"]).await;
    let hooli = cp.get_tenant("hooli").await.unwrap();

    // A privilege for the role in a database nobody may connect to: DROP ROLE must fail.
    let admin = env.admin_client(0, "postgres").await;
    admin.batch_execute("CREATE DATABASE frozen").await.unwrap();
    env.admin_client(0, "frozen")
        .await
        .batch_execute(&format!(
            "CREATE TABLE t (x int); GRANT SELECT ON t TO {}",
            hooli.role
        ))
        .await
        .unwrap();
    admin
        .batch_execute("ALTER DATABASE frozen ALLOW_CONNECTIONS false")
        .await
        .unwrap();

    let first = delete(&cp, "hooli", "del-1").await;
    let failed = cp
        .wait_done(&first.operation_id, Duration::from_secs(60))
        .await;
    assert_eq!(failed.status(), pb::OperationStatus::Failed);
    assert!(failed.error.contains("2BP01"), "{}", failed.error);
    assert_eq!(
        cp.get_tenant("hooli").await.unwrap().state(),
        pb::TenantState::Deleting
    );
    // The same request id answers with the same operation; a new one tries again.
    assert_eq!(
        delete(&cp, "hooli", "del-1").await.operation_id,
        first.operation_id
    );
    let second = delete(&cp, "hooli", "del-2").await;
    assert_ne!(second.operation_id, first.operation_id);
    let failed_again = cp
        .wait_done(&second.operation_id, Duration::from_secs(60))
        .await;
    assert_eq!(failed_again.status(), pb::OperationStatus::Failed);

    admin
        .batch_execute("ALTER DATABASE frozen ALLOW_CONNECTIONS true")
        .await
        .unwrap();
    let third = delete(&cp, "hooli", "del-3").await;
    cp.wait_succeeded(&third.operation_id).await;
    assert_eq!(
        cp.get_tenant("hooli").await.unwrap().state(),
        pb::TenantState::Deleted
    );
    assert_eq!(roles_named(&env, &hooli.role).await, 0);
    admin.batch_execute("DROP DATABASE frozen").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_hand_objects_to_another_or_limit_its_own_database() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme", "globex"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let acme = cp.get_tenant("acme").await.unwrap();
    let globex = cp.get_tenant("globex").await.unwrap().role;
    run(&router, "acme", "CREATE TABLE h (x int)")
        .await
        .unwrap();

    for sql in [
        format!("ALTER TABLE h OWNER TO {globex}"),
        format!("CREATE SCHEMA theirs AUTHORIZATION {globex}"),
        format!("GRANT {globex} TO CURRENT_USER"),
        format!("ALTER DEFAULT PRIVILEGES FOR ROLE {globex} GRANT SELECT ON TABLES TO PUBLIC"),
        format!("REASSIGN OWNED BY CURRENT_USER TO {globex}"),
        format!("COMMENT ON DATABASE {} IS 'acme'", acme.database),
        format!("ALTER DATABASE {} CONNECTION LIMIT 0", acme.database),
        format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            acme.database
        ),
        "ALTER ROLE CURRENT_USER CONNECTION LIMIT 0".to_owned(),
        "ALTER ROLE CURRENT_USER VALID UNTIL '2000-01-01'".to_owned(),
    ] {
        assert_eq!(
            run(&router, "acme", &sql).await,
            Err("42501".into()),
            "{sql}"
        );
    }
    // Still a normal owner of its own schema.
    run(&router, "acme", "CREATE SCHEMA mine").await.unwrap();
    run(&router, "acme", "CREATE TABLE mine.t (x int)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_changes_its_own_password_and_defaults_is_healed_within_ten_seconds() {
    let logs = LogCapture::install();
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let acme = cp.get_tenant("acme").await.unwrap();
    run(&router, "acme", "CREATE TABLE notes (x int)")
        .await
        .unwrap();

    run(&router, "acme", "ALTER ROLE CURRENT_USER PASSWORD 'x'")
        .await
        .unwrap();
    run(
        &router,
        "acme",
        "ALTER ROLE CURRENT_USER SET default_transaction_read_only = on",
    )
    .await
    .unwrap();
    // The router's connections are recycled (a restart, a failover, idle timeouts).
    let changed = std::time::Instant::now();
    env.admin_client(0, "postgres")
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&acme.role],
        )
        .await
        .unwrap();

    eventually(Duration::from_secs(10), "acme writing again", || async {
        run(&router, "acme", "INSERT INTO notes VALUES (1)")
            .await
            .ok()
    })
    .await;
    assert!(changed.elapsed() < Duration::from_secs(10));
    assert!(
        logs.contents().contains("repair_tenant_role"),
        "the repair is audited"
    );
    let metrics = silo_tests::http_get(cp.metrics_address(), "/metrics").await;
    for what in ["password", "settings"] {
        assert!(
            metrics.contains(&format!(
                "silo_controlplane_guard_repairs_total{{what=\"{what}\",result=\"ok\"}} 1"
            )),
            "{metrics}"
        );
    }
    let settings: i64 = env
        .admin_client(0, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
             WHERE r.rolname = $1",
            &[&acme.role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(settings, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silo_made_before_keyed_names_keeps_them_and_gets_the_isolation() {
    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["oldco"]).await;
    let made = cp.get_tenant("oldco").await.unwrap();

    // Turn it into a silo as the previous release made it: named after the tenant id,
    // owned by the tenant, the cluster catalogs open.
    let admin = env.admin_client(0, "postgres").await;
    admin
        .batch_execute(&format!(
            "ALTER ROLE {0} RENAME TO t_oldco; ALTER DATABASE {0} RENAME TO t_oldco;
             ALTER DATABASE t_oldco OWNER TO t_oldco",
            made.role
        ))
        .await
        .unwrap();
    env.admin_client(0, "t_oldco")
        .await
        .batch_execute(
            "GRANT SELECT ON pg_database, pg_roles, pg_stat_activity TO PUBLIC;
             ALTER SCHEMA public OWNER TO pg_database_owner",
        )
        .await
        .unwrap();
    env.admin_client(0, &env.catalog_database)
        .await
        .execute(
            "UPDATE tenants SET database_name = 't_oldco', role_name = 't_oldco',
                                name_scheme = 'tenant-id', isolation_version = 0
             WHERE tenant_id = 'oldco'",
            &[],
        )
        .await
        .unwrap();

    let route = cp.resolve("oldco").await.unwrap();
    assert_eq!(
        (route.database.as_str(), route.user.as_str()),
        ("t_oldco", "t_oldco")
    );
    let record = cp.get_tenant("oldco").await.unwrap();
    assert_eq!(record.name_scheme, "tenant-id");
    eventually(Duration::from_secs(10), "the old silo isolated", || async {
        let owner: String = admin
            .query_one(
                "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 't_oldco'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (owner == "postgres").then_some(())
    })
    .await;
    let tenant = login(&route).await;
    eventually(Duration::from_secs(10), "the catalogs closed", || async {
        let refused = tenant
            .query("SELECT datname FROM pg_database", &[])
            .await
            .err()?;
        (refused.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)).then_some(())
    })
    .await;
    tenant
        .batch_execute("CREATE TABLE still_mine (x int)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_admin_that_cannot_close_the_catalogs_fails_onboarding() {
    let env = TestEnv::start(1).await;
    env.admin_client(0, "postgres")
        .await
        .batch_execute("CREATE ROLE weak_admin LOGIN CREATEROLE CREATEDB PASSWORD 'weak-pw'")
        .await
        .unwrap();
    let mut config = env.config(&[]);
    config.postgres_servers = vec![
        format!(
            "pg0=postgres://weak_admin:weak-pw@{}:{}/postgres",
            env.servers[0].host(),
            env.servers[0].port()
        )
        .parse()
        .unwrap(),
    ];
    let cp = env.control_plane_with(config, Hooks::default()).await;
    let created = cp.create_tenant("exposed", "req-1").await.unwrap();
    let done = cp
        .wait_done(&created.operation_id, Duration::from_secs(60))
        .await;
    assert_eq!(done.status(), pb::OperationStatus::Failed);
    assert!(done.error.contains("superuser"), "{}", done.error);
    assert_eq!(
        cp.get_tenant("exposed").await.unwrap().state(),
        pb::TenantState::Failed
    );
}
