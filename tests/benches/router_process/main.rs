//! The router against PostgreSQL straight and against PgBouncer, every party its own
//! process: one PostgreSQL server (the harness's), the release `silo-control-plane` and
//! `silo-router`, PgBouncer 1.18 in transaction mode, and C load generators, `pgbench`
//! for PostgreSQL and PgBouncer, `h2load` for the router's gRPC. One tenant, onboarded
//! through the control plane's API, in a tier with 10 connections and no rate or
//! concurrency limit; PgBouncer's pool has 10 connections too.
//!
//! Three workloads at 1, 16 and 64 clients: a point SELECT by primary key (`Query`), a
//! 1,000-row SELECT (`QueryStream`) and 10 INSERTs in one transaction (`Batch`). For each:
//! QPS, mean and p99 latency, CPU time per call of the proxy, PostgreSQL and the load
//! generator, and the router's ratios to PgBouncer and to PostgreSQL straight. Every
//! router call is checked against the router's own metrics: a run fails unless all of
//! them ended with OK.
//!
//! Run with `scripts/bench-router.sh` (installs pgbouncer and h2load), or
//! `cargo bench -p silo-tests --bench router_process` when they are installed.
//! `SILO_BENCH_SECONDS` sets the measuring window of each run (default 4, after 1 s of
//! warm-up); `SILO_BENCH_WORKLOADS` (`point,stream,batch`) and `SILO_BENCH_CLIENTS`
//! (`1,16,64`) pick a part of it, e.g. to profile one run.
//!
//! With the point SELECT, a fourth path, `grpc-floor`: h2load calling the router's
//! `grpc.health.v1.Health/Check`, which touches no database and no token. Its CPU per
//! call is what the router's HTTP/2 + gRPC stack and h2load cost for a call that does
//! nothing, the floor under any routed call on this machine.

mod cpu;
mod load;
mod outcomes;
mod pgbouncer;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use prost::Message;
use silo_proto::controlplane::v1::{self as pb, control_plane_client::ControlPlaneClient};
use silo_proto::router::v1::{self as rpb, router_client::RouterClient};
use silo_tests::processes::{Process, free_port, release_binaries, spawn, wait_serving};
use silo_tests::router::{ROUTER_AUDIENCE, call, int, statement, tenant_token};
use silo_tests::{ISSUER, TestEnv, fixture, token, with_token};
use tonic::transport::Channel;

use crate::cpu::Probe;
use crate::load::{GrpcCall, H2load, Measured, PgTarget, Pgbench, Run};
use crate::outcomes::Calls;
use crate::pgbouncer::PgBouncer;

const TENANT: &str = "bench";
const TIER: &str = "bench";
const ROWS: i64 = 10_000;
const CLIENTS: [usize; 3] = [1, 16, 64];
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// The id every h2load request asks for (h2load sends one fixed body).
const FIXED_ID: i64 = 4242;
const POINT_SELECT: &str = "SELECT id, body FROM items WHERE id = $1";
const STREAM_SELECT: &str = "SELECT id, body FROM items WHERE id <= 1000";
const ROUTER_SERVICE: &str = "/silo.router.v1.Router";

