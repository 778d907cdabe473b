//! One test suite every provisioner passes (STYLE.md rule 6), run against `postgres` (a
//! fleet server) and `rds` (moto, endpoint rewritten to a harness server): place, create
//! idempotently, wait until available, bootstrap the tenant's role, database and schema
//! through the shared steps, log in as the tenant, retire idempotently.

use std::time::Duration;

use secrecy::SecretString;
use silo_control_plane::{
    catalog::Placement,
    config::Tiers,
    crypto::{CredentialCipher, generate_password},
    migrations::MigrationSet,
    provisioner::{
        Availability, FleetServer, PostgresProvisioner, Provisioner, RdsProvisioner, TenantSpec,
        bootstrap,
    },
    tenant::{SiloNamer, TenantId},
};
use silo_tests::{
    TestEnv,
    moto::Moto,
    rds::{RdsTier, rds_client},
};

const PATIENCE: Duration = Duration::from_secs(30);

async fn until_ready<F, Fut>(what: &str, mut step: F) -> Placement
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (Availability, Placement)>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match step().await {
            (Availability::Ready, placement) => return placement,
            (Availability::Waiting { retry_after, .. }, _) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what} never got ready"
                );
                tokio::time::sleep(retry_after.min(Duration::from_millis(200))).await;
            }
        }
    }
}

async fn tenant_can_log_in(
    admin: &silo_control_plane::provisioner::AdminAccess,
    spec: &TenantSpec,
    password: &SecretString,
) {
    let config = bootstrap::tenant_config(admin, spec, password);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("tenant login");
    tokio::spawn(connection);
    let baseline: String = client
        .query_one(
            "SELECT value FROM silo_tenant_info WHERE key = 'schema_baseline'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(baseline, "1");
}

/// The shared suite. Returns the final placement for implementation-specific checks.
async fn provisioner_suite<P: Provisioner>(provisioner: &P, tenant: &str, tier: &str) -> Placement {
    let id = TenantId::parse(tenant).unwrap();
    let names = SiloNamer::new(b"provisioner suite").unwrap().names(&id);
    let spec = TenantSpec::new(&id, tier, &format!("req-{tenant}"), &names);

    let placed = provisioner.place(&spec, &[]).expect("placed");
    assert!(!placed.server.is_empty());
    let ensured = provisioner
        .ensure_server(&spec, &placed)
        .await
        .expect("server ensured");
    let again = provisioner
        .ensure_server(&spec, &ensured)
        .await
        .expect("ensure is idempotent");
    assert_eq!(
        again.server, ensured.server,
        "a repeated ensure adopts the same server"
    );

    let placement = until_ready("the server", || async {
        provisioner.poll_available(&ensured).await.expect("poll")
    })
    .await;
    assert!(
        !placement.host.is_empty() && placement.port != 0,
        "{placement:?}"
    );

    let admin = provisioner
        .admin_access(&placement)
        .await
        .expect("admin access");
    let password = generate_password();
    bootstrap::ensure_silo(&admin, &spec, &password)
        .await
        .expect("silo made");
    bootstrap::ensure_silo(&admin, &spec, &password)
        .await
        .expect("silo adopted");
    let version =
        bootstrap::migrate_silo(&admin, &spec, &password, &MigrationSet::tenant().unwrap())
            .await
            .expect("migrated");
    assert_eq!(version, 1);
    tenant_can_log_in(&admin, &spec, &password).await;

    for round in ["retire", "retire again"] {
        until_ready(round, || async {
            let availability = provisioner
                .retire(&spec, &placement, false)
                .await
                .expect(round);
            (availability, placement.clone())
        })
        .await;
    }
    placement
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_provisioner_passes_the_suite() {
    let env = TestEnv::start(1).await;
    let (admin, tls) = silo_tls::postgres::parse_dsn(&env.fleet_dsn(0)).unwrap();
    let provisioner =
        PostgresProvisioner::new(vec![FleetServer::new("pg0".into(), admin, tls).unwrap()])
            .unwrap();
    provisioner_suite(&provisioner, "suite-pg", "standard").await;
    let admin = env.admin_client(0, "postgres").await;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 's\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "retire dropped the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_provisioner_passes_the_suite() {
    let env = TestEnv::start(1).await;
    let moto = Moto::start().await;
    let config = env.rds_config(
        &moto.endpoint_url(),
        RdsTier {
            managed_password: true,
        },
        &[],
    );
    let tiers = Tiers::load(config.tiers_file.as_ref()).unwrap();
    let cipher = CredentialCipher::from_base64(&config.credentials_key).unwrap();
    let provisioner = RdsProvisioner::from_args(&config.rds, &tiers, cipher)
        .await
        .unwrap();
    let placement = provisioner_suite(&provisioner, "suite-rds", "enterprise").await;
    assert_eq!(placement.server, "silo-suite-rds");
    let rds = rds_client(&moto.endpoint_url()).await;
    let described = rds
        .describe_db_instances()
        .db_instance_identifier("silo-suite-rds")
        .send()
        .await;
    match described {
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_db_instance_not_found_fault()) => {}
        other => panic!("retire deleted the instance; DescribeDBInstances gave {other:?}"),
    }
}
