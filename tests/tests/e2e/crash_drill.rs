//! The onboarding crash drill: tenants requested in rounds, the control plane killed with
//! SIGKILL at a random moment of each round (a real process, restarted at once on the same
//! port), two replicas on one catalog in some rounds. Afterwards every tenant is ACTIVE
//! with exactly one database and one role, no orphan, no operation left undone, and the
//! event log has no gap. Seeded: `SILO_DRILL_SEED` replays a failure; `SILO_DRILL_ROUNDS`
//! and `SILO_DRILL_TENANTS` make it bigger (the suite runs a short drill).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::{Rng, SeedableRng, rngs::StdRng};
use silo_proto::controlplane::v1::{self as pb, control_plane_client::ControlPlaneClient};
use silo_tests::{TestEnv, token, with_token};
use tonic::transport::Channel;

/// A control plane process; killed with SIGKILL when dropped.
struct Process {
    child: Child,
    address: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(env: &TestEnv, port: u16) -> Self {
        let mut args: Vec<String> = env
            .args(&[])
            .into_iter()
            .filter(|arg| !arg.starts_with("--listen=") && !arg.starts_with("--metrics-listen="))
            .collect();
        args.push(format!("--listen=127.0.0.1:{port}"));
        args.push("--metrics-listen=127.0.0.1:0".into());
        let child = Command::new(env!("CARGO_BIN_EXE_control-plane-under-test"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("control plane starts");
        Self {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    async fn client(&self) -> ControlPlaneClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.address))
                .expect("uri")
                .connect()
                .await
            {
                return ControlPlaneClient::new(channel);
            }
            assert!(Instant::now() < deadline, "the control plane listens");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn state_of(client: &mut ControlPlaneClient<Channel>, tenant: &str) -> Option<pb::Tenant> {
    client
        .get_tenant(with_token(
            pb::GetTenantRequest {
                tenant_id: tenant.into(),
            },
            &token("admin"),
        ))
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_survives_sigkill_at_random_moments() {
    let seed = setting("SILO_DRILL_SEED", 20_261_130);
    let rounds = setting("SILO_DRILL_ROUNDS", 5);
    let per_round = setting("SILO_DRILL_TENANTS", 20);
    println!("drill: seed {seed}, {rounds} rounds of {per_round} tenants");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start(1).await;
    let port = free_port();
    let mut primary = Process::start(&env, port);
    let mut client = primary.client().await;
    let mut latencies = Vec::new();
    let mut tenants = Vec::new();

    for round in 0..rounds {
        let replica = rng
            .random_bool(0.4)
            .then(|| Process::start(&env, free_port()));
        let names: Vec<String> = (0..per_round)
            .map(|i| format!("drill-{round}-{i}"))
            .collect();
        let requested = Instant::now();
        let creates = names.iter().map(|name| {
            let mut client = client.clone();
            let request = pb::CreateTenantRequest {
                tenant_id: name.clone(),
                display_name: name.clone(),
                tier: String::new(),
                request_id: format!("drill-{seed}-{name}"),
            };
            async move {
                client
                    .create_tenant(with_token(request, &token("admin")))
                    .await
                    .expect("create accepted")
            }
        });
        join_all(creates).await;
        let kill_after = Duration::from_millis(rng.random_range(20..2000));
        tokio::time::sleep(kill_after).await;
        // SIGKILL, and a new process on the same port at once.
        drop(primary);
        primary = Process::start(&env, port);
        client = primary.client().await;

        let mut pending: Vec<&String> = names.iter().collect();
        let deadline = Instant::now() + Duration::from_secs(90);
        while !pending.is_empty() {
            let mut still = Vec::new();
            for name in pending {
                match state_of(&mut client, name).await {
                    Some(tenant) if tenant.state() == pb::TenantState::Active => {
                        latencies.push(requested.elapsed());
                    }
                    Some(tenant) if tenant.state() == pb::TenantState::Failed => panic!(
                        "seed {seed}, round {round}: {name} FAILED: {}",
                        tenant.failure_reason
                    ),
                    _ => still.push(name),
                }
            }
            pending = still;
            assert!(
                Instant::now() < deadline,
                "seed {seed}, round {round}: still onboarding: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        println!(
            "round {round}: killed after {kill_after:?}{}; all ACTIVE after {:?}",
            if replica.is_some() {
                ", a second replica running"
            } else {
                ""
            },
            requested.elapsed()
        );
        drop(replica);
        tenants.extend(names);
    }

    // Exactly one database and one role per tenant, nothing else of silo's on the server.
    let catalog = env.admin_client(0, &env.catalog_database).await;
    let server = env.admin_client(0, "postgres").await;
    let rows = catalog
        .query(
            "SELECT tenant_id, database_name, role_name, state FROM tenants ORDER BY tenant_id",
            &[],
        )
        .await
        .expect("tenants");
    assert_eq!(rows.len(), tenants.len(), "one catalog row per tenant");
    let mut databases: Vec<String> = Vec::new();
    let mut roles: Vec<String> = Vec::new();
    for row in &rows {
        let (tenant, state): (String, String) = (row.get(0), row.get(3));
        assert_eq!(state, "ACTIVE", "{tenant}");
        databases.push(row.get(1));
        roles.push(row.get(2));
    }
    let on_server: Vec<String> = server
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 's\\_%' OR datname LIKE 't\\_%'",
            &[],
        )
        .await
        .expect("databases")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut expected = databases.clone();
    expected.sort();
    let mut found = on_server.clone();
    found.sort();
    assert_eq!(found, expected, "one database per tenant, no orphan");
    let role_rows: Vec<String> = server
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 's\\_%' OR rolname LIKE 't\\_%'",
            &[],
        )
        .await
        .expect("roles")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut expected = roles.clone();
    expected.sort();
    let mut found = role_rows;
    found.sort();
    assert_eq!(found, expected, "one role per tenant, no orphan");
    let undone: i64 = catalog
        .query_one(
            "SELECT count(*) FROM operations WHERE status <> 'succeeded'",
            &[],
        )
        .await
        .expect("operations")
        .get(0);
    assert_eq!(undone, 0, "no operation pending or failed");
    let gaps: i64 = catalog
        .query_one(
            "SELECT (max(sequence) - min(sequence) + 1) - count(*) FROM tenant_events",
            &[],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(gaps, 0, "the event sequence has no gap");

    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "request to ACTIVE over {} tenants: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies[latencies.len() - 1]
    );
    // The acceptance bound is 5 s for the full drill on a quiet machine
    // (SILO_DRILL_P99_SECS=5); the suite's short drill shares the machine with every other
    // test, so it allows more. A resumed step that failed as before (23505) never gets here.
    let bound = Duration::from_secs(setting("SILO_DRILL_P99_SECS", 10));
    assert!(p(0.99) <= bound, "p99 {:?} over {bound:?}", p(0.99));
}

/// The move drill: one tenant moved back and forth between two servers, by replication and
/// by copy in turn, the control plane (a real process) killed with SIGKILL at a random
/// moment of each move and restarted at once. Each move then finishes with the tenant
/// ACTIVE on its target, one database of its name on the two servers, no replication slot
/// or subscription left, and every row written before the moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_survive_sigkill_at_random_moments() {
    let seed = setting("SILO_DRILL_SEED", 20_261_130);
    let rounds = setting("SILO_DRILL_MOVES", 4);
    println!("move drill: seed {seed}, {rounds} moves");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start(2).await;
    let port = free_port();
    let mut primary = Process::start(&env, port);
    let mut client = primary.client().await;
    client
        .create_tenant(with_token(
            pb::CreateTenantRequest {
                tenant_id: "mover".into(),
                display_name: "mover".into(),
                tier: String::new(),
                request_id: format!("move-drill-{seed}"),
            },
            &token("admin"),
        ))
        .await
        .expect("create accepted");
    let deadline = Instant::now() + Duration::from_secs(60);
    let tenant = loop {
        if let Some(tenant) = state_of(&mut client, "mover").await
            && tenant.state() == pb::TenantState::Active
        {
            break tenant;
        }
        assert!(Instant::now() < deadline, "mover onboarded");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let index = |server: &str| usize::from(server == "pg1");
    env.admin_client(index(&tenant.placement), &tenant.database)
        .await
        .batch_execute(
            "CREATE TABLE kept (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int);
             INSERT INTO kept (n) SELECT generate_series(1, 1000)",
        )
        .await
        .unwrap();

    for round in 0..rounds {
        let from = state_of(&mut client, "mover")
            .await
            .expect("mover")
            .placement;
        let to = if from == "pg0" { "pg1" } else { "pg0" };
        let method = if round % 2 == 0 {
            pb::MoveMethod::Replicate
        } else {
            pb::MoveMethod::Copy
        };
        let operation = client
            .move_tenant(with_token(
                pb::MoveTenantRequest {
                    tenant_id: "mover".into(),
                    target_server: to.into(),
                    method: method.into(),
                    request_id: format!("move-drill-{seed}-{round}"),
                    target_tier: String::new(),
                    rollback: false,
                },
                &token("admin"),
            ))
            .await
            .expect("move accepted")
            .into_inner();
        let kill_after = Duration::from_millis(rng.random_range(20..1500));
        tokio::time::sleep(kill_after).await;
        drop(primary);
        primary = Process::start(&env, port);
        client = primary.client().await;

        let deadline = Instant::now() + Duration::from_secs(90);
        let done = loop {
            let op = client
                .get_operation(with_token(
                    pb::GetOperationRequest {
                        operation_id: operation.operation_id.clone(),
                    },
                    &token("admin"),
                ))
                .await
                .expect("operation")
                .into_inner();
            if op.done {
                break op;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}, move {round}: not done: {op:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(
            done.status(),
            pb::OperationStatus::Succeeded,
            "seed {seed}, move {round} ({method:?}, killed after {kill_after:?}): {}",
            done.error
        );
        let tenant = state_of(&mut client, "mover").await.expect("mover");
        assert_eq!(
            (tenant.placement.as_str(), tenant.state()),
            (to, pb::TenantState::Active)
        );
        let mut databases = 0;
        for server in 0..2 {
            let admin = env.admin_client(server, "postgres").await;
            let count = |sql: &'static str| {
                let admin = &admin;
                let name = tenant.database.clone();
                async move {
                    let n: i64 = admin.query_one(sql, &[&name]).await.unwrap().get(0);
                    n
                }
            };
            databases += count("SELECT count(*) FROM pg_database WHERE datname = $1").await;
            let slots: i64 = admin
                .query_one("SELECT count(*) FROM pg_replication_slots", &[])
                .await
                .unwrap()
                .get(0);
            let subscriptions: i64 = admin
                .query_one("SELECT count(*) FROM pg_subscription", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                (slots, subscriptions),
                (0, 0),
                "move {round}, server {server}"
            );
        }
        assert_eq!(databases, 1, "move {round}: one live silo");
        let rows: i64 = env
            .admin_client(index(to), &tenant.database)
            .await
            .query_one("SELECT count(*) FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1000, "move {round}");
        println!("move {round} ({method:?}): killed after {kill_after:?}; done");
    }
}