#[tokio::main]
async fn main() -> ExitCode {
    // Dropping the bench on a signal kills its processes and removes its files.
    let outcome = tokio::select! {
        outcome = bench() => outcome,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("router_process: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// One workload: the same SQL as a pgbench script and as one gRPC request.
struct Workload {
    title: String,
    /// The pgbench custom script.
    script: PathBuf,
    /// `/silo.router.v1.Router/<Method>`.
    method: String,
    /// The gRPC request body h2load sends.
    body: PathBuf,
    /// Bytes of DATA of one successful response (frame headers included).
    response_bytes: u64,
    /// Empties the ledger before each run (the Batch workload).
    truncate_ledger: bool,
    /// `point`, `stream` or `batch`, for `SILO_BENCH_WORKLOADS`.
    name: &'static str,
}

/// A comma-separated list from the environment variable `name`, or `default`.
fn list_from_env<T: std::str::FromStr>(name: &str, default: Vec<T>) -> anyhow::Result<Vec<T>> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .split(',')
            .map(|item| {
                item.trim()
                    .parse()
                    .map_err(|_| anyhow!("{name}: cannot read {item:?}"))
            })
            .collect(),
        _ => Ok(default),
    }
}

/// The router's process and addresses.
struct Router {
    process: Process,
    address: SocketAddr,
    metrics: SocketAddr,
}

async fn bench() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("SILO_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let chosen: Vec<String> = list_from_env(
        "SILO_BENCH_WORKLOADS",
        ["point", "stream", "batch"].map(String::from).to_vec(),
    )?;
    let client_counts: Vec<usize> = list_from_env("SILO_BENCH_CLIENTS", CLIENTS.to_vec())?;
    machine_header();
    let scratch = tempfile::tempdir()?;
    let pgbench = Pgbench::find(scratch.path())?;
    let h2load = H2load::find(scratch.path())?;
    let bin = release_binaries();
    let env = TestEnv::start(1).await;
    // Every server of the bench is up: the template cluster it built (in /dev/shm) goes.
    silo_pg_server::remove_template_built_here();
    let server = &env.servers[0];
    let postmaster = postmaster_pid(server.data_dir())?;

    // The control plane, as its own process, with a tier of 10 connections and no limits.
    let tiers = scratch.path().join("tiers.toml");
    std::fs::write(
        &tiers,
        format!(
            "default_tier = \"{TIER}\"\n[tiers.{TIER}]\nprovisioner = \"postgres\"\n\
             max_connections = {}\nrate_per_second = 0\nmax_concurrent_calls = 0\n",
            pgbouncer::POOL_SIZE
        ),
    )?;
    let cp_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let mut args: Vec<String> = env
        .args(&[])
        .into_iter()
        .filter(|arg| !arg.starts_with("--listen=") && !arg.starts_with("--metrics-listen="))
        .collect();
    args.push(format!("--listen={cp_address}"));
    args.push(format!("--metrics-listen=127.0.0.1:{}", free_port()));
    args.push(format!("--tiers-file={}", tiers.display()));
    let _control_plane = spawn(
        &bin.join("silo-control-plane"),
        &args,
        &scratch.path().join("control-plane.log"),
    );
    wait_serving(cp_address, Duration::from_secs(30)).await;
    let tenant = onboard(cp_address).await?;

    let mut router = start_router(&bin, cp_address, scratch.path(), "router", &[]).await?;
    // The same router with usage metering off, for metering's cost (point SELECT).
    let mut unmetered = start_router(
        &bin,
        cp_address,
        scratch.path(),
        "router-unmetered",
        &["--usage-flush-secs=0"],
    )
    .await?;
    let mut client = RouterClient::connect(format!("http://{}", router.address)).await?;
    for sql in [
        "CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL)",
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 10000) g",
        "CREATE TABLE ledger (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         item_id bigint NOT NULL, note text NOT NULL)",
        "ANALYZE items",
    ] {
        client
            .execute(tenant_call(rpb::ExecuteRequest {
                statement: statement(sql, vec![]),
            }))
            .await
            .with_context(|| format!("through the router: {sql}"))?;
    }
    let admin = env.admin_client(0, &tenant.database).await;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM items", &[])
        .await?
        .get(0);
    ensure!(rows == ROWS, "items has {rows} rows");

    let bouncer = PgBouncer::start(server).await?;
    let workloads = workloads(&mut client, scratch.path()).await?;
    let tick = cpu::clock_tick();
    println!(
        "tenant {TENANT}: database {} on PostgreSQL {}:{}; tier: {} connections, no rate or \
         concurrency limit; PgBouncer 1.18 transaction mode, pool {}",
        tenant.database,
        server.host(),
        server.port(),
        pgbouncer::POOL_SIZE,
        pgbouncer::POOL_SIZE,
    );
    println!(
        "each run: 1 s warm-up, then {seconds} s measured; pgbench as {} (direct: -M prepared, \
         PgBouncer: -M extended), h2load -m 1 with one fixed request body\n",
        server.superuser()
    );
    println!("{}\n", report::LEGEND);

    let floor = write_health_check(scratch.path())?;
    for workload in workloads
        .iter()
        .filter(|w| chosen.iter().any(|name| name == w.name))
    {
        println!("{}", workload.title);
        report::header();
        for &clients in &client_counts {
            let run = Run {
                clients,
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(seconds),
            };
            let pgbench_run = |port, mode, proxy| {
                let target = PgTarget {
                    host: server.host(),
                    port,
                    user: server.superuser(),
                    database: &tenant.database,
                };
                let probe = Probe {
                    postmaster,
                    proxy,
                    client: 0,
                };
                let admin = &admin;
                let pgbench = &pgbench;
                async move {
                    if workload.truncate_ledger {
                        admin.batch_execute("TRUNCATE ledger").await?;
                    }
                    pgbench
                        .run(&target, mode, &workload.script, &run, probe, tick)
                        .await
                }
            };
            let direct = pgbench_run(server.port(), "prepared", None)
                .await
                .context("pgbench straight to PostgreSQL")?;
            report::line(clients, "direct", &direct);
            let bounced = pgbench_run(bouncer.port, "extended", Some(bouncer.pid()))
                .await
                .context("pgbench through PgBouncer")?;
            report::line(clients, "pgbouncer", &bounced);
            if workload.truncate_ledger {
                admin.batch_execute("TRUNCATE ledger").await?;
            }
            let through_router = routed(&h2load, &mut router, workload, &run, postmaster, tick)
                .await
                .with_context(|| format!("h2load to the router, {clients} clients"))?;
            report::line(clients, "router", &through_router);
            if workload.name == "point" {
                // Metering's cost, in the order metered, unmetered, unmetered, metered, so
                // that neither side always runs first (one ratio line per pair).
                let mut plain = Vec::new();
                for _ in 0..2 {
                    let measured =
                        routed(&h2load, &mut unmetered, workload, &run, postmaster, tick)
                            .await
                            .with_context(|| {
                                format!("h2load to the router without metering, {clients} clients")
                            })?;
                    report::line(clients, "unmetered", &measured);
                    plain.push(measured);
                }
                let again = routed(&h2load, &mut router, workload, &run, postmaster, tick)
                    .await
                    .with_context(|| format!("h2load to the router, {clients} clients"))?;
                report::line(clients, "router", &again);
                report::ratios(&through_router, &plain[0], "unmetered");
                report::ratios(&again, &plain[1], "unmetered");
                let floor = routed(&h2load, &mut router, &floor, &run, postmaster, tick)
                    .await
                    .with_context(|| {
                        format!("h2load to the router's health check, {clients} clients")
                    })?;
                report::line(clients, "grpc-floor", &floor);
            }
            report::ratios(&through_router, &bounced, "pgbouncer");
            report::ratios(&through_router, &direct, "direct");
        }
        println!();
    }
    println!("every router call ended with OK (the router's own count by gRPC code)");
    Ok(())
}

