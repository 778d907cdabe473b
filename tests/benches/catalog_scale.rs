//! A large, old catalog, as a user with a big fleet has one: N ACTIVE tenants (100,000 by
//! default, `SILO_BENCH_TENANTS`) and 5 events each, written straight into a test catalog,
//! plus one real tenant to call. Then the real binaries (`silo-control-plane`,
//! `silo-router`, built here in release mode) are started against it as separate processes
//! and the bench prints: the router's time to SERVING and the events it received at start,
//! its log lines, both processes' RSS, ListTenants (every page) and GetTenant latency, a
//! dry-run fleet migration over every tenant, and a retention pass over the whole history.

use std::time::{Duration, Instant};

use silo_control_plane::catalog::Catalog;
use silo_control_plane::metrics::ControlPlaneMetrics;
use silo_control_plane::retention::{Retention, trim};
use silo_proto::controlplane::v1::{self as pb, control_plane_client::ControlPlaneClient};
use silo_proto::router::v1 as rpb;
use silo_tests::processes::{free_port, release_binaries, spawn, wait_serving};
use silo_tests::router::{ROUTER_AUDIENCE, call, statement, tenant_token};
use silo_tests::{ISSUER, TestEnv, fixture, http_get, token, with_token};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    let tenants: i64 = std::env::var("SILO_BENCH_TENANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let bin = release_binaries();
    let logs = tempfile::tempdir().expect("log dir");
    let env = TestEnv::start(1).await;
    // Every server of the bench is up: the template cluster it built (in /dev/shm) goes.
    silo_pg_server::remove_template_built_here();

    // The catalog's schema, then the history written straight into it.
    let catalog = Catalog::open(
        env.servers[0]
            .dsn(&env.catalog_database)
            .parse()
            .expect("dsn"),
        &silo_tls::postgres::PgTls::disabled(),
        4,
        ControlPlaneMetrics::default(),
        CancellationToken::new(),
    )
    .await
    .expect("catalog");
    let admin = env.admin_client(0, &env.catalog_database).await;
    let started = Instant::now();
    admin
        .execute(
            "INSERT INTO tenants (tenant_id, display_name, tier, state, provisioner,
                 placement_server, database_name, role_name, request_id, schema_version)
             SELECT 'sim-' || g, 'Simulated ' || g, 'standard', 'ACTIVE', 'postgres', 'pg0',
                 't_sim_' || g, 't_sim_' || g, 'bench', 1
             FROM generate_series(1, $1::bigint) g",
            &[&tenants],
        )
        .await
        .expect("tenants");
    admin
        .execute(
            "INSERT INTO tenant_events (sequence, tenant_id, kind, state, occurred_at)
             SELECT g, 'sim-' || ((g - 1) / 5 + 1), 'state_changed', 'ACTIVE',
                 now() - interval '10 days'
             FROM generate_series(1, $1::bigint * 5) g",
            &[&tenants],
        )
        .await
        .expect("events");
    admin.batch_execute("ANALYZE").await.expect("analyze");
    println!(
        "catalog: {tenants} tenants and {} events written in {}",
        tenants * 5,
        ms(started.elapsed())
    );

    // The control plane, as its own process.
    let cp_port = free_port();
    let cp_metrics = free_port();
    let mut args: Vec<String> = env
        .args(&[])
        .into_iter()
        .filter(|arg| !arg.starts_with("--listen=") && !arg.starts_with("--metrics-listen="))
        .collect();
    args.push(format!("--listen=127.0.0.1:{cp_port}"));
    args.push(format!("--metrics-listen=127.0.0.1:{cp_metrics}"));
    // The bench times a retention pass itself.
    args.push("--retention-interval-secs=0".into());
    let control_plane = spawn(
        &bin.join("silo-control-plane"),
        &args,
        &logs.path().join("cp.log"),
    );
    let cp_address: std::net::SocketAddr = format!("127.0.0.1:{cp_port}").parse().expect("addr");
    wait_serving(cp_address, Duration::from_secs(30)).await;
    let channel = Channel::from_shared(format!("http://{cp_address}"))
        .expect("uri")
        .connect()
        .await
        .expect("control plane");
    let mut cp = ControlPlaneClient::new(channel);
    let admin_token = token("admin");

    // One real tenant to call.
    let operation = cp
        .create_tenant(with_token(
            pb::CreateTenantRequest {
                tenant_id: "real-0".into(),
                display_name: "Real".into(),
                request_id: "bench".into(),
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .expect("create")
        .into_inner();
    loop {
        let op = cp
            .get_operation(with_token(
                pb::GetOperationRequest {
                    operation_id: operation.operation_id.clone(),
                },
                &admin_token,
            ))
            .await
            .expect("operation")
            .into_inner();
        if op.done {
            assert_eq!(op.status(), pb::OperationStatus::Succeeded, "{}", op.error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The router, as its own process.
    let router_port = free_port();
    let router_metrics = free_port();
    let router_log = logs.path().join("router.log");
    let started = Instant::now();
    let router = spawn(
        &bin.join("silo-router"),
        &[
            format!("--listen=127.0.0.1:{router_port}"),
            format!("--metrics-listen=127.0.0.1:{router_metrics}"),
            format!("--control-plane-url=http://{cp_address}"),
            format!("--control-plane-token={}", token("router")),
            "--jwt-algorithms=RS256".into(),
            format!(
                "--jwt-public-key-file={}",
                fixture("rsa_public.pem").display()
            ),
            format!("--jwt-issuer={ISSUER}"),
            format!("--jwt-audience={ROUTER_AUDIENCE}"),
        ],
        &router_log,
    );
    let router_address: std::net::SocketAddr =
        format!("127.0.0.1:{router_port}").parse().expect("addr");
    wait_serving(router_address, Duration::from_secs(60)).await;
    let to_serving = started.elapsed();
    let mut client = rpb::router_client::RouterClient::connect(format!("http://{router_address}"))
        .await
        .expect("router");
    let request = rpb::QueryRequest {
        statement: statement("SELECT 1", vec![]),
        max_rows: 0,
    };
    client
        .query(call(request, &tenant_token("real-0"), None))
        .await
        .expect("the real tenant is served");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics_address: std::net::SocketAddr =
        format!("127.0.0.1:{router_metrics}").parse().expect("addr");
    let exposition = http_get(metrics_address, "/metrics").await;
    let events_received = exposition
        .lines()
        .find_map(|line| line.strip_prefix("silo_router_tenant_events_total "))
        .unwrap_or("?")
        .to_owned();
    let log_lines = std::fs::read_to_string(&router_log)
        .map(|log| log.lines().count())
        .unwrap_or(0);
    println!(
        "router: SERVING after {}; {events_received} tenant events received at start; {log_lines} log lines",
        ms(to_serving)
    );

    let rss_at_start = (control_plane.rss_mib(), router.rss_mib());
    // Reads.
    let started = Instant::now();
    let (mut pages, mut listed, mut page_token) = (0, 0, String::new());
    loop {
        let page = cp
            .list_tenants(with_token(
                pb::ListTenantsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &admin_token,
            ))
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        listed += page.tenants.len();
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    println!(
        "ListTenants: {listed} tenants in {pages} pages of 1,000 in {}",
        ms(started.elapsed())
    );
    let mut gets = Vec::new();
    for i in 0..1000 {
        let started = Instant::now();
        cp.get_tenant(with_token(
            pb::GetTenantRequest {
                tenant_id: format!("sim-{}", 1 + (i * 97) % tenants),
            },
            &admin_token,
        ))
        .await
        .expect("get");
        gets.push(started.elapsed());
    }
    gets.sort();
    println!("GetTenant: p50 {} p99 {}", ms(gets[499]), ms(gets[989]));
    let rss_after_reads = control_plane.rss_mib();

    // A dry-run fleet migration plans every tenant.
    let started = Instant::now();
    let planned = cp
        .start_migration(with_token(
            pb::StartMigrationRequest {
                dry_run: true,
                concurrency: 8,
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .expect("dry run")
        .into_inner();
    println!(
        "dry-run fleet migration: planned in {} (done: {})",
        ms(started.elapsed()),
        planned.done
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "RSS: control plane {:.1} MiB at start, {rss_after_reads:.1} after the reads, {:.1} after \
         the dry run; router {:.1} MiB at start, {:.1} at the end",
        rss_at_start.0,
        control_plane.rss_mib(),
        rss_at_start.1,
        router.rss_mib()
    );

    // Retention over the whole history (every simulated event is 10 days old).
    let started = Instant::now();
    let trimmed = trim(
        &catalog,
        &Retention {
            events: Duration::from_secs(3 * 86_400),
            operations: Duration::from_secs(30 * 86_400),
            usage: Duration::from_secs(400 * 86_400),
            every: Duration::from_secs(600),
        },
    )
    .await
    .expect("retention");
    println!(
        "retention pass: {} events and {} operations deleted in {}",
        trimmed.events,
        trimmed.operations,
        ms(started.elapsed())
    );
    drop(router);
    drop(control_plane);
}
