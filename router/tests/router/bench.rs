//! Router vs a direct bb8 pool of tokio-postgres connections: a point SELECT by primary key
//! on one tenant, side by side in one run, at 1 and 64 clients; then the same over TLS
//! (PostgreSQL with `ssl = on`, `verify-full`; the router's gRPC with a certificate), next
//! to plaintext.
//! Run with `cargo test --release -p silo-router --test router bench_point_select -- --ignored --nocapture`.
//!
//! Everything shares the machine: the load generator, the router and PostgreSQL. Each
//! router client has its own HTTP/2 connection (one per calling service instance), as
//! each direct client has its own pooled connection; one line also shows 64 clients
//! multiplexed over a single connection.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use silo_proto::router::v1::router_client::RouterClient;
use silo_router::pool::PoolConfig;
use silo_router::session::SESSION_RESET;
use silo_router::tenant::TierLimits;
use silo_tls::postgres::{PgConnector, PgTls};
use silo_tls::testing::TestCa;
use tokio_postgres::{Client, Statement};

use crate::harness::{Harness, authorized, execute, int, query};

const WARM_UP: Duration = Duration::from_millis(500);
const RUN: Duration = Duration::from_secs(3);
const SQL: &str = "SELECT id, body FROM items WHERE id = $1";
const ROWS: i64 = 10_000;
/// The name of the router's runtime threads, to tell its CPU time from the load
/// generator's (at most 15 characters: Linux truncates thread names).
const ROUTER_THREADS: &str = "silo-router";

struct Figures {
    qps: f64,
    p50: Duration,
    p99: Duration,
    cpu: Option<Cpu>,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.0} qps  p50 {:>7.1?}  p99 {:>7.1?}",
            self.qps, self.p50, self.p99
        )?;
        if let Some(cpu) = &self.cpu {
            write!(
                f,
                "  | {:>5.1?} {:>5.1?} {:>5.1?}",
                cpu.clients, cpu.router, cpu.postgres
            )?;
        }
        Ok(())
    }
}

/// CPU time: of the load generator (this test's threads), of the router (its runtime's
/// threads) and of PostgreSQL (all the server's processes).
#[derive(Clone, Copy)]
struct Cpu {
    clients: Duration,
    router: Duration,
    postgres: Duration,
}

impl Cpu {
    /// Used so far, from /proc (in 10 ms clock ticks); `None` where there is no /proc. A
    /// `proxy` process (PgBouncer) counts as the router.
    fn used(postmaster: u32, proxy: Option<u32>) -> Option<Self> {
        let tick = Duration::from_millis(10);
        let mut cpu = Self {
            clients: Duration::ZERO,
            router: Duration::ZERO,
            postgres: Duration::ZERO,
        };
        for thread in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let Some((name, ticks, _)) = stat(&thread.path().join("stat")) else {
                continue;
            };
            if name == ROUTER_THREADS {
                cpu.router += tick * ticks;
            } else {
                cpu.clients += tick * ticks;
            }
        }
        if let Some((_, ticks, _)) =
            proxy.and_then(|pid| stat(std::path::Path::new(&format!("/proc/{pid}/stat"))))
        {
            cpu.router += tick * ticks;
        }
        let (_, ticks, _) = stat(std::path::Path::new(&format!("/proc/{postmaster}/stat")))?;
        cpu.postgres += tick * ticks;
        for process in std::fs::read_dir("/proc").ok()?.flatten() {
            if let Some((_, ticks, parent)) = stat(&process.path().join("stat"))
                && parent == postmaster
            {
                cpu.postgres += tick * ticks;
            }
        }
        Some(cpu)
    }

    /// Per call, from `self` to `later`.
    fn per_call(self, later: Self, calls: u32) -> Self {
        Self {
            clients: (later.clients - self.clients) / calls,
            router: (later.router - self.router) / calls,
            postgres: (later.postgres - self.postgres) / calls,
        }
    }
}

/// Name, utime + stime in ticks and parent pid, from a `/proc/.../stat` file.
fn stat(path: &std::path::Path) -> Option<(String, u32, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (head, tail) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u32>().ok()? + fields.get(12)?.parse::<u32>().ok()?;
    Some((name, ticks, fields.get(1)?.parse().ok()?))
}