/// nproc and the load average now, and what else is busy.
fn machine_header() {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "machine: nproc {nproc}, load average at start {} (1, 5, 15 min)",
        load.join(" ")
    );
}

/// The postmaster's pid, the first line of `postmaster.pid`.
fn postmaster_pid(data_dir: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .context("postmaster.pid")
}

/// Creates the tenant through the control plane's API, waits until it is ACTIVE, and
/// returns it as GetTenant shows it (its database's name).
async fn onboard(cp_address: SocketAddr) -> anyhow::Result<pb::Tenant> {
    let channel = Channel::from_shared(format!("http://{cp_address}"))?
        .connect()
        .await?;
    let mut cp = ControlPlaneClient::new(channel);
    let admin = token("admin");
    let operation = cp
        .create_tenant(with_token(
            pb::CreateTenantRequest {
                tenant_id: TENANT.into(),
                display_name: "Router bench".into(),
                tier: TIER.into(),
                request_id: "router-bench".into(),
            },
            &admin,
        ))
        .await?
        .into_inner();
    loop {
        let op = cp
            .get_operation(with_token(
                pb::GetOperationRequest {
                    operation_id: operation.operation_id.clone(),
                },
                &admin,
            ))
            .await?
            .into_inner();
        if op.done {
            ensure!(
                op.status() == pb::OperationStatus::Succeeded,
                "onboarding failed: {}",
                op.error
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(cp
        .get_tenant(with_token(
            pb::GetTenantRequest {
                tenant_id: TENANT.into(),
            },
            &admin,
        ))
        .await?
        .into_inner())
}

async fn start_router(
    bin: &Path,
    cp_address: SocketAddr,
    logs: &Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<Router> {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let process = spawn(
        &bin.join("silo-router"),
        &[
            format!("--listen={address}"),
            format!("--metrics-listen={metrics}"),
            format!("--control-plane-url=http://{cp_address}"),
            format!("--control-plane-token={}", token("router")),
            "--jwt-algorithms=RS256".into(),
            format!(
                "--jwt-public-key-file={}",
                fixture("rsa_public.pem").display()
            ),
            format!("--jwt-issuer={ISSUER}"),
            format!("--jwt-audience={ROUTER_AUDIENCE}"),
        ]
        .into_iter()
        .chain(extra.iter().map(|flag| (*flag).to_owned()))
        .collect::<Vec<_>>(),
        &logs.join(format!("{name}.log")),
    );
    wait_serving(address, Duration::from_secs(60)).await;
    Ok(Router {
        process,
        address,
        metrics,
    })
}

/// `message` as the bench's tenant.
fn tenant_call<T>(message: T) -> tonic::Request<T> {
    call(message, &tenant_token(TENANT), None)
}

/// A gRPC message as it travels: uncompressed flag, length (4 bytes, big-endian), bytes.
fn grpc_frame(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame
}

/// The three workloads, each called once through the router first: it must work, and its
/// response's size is what every response of the run must have.
async fn workloads(
    client: &mut RouterClient<Channel>,
    dir: &Path,
) -> anyhow::Result<Vec<Workload>> {
    let framed = |len: usize| len as u64 + 5;
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        Ok(path)
    };

    let query = rpb::QueryRequest {
        statement: statement(POINT_SELECT, vec![int(FIXED_ID)]),
        max_rows: 0,
    };
    let answer = client.query(tenant_call(query.clone())).await?.into_inner();
    ensure!(answer.rows.len() == 1, "the point SELECT returns one row");
    let point = Workload {
        title: format!(
            "point SELECT by primary key: {POINT_SELECT} (pgbench: random id in 1..{ROWS}; \
             h2load: Router/Query, id {FIXED_ID})"
        ),
        script: write(
            "point.sql",
            b"\\set id random(1, 10000)\nSELECT id, body FROM items WHERE id = :id;\n",
        )?,
        method: format!("{ROUTER_SERVICE}/Query"),
        body: write("point.bin", &grpc_frame(&query))?,
        response_bytes: framed(answer.encoded_len()),
        truncate_ledger: false,
        name: "point",
    };

    let stream = rpb::QueryStreamRequest {
        statement: statement(STREAM_SELECT, vec![]),
        batch_size: 0,
    };
    let mut batches = client
        .query_stream(tenant_call(stream.clone()))
        .await?
        .into_inner();
    let (mut rows, mut stream_bytes) = (0, 0);
    while let Some(batch) = batches.message().await? {
        rows += batch.rows.len();
        stream_bytes += framed(batch.encoded_len());
    }
    ensure!(rows == 1000, "the stream returns 1,000 rows, not {rows}");
    let stream = Workload {
        title: format!(
            "1,000-row stream: {STREAM_SELECT} (h2load: Router/QueryStream, the router's \
             default batches of 500 rows)"
        ),
        script: write("stream.sql", format!("{STREAM_SELECT};\n").as_bytes())?,
        method: format!("{ROUTER_SERVICE}/QueryStream"),
        body: write("stream.bin", &grpc_frame(&stream))?,
        response_bytes: stream_bytes,
        truncate_ledger: false,
        name: "stream",
    };

    let inserts: Vec<String> = (1..=10)
        .map(|item| format!("INSERT INTO ledger (item_id, note) VALUES ({item}, 'bench')"))
        .collect();
    let batch = rpb::BatchRequest {
        statements: inserts
            .iter()
            .map(|sql| rpb::Statement {
                sql: sql.clone(),
                params: vec![],
            })
            .collect(),
    };
    let answer = client.batch(tenant_call(batch.clone())).await?.into_inner();
    ensure!(
        answer.rows_affected == vec![1; 10],
        "the batch inserts 10 rows"
    );
    let mut script = String::from("BEGIN;\n");
    for sql in &inserts {
        script.push_str(sql);
        script.push_str(";\n");
    }
    script.push_str("COMMIT;\n");
    let batch = Workload {
        title: "10-statement batch: 10 INSERTs into `ledger` in one transaction (pgbench: \
                BEGIN, the same 10, COMMIT; h2load: Router/Batch)"
            .into(),
        script: write("batch.sql", script.as_bytes())?,
        method: format!("{ROUTER_SERVICE}/Batch"),
        body: write("batch.bin", &grpc_frame(&batch))?,
        response_bytes: framed(answer.encoded_len()),
        truncate_ledger: true,
        name: "batch",
    };
    Ok(vec![point, stream, batch])
}

/// The `grpc-floor` path: `grpc.health.v1.Health/Check` for the whole server (an empty
/// request), answered SERVING (a 2-byte message) without a database or a token.
fn write_health_check(dir: &Path) -> anyhow::Result<Workload> {
    let body = dir.join("health.bin");
    std::fs::write(&body, [0u8, 0, 0, 0, 0])?;
    Ok(Workload {
        title: String::new(),
        script: PathBuf::new(),
        method: HEALTH_CHECK.into(),
        body,
        response_bytes: 2 + 5,
        truncate_ledger: false,
        name: "grpc-floor",
    })
}

/// One h2load run against the router, checked: every call OK by the router's count, and
/// as many response bytes as the completed calls' good responses hold.
async fn routed(
    h2load: &H2load,
    router: &mut Router,
    workload: &Workload,
    run: &Run,
    postmaster: u32,
    tick: Duration,
) -> anyhow::Result<Measured> {
    let url = format!("http://{}{}", router.address, workload.method);
    let token = tenant_token(TENANT);
    let call = GrpcCall {
        url: &url,
        body: &workload.body,
        token: &token,
    };
    let probe = Probe {
        postmaster,
        proxy: Some(router.process.pid()),
        client: 0,
    };
    let before = Calls::scrape(router.metrics).await;
    let (measured, totals) = h2load.run(&call, run, probe, tick).await?;
    let after = Calls::scrape(router.metrics).await;
    ensure!(router.process.is_running(), "the router exited");
    outcomes::check(&workload.method, &before, &after, &totals)?;
    // Every good response has the same bytes; calls cut off at the end add part of one.
    let low = totals.succeeded * workload.response_bytes;
    let high = (totals.succeeded + totals.in_flight) * workload.response_bytes;
    ensure!(
        (low..=high).contains(&totals.data_bytes),
        "{}: {} bytes of responses for {} calls of {} bytes each ({} in flight at the end)",
        workload.method,
        totals.data_bytes,
        totals.succeeded,
        workload.response_bytes,
        totals.in_flight
    );
    Ok(measured)
}
