use futures::future::join_all;
use silo_control_plane::Hooks;
use silo_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_start_on_one_catalog_and_share_the_work() {
    let env = TestEnv::start(2).await;
    // Both migrate the same fresh catalog at once: the advisory lock lets one apply it.
    let (a, b) = tokio::join!(
        env.control_plane(Hooks::default()),
        env.control_plane(Hooks::default())
    );

    let tenants: Vec<String> = (0..10).map(|i| format!("shared-{i}")).collect();
    let operations = join_all(tenants.iter().enumerate().map(|(i, tenant)| {
        let cp = if i % 2 == 0 { &a } else { &b };
        async move { cp.create_tenant(tenant, "r").await.unwrap() }
    }))
    .await;
    for operation in &operations {
        let done = a.wait_succeeded(&operation.operation_id).await;
        assert!(
            !done.steps.is_empty() && done.steps.iter().all(|step| step.attempts == 1),
            "no step ran twice: {:?}",
            done.steps
        );
    }
    let mut names = Vec::new();
    for tenant in &tenants {
        names.push(a.get_tenant(tenant).await.unwrap().database);
    }
    let mut databases = 0;
    for index in 0..env.servers.len() {
        let admin = env.admin_client(index, "postgres").await;
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = ANY($1)",
                &[&names],
            )
            .await
            .unwrap()
            .get(0);
        databases += n;
    }
    assert_eq!(databases, 10);
    let catalog = env.admin_client(0, &env.catalog_database).await;
    let applied: i64 = catalog
        .query_one("SELECT count(*) FROM silo_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/catalog"
    ))
    .unwrap()
    .filter(|entry| {
        entry
            .as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
    })
    .count();
    assert_eq!(
        applied,
        i64::try_from(files).unwrap(),
        "each catalog migration was applied once"
    );
}