/// Runs `clients` loops of `call` for [`RUN`] after [`WARM_UP`] and measures every call,
/// and the CPU that the calls cost this process and PostgreSQL.
async fn measure<F, Fut>(postmaster: u32, proxy: Option<u32>, clients: usize, call: F) -> Figures
where
    F: Fn(usize, i64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let measuring_from = started + WARM_UP;
    let until = measuring_from + RUN;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(100_000);
                let mut id = c as i64;
                let mut cpu_from = None;
                loop {
                    id = id % ROWS + 1;
                    let t = Instant::now();
                    if t >= until {
                        return (latencies, cpu_from);
                    }
                    call(c, id).await;
                    if t >= measuring_from {
                        if c == 0 && cpu_from.is_none() {
                            cpu_from = Some(Cpu::used(postmaster, proxy));
                        }
                        latencies.push(t.elapsed());
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut cpu_from = None;
    for task in tasks {
        let (measured, from) = task.await.expect("client task");
        latencies.extend(measured);
        cpu_from = cpu_from.or(from);
    }
    let cpu_to = Cpu::used(postmaster, proxy);
    let calls = latencies.len() as u32;
    let cpu = match (cpu_from.flatten(), cpu_to) {
        (Some(from), Some(to)) if calls > 0 => Some(from.per_call(to, calls)),
        _ => None,
    };
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Figures {
        qps: latencies.len() as f64 / RUN.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        cpu,
    }
}

/// The postmaster's pid, from `postmaster.pid` in the data directory.
fn postmaster(harness: &Harness) -> u32 {
    let pid_file = harness.servers[0].data_dir().join("postmaster.pid");
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// A bb8 pool of tokio-postgres connections with the statement prepared once per
/// connection (what a service holding its own pool would do), and optionally the router's
/// session reset sent behind every query, to show what the reset costs by itself.
struct DirectManager {
    config: tokio_postgres::Config,
    connector: PgConnector,
}

struct DirectConnection {
    client: Client,
    statement: Statement,
}

impl bb8::ManageConnection for DirectManager {
    type Connection = DirectConnection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<DirectConnection, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.connector.clone()).await?;
        tokio::spawn(connection);
        let statement = client.prepare(SQL).await?;
        Ok(DirectConnection { client, statement })
    }

    async fn is_valid(&self, _: &mut DirectConnection) -> Result<(), tokio_postgres::Error> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut DirectConnection) -> bool {
        conn.client.is_closed()
    }
}

/// Calls over a bb8 pool straight to PostgreSQL, or through `bouncer`.
async fn direct(
    harness: &Harness,
    database: &str,
    clients: usize,
    reset: bool,
    bouncer: Option<&PgBouncer>,
    tls: &PgTls,
) -> Figures {
    let mut config = tokio_postgres::Config::new();
    config
        .host(harness.servers[0].host())
        .port(bouncer.map_or(harness.servers[0].port(), |b| b.port))
        .user(harness.servers[0].superuser())
        .dbname(database);
    tls.apply(&mut config);
    let connector = tls.connector().expect("connector");
    let pool = bb8::Pool::builder()
        .max_size(64)
        .build(DirectManager { config, connector })
        .await
        .expect("pool");
    let proxy = bouncer.and_then(|b| b.process.id());
    measure(postmaster(harness), proxy, clients, move |_, id| {
        let pool = pool.clone();
        async move {
            let conn = pool.get().await.expect("connection");
            let id = id as i32;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let select = conn.client.query_one(&conn.statement, &params);
            if reset {
                // Sent in the same write as the query, as the router does.
                let (row, reset) = futures::join!(select, conn.client.batch_execute(SESSION_RESET));
                row.expect("row");
                reset.expect("reset");
            } else {
                select.await.expect("row");
            }
        }
    })
    .await
}

/// `count` HTTP/2 connections to the router.
async fn channels(harness: &Harness, count: usize) -> Vec<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", harness.address))
        .expect("endpoint");
    connect_all(endpoint, count).await
}

async fn connect_all(
    endpoint: tonic::transport::Endpoint,
    count: usize,
) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(endpoint.connect().await.expect("connects"));
    }
    channels
}

/// Calls through the router: each client on its own connection, or all on one.
async fn routed(harness: &Harness, clients: usize, shared_connection: bool) -> Figures {
    let channels = channels(harness, if shared_connection { 1 } else { clients }).await;
    routed_over(harness, channels, "bench", clients).await
}

/// Calls as `tenant` over `channels`, client `c` on channel `c % channels.len()`.
async fn routed_over(
    harness: &Harness,
    channels: Vec<tonic::transport::Channel>,
    tenant: &str,
    clients: usize,
) -> Figures {
    let connected: Arc<Vec<_>> = Arc::new(channels.into_iter().map(RouterClient::new).collect());
    let token = Arc::new(harness.tenant_token(tenant));
    measure(postmaster(harness), None, clients, move |c, id| {
        let mut client = connected[c % connected.len()].clone();
        let token = token.clone();
        async move {
            let request = authorized(query(SQL, vec![int(id)]), &token, None);
            client.query(request).await.expect("row");
        }
    })
    .await
}

/// PgBouncer (from `PATH` or /usr/sbin) in front of the benchmark's server, in session
/// mode so that each client keeps its server connection and its prepared statement: what
/// a proxy in the path costs, without a reset. `None` when PgBouncer is not installed.
struct PgBouncer {
    port: u16,
    process: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    async fn start(harness: &Harness) -> Option<Self> {
        let program = ["pgbouncer", "/usr/sbin/pgbouncer"].into_iter().find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = &harness.servers[0];
        let config = format!(
            "[databases]\n* = host={} port={}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\npool_mode = session\n\
             max_client_conn = 500\ndefault_pool_size = 100\nlogfile = {dir}/pgbouncer.log\n",
            pg.host(),
            pg.port(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).expect("config");
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{}\" \"\"\n", pg.superuser()),
        )
        .expect("users");
        let mut command = tokio::process::Command::new(program);
        command
            .arg(dir.path().join("pgbouncer.ini"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        silo_pg_server::run_as_server_user(&mut command, dir.path()).expect("pgbouncer user");
        let process = command.spawn().expect("pgbouncer starts");
        crate::harness::eventually(
            Duration::from_secs(5),
            &format!("pgbouncer to listen on {port}"),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        Some(Self {
            port,
            process,
            _dir: dir,
        })
    }
}

/// A gRPC call that does no work (the health check) on the same server and connections:
/// the floor under the router's added latency.
async fn grpc_floor(harness: &Harness, clients: usize) -> Figures {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channels = channels(harness, clients).await;
    let connected: Arc<Vec<_>> = Arc::new(channels.into_iter().map(HealthClient::new).collect());
    measure(postmaster(harness), None, clients, move |c, _| {
        let mut client = connected[c].clone();
        async move {
            client
                .check(HealthCheckRequest::default())
                .await
                .expect("health");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark, not a check"]
async fn bench_point_select() {
    let limits = TierLimits {
        max_connections: 64,
        rate_per_second: 0,
        max_concurrent_calls: 0,
        ..TierLimits::default()
    };
    // The router gets a runtime of its own, as in its own process; the load generator and
    // the direct pools run on the test's.
    let router_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(ROUTER_THREADS)
        .enable_all()
        .build()
        .expect("router runtime");
    let harness = Harness::start_custom(
        1,
        PoolConfig::default(),
        Duration::from_secs(30),
        Some(router_runtime.handle()),
    )
    .await;
    let database = harness.add_tenant("bench", 0, limits.clone()).await;
    let mut client = harness.client.clone();
    for sql in [
        "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS body \
         FROM generate_series(1, 10000) g",
        "ALTER TABLE items ADD PRIMARY KEY (id)",
    ] {
        client
            .execute(harness.request("bench", execute(sql, vec![])))
            .await
            .expect("set-up");
    }

    println!(
        "point SELECT by primary key, {RUN:?} per line after {WARM_UP:?} of warm-up; \
         CPU per call: load generator, router (or PgBouncer), PostgreSQL"
    );
    let bouncer = PgBouncer::start(&harness).await;
    if bouncer.is_none() {
        println!("(no PgBouncer line: pgbouncer is not installed; apt-get install pgbouncer)");
    }
    for clients in [1usize, 64] {
        let baseline = direct(&harness, &database, clients, false, None, &PgTls::default()).await;
        println!("{clients:>2} clients  direct bb8 pool            {baseline}");
        let reset = direct(&harness, &database, clients, true, None, &PgTls::default()).await;
        println!(
            "{clients:>2} clients  direct + session reset     {reset}  qps {:.2}x",
            reset.qps / baseline.qps
        );
        if let Some(bouncer) = &bouncer {
            let proxied = direct(
                &harness,
                &database,
                clients,
                false,
                Some(bouncer),
                &PgTls::disabled(),
            )
            .await;
            println!(
                "{clients:>2} clients  via PgBouncer (session)    {proxied}  qps {:.2}x",
                proxied.qps / baseline.qps
            );
        }
        let floor = grpc_floor(&harness, clients).await;
        println!("{clients:>2} clients  gRPC health check          {floor}");
        let router = routed(&harness, clients, false).await;
        println!(
            "{clients:>2} clients  router                     {router}  qps {:.2}x, added p50 {:?}",
            router.qps / baseline.qps,
            router.p50.saturating_sub(baseline.p50),
        );
        if clients > 1 {
            let shared = routed(&harness, clients, true).await;
            println!(
                "{clients:>2} clients  router, one connection     {shared}  qps {:.2}x",
                shared.qps / baseline.qps,
            );
        }
    }
    tls_lines(&harness, &database, limits, router_runtime.handle()).await;
    drop(harness);
    router_runtime.shutdown_background();
}

/// The server's TLS on, through `ALTER SYSTEM` and a reload, with a certificate for
/// 127.0.0.1 signed by `ca`; waits until new sessions see it.
async fn enable_server_tls(harness: &Harness, ca: &TestCa) {
    let server = &harness.servers[0];
    let (cert, key) = ca
        .issue(&["127.0.0.1"])
        .write(server.data_dir(), "bench-server");
    for file in [&cert, &key] {
        silo_pg_server::give_to_server_user(file).expect("server owns its certificate");
    }
    let admin = server.connect("postgres").await.expect("admin");
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&statement).await.expect("ssl settings");
    }
    for _ in 0..100 {
        let fresh = server.connect("postgres").await.expect("admin");
        let ssl: String = fresh.query_one("SHOW ssl", &[]).await.expect("ssl").get(0);
        if ssl == "on" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the benchmark server did not turn ssl on");
}

/// Plaintext next to TLS: PostgreSQL with `ssl = on` (sessions `verify-full`), and a
/// second gRPC listener of the same router with a certificate, its clients trusting the
/// CA; every line in this table on the same server and router.
async fn tls_lines(
    harness: &Harness,
    database: &str,
    limits: TierLimits,
    router_runtime: &tokio::runtime::Handle,
) {
    use silo_tls::grpc::{ClientTls, Incoming, ServerTls, ServerTlsFiles};

    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("bench CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    enable_server_tls(harness, &ca).await;
    let verify_full = PgTls::new(Some("verify-full"), ca_file.to_str()).expect("settings");
    // Plaintext tenant sessions now that the server offers TLS: `disable`, not `prefer`.
    harness.set_route_tls("bench", 0, database, limits.clone(), PgTls::disabled());
    harness.set_route_tls("bench-tls", 0, database, limits, verify_full.clone());

    let (cert, key) = ca.issue(&["127.0.0.1"]).write(dir.path(), "router");
    let server_tls = ServerTls::load(ServerTlsFiles {
        cert,
        key,
        client_ca: None,
    })
    .expect("router certificate");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let tls_address = listener.local_addr().expect("address");
    let stop = tokio_util::sync::CancellationToken::new();
    let serve = {
        let (core, stop) = (harness.core.clone(), stop.clone());
        async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            silo_router::serve(
                Incoming::new(listener, Some(Arc::new(server_tls))),
                core,
                Duration::from_secs(30),
                silo_router::ServeTelemetry::unobserved(),
                stop,
            )
            .await
        }
    };
    drop(router_runtime.spawn(serve));
    let client_tls = ClientTls {
        ca_file: Some(ca_file),
        ..ClientTls::default()
    }
    .config()
    .expect("client TLS");
    let tls_endpoint = tonic::transport::Endpoint::from_shared(format!("https://{tls_address}"))
        .expect("endpoint")
        .tls_config(client_tls)
        .expect("tls endpoint");

    println!();
    println!("plaintext vs TLS (PostgreSQL ssl = on, sessions verify-full; gRPC over TLS 1.3):");
    for clients in [1usize, 64] {
        let plain = direct(harness, database, clients, false, None, &PgTls::disabled()).await;
        println!("{clients:>2} clients  direct, plaintext          {plain}");
        let direct_tls = direct(harness, database, clients, false, None, &verify_full).await;
        println!(
            "{clients:>2} clients  direct, TLS                {direct_tls}  qps {:.2}x",
            direct_tls.qps / plain.qps
        );
        let router = routed_over(harness, channels(harness, clients).await, "bench", clients).await;
        println!(
            "{clients:>2} clients  router, plaintext          {router}  qps {:.2}x",
            router.qps / plain.qps
        );
        let db_tls = routed_over(
            harness,
            channels(harness, clients).await,
            "bench-tls",
            clients,
        )
        .await;
        println!(
            "{clients:>2} clients  router, TLS to PostgreSQL  {db_tls}  qps {:.2}x of router plaintext",
            db_tls.qps / router.qps
        );
        let both = routed_over(
            harness,
            connect_all(tls_endpoint.clone(), clients).await,
            "bench-tls",
            clients,
        )
        .await;
        println!(
            "{clients:>2} clients  router, TLS on both hops   {both}  qps {:.2}x of router plaintext",
            both.qps / router.qps
        );
    }
    stop.cancel();
}
