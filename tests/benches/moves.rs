//! Tenant moves (issue #17): a tenant of each size of `SILO_BENCH_MOVE_SIZES` moves back and
//! forth between two local PostgreSQL servers, `SILO_BENCH_MOVES` times by each method of
//! `SILO_BENCH_MOVE_METHODS`, while clients write and read it through a router. Reports,
//! per size and method, the move time, the copy time, the window in which the tenant's
//! calls were held (from the operation's step timestamps), the slowest call the clients
//! saw, their failed calls, and the bytes moved; then checks that every write a client saw
//! acknowledged is in the tenant's database after the last move. The goal: a held window of
//! at most 1 s with `replicate`, whatever the size.
//!
//! The fleet is two servers (`pg0` also holds the catalog) with `wal_level = logical`, the
//! control plane in-process with its defaults (4 workers, the retention pass off: the bench
//! drops the source database each move keeps itself, between moves), and a router in-process
//! following it. The tenant's data is one table `fill (id bigint PRIMARY KEY, payload text)`
//! of hex text (three MD5s a row, so `pg_dump`'s compression gains about half), filled by
//! `INSERT ... SELECT generate_series` over a superuser connection until the table with its
//! index reaches the size, then frozen and analysed.
//!
//! Knobs (environment variables):
//! - `SILO_BENCH_MOVE_SIZES`: comma-separated sizes of the `fill` table, `kB`/`MB`/`GB` in
//!   powers of 1024 (default `10MB,1GB`).
//! - `SILO_BENCH_MOVE_METHODS`: `copy`, `replicate` or both (default `copy,replicate`).
//! - `SILO_BENCH_MOVES`: moves per size and method (default 10, for every size: on the
//!   shared 2-core machine the README's numbers come from, a 1 GB tenant filled in 24 s and
//!   moved in 29.5 s by copy and 15.6 s by replicate (medians), and the whole default run
//!   took 9 min 12 s, under the quarter of an hour a default run may take).
//! - `SILO_BENCH_MOVE_CLIENTS`: clients writing and reading during the moves (default 4).
//! - `SILO_BENCH_MOVE_HOLD_MS`: how long the router holds a moving tenant's calls (default
//!   the router's own default, 2000 ms); every client call's deadline is 5 s longer.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use silo_control_plane::Hooks;
use silo_proto::controlplane::v1 as pb;
use silo_proto::router::v1 as rpb;
use silo_router::{CallLimits, pool::PoolConfig};
use silo_tests::{
    TestControlPlane, TestEnv,
    router::{TestRouter, call, statement, tenant_token},
    token, with_token,
};

#[path = "moves/load.rs"]
mod load;
#[path = "moves/report.rs"]
mod report;

use load::Load;
use report::{Row, Sample, mib, secs};

const GIB: u64 = 1 << 30;

/// Rows of `fill` one INSERT adds at most.
const FILL_BATCH: i64 = 1_000_000;

/// The longest one move may take before the bench gives up waiting for it.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What the bench runs, from the environment.
struct Knobs {
    sizes: Vec<(String, u64)>,
    methods: Vec<pb::MoveMethod>,
    moves: usize,
    clients: i64,
    hold: Duration,
}

impl Knobs {
    fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let number = |name: &str| var(name, "").parse::<u64>().ok();
        let sizes = var("SILO_BENCH_MOVE_SIZES", "10MB,1GB")
            .split(',')
            .map(|size| {
                let size = size.trim();
                (size.to_owned(), parse_size(size))
            })
            .collect();
        let methods = var("SILO_BENCH_MOVE_METHODS", "copy,replicate")
            .split(',')
            .map(|method| match method.trim() {
                "copy" => pb::MoveMethod::Copy,
                "replicate" => pb::MoveMethod::Replicate,
                other => panic!("SILO_BENCH_MOVE_METHODS: {other:?} is not copy or replicate"),
            })
            .collect();
        Self {
            sizes,
            methods,
            moves: number("SILO_BENCH_MOVES").map_or(10, |n| n as usize),
            clients: number("SILO_BENCH_MOVE_CLIENTS").map_or(4, |n| n as i64),
            hold: number("SILO_BENCH_MOVE_HOLD_MS")
                .map_or(CallLimits::default().move_hold, Duration::from_millis),
        }
    }
}

/// `10MB`, `1GB`, `512kB` (powers of 1024) or a number of bytes.
fn parse_size(size: &str) -> u64 {
    let lower = size.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let unit = match unit.trim() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => GIB,
        other => panic!("SILO_BENCH_MOVE_SIZES: unknown unit {other:?} in {size:?}"),
    };
    let count: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("SILO_BENCH_MOVE_SIZES: cannot read {size:?}"));
    count * unit
}

/// A `google.protobuf.Timestamp` as time since the epoch.
fn instant(seconds: i64, nanos: i32) -> Duration {
    Duration::new(seconds.max(0) as u64, nanos.max(0) as u32)
}

fn between(from: Duration, to: Duration) -> Duration {
    to.checked_sub(from).unwrap_or_default()
}

fn step_bounds(step: &pb::OperationStep) -> Option<(Duration, Duration)> {
    let started = step.started_at.as_ref()?;
    let finished = step.finished_at.as_ref()?;
    Some((
        instant(started.seconds, started.nanos),
        instant(finished.seconds, finished.nanos),
    ))
}

fn step<'a>(operation: &'a pb::Operation, name: &str) -> Option<&'a pb::OperationStep> {
    operation.steps.iter().find(|step| step.name == name)
}

fn server_index(name: &str) -> usize {
    match name {
        "pg0" => 0,
        "pg1" => 1,
        other => panic!("unexpected server {other}"),
    }
}

async fn wait_done(cp: &TestControlPlane, operation_id: &str) -> pb::Operation {
    let deadline = Instant::now() + MOVE_TIMEOUT;
    loop {
        let operation = cp.get_operation(operation_id).await.expect("GetOperation");
        if operation.done {
            return operation;
        }
        assert!(
            Instant::now() < deadline,
            "the move did not finish in {MOVE_TIMEOUT:?}: {operation:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe_steps(operation: &pb::Operation) -> String {
    operation
        .steps
        .iter()
        .map(|step| {
            let took = step_bounds(step).map(|(from, to)| between(from, to));
            format!(
                "    {} {:?} attempts {} took {:?}: {}",
                step.name,
                step.status(),
                step.attempts,
                took,
                step.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Moves `tenant` to the other server; Err with what went wrong when the move failed.
async fn move_once(
    env: &TestEnv,
    cp: &TestControlPlane,
    load: &Load,
    tenant: &str,
    method: pb::MoveMethod,
    request_id: &str,
) -> Result<Sample, String> {
    let record = cp.get_tenant(tenant).await.expect("GetTenant");
    let source = record.placement;
    let target = if source == "pg0" { "pg1" } else { "pg0" };
    load.take();
    let operation = cp
        .client()
        .move_tenant(with_token(
            pb::MoveTenantRequest {
                tenant_id: tenant.into(),
                target_server: target.into(),
                method: method.into(),
                request_id: request_id.into(),
                ..Default::default()
            },
            &token("admin"),
        ))
        .await
        .map_err(|status| format!("MoveTenant refused: {status:?}"))?
        .into_inner();
    let done = wait_done(cp, &operation.operation_id).await;
    let observed = load.take();
    if done.status() != pb::OperationStatus::Succeeded {
        return Err(format!(
            "{source} -> {target}: {:?}: {}\n{}",
            done.status(),
            done.error,
            describe_steps(&done)
        ));
    }
    let bounds = |name: &str| step(&done, name).and_then(step_bounds);
    let copy_step = match method {
        pb::MoveMethod::Copy => "COPYING",
        _ => "SUBSCRIBING",
    };
    let (holding, switching) = (bounds("HOLDING"), bounds("SWITCHING"));
    let (Some(copy), Some((held_from, _)), Some((_, held_to))) =
        (bounds(copy_step), holding, switching)
    else {
        return Err(format!("steps missing:\n{}", describe_steps(&done)));
    };
    // The operation's own `finished_at` is not used: it is written in the transaction that
    // claimed the operation's last pass, so it says when that pass began.
    let created = done
        .created_at
        .as_ref()
        .map(|c| instant(c.seconds, c.nanos));
    let finished = done.steps.last().and_then(step_bounds).map(|(_, to)| to);
    let (Some(created), Some(finished)) = (created, finished) else {
        return Err(format!(
            "no created_at or last step:\n{}",
            describe_steps(&done)
        ));
    };
    let moved = env
        .admin_client(server_index(target), &record.database)
        .await;
    let bytes: i64 = moved
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .expect("database size")
        .get(0);
    drop_kept_sources(env, &source, &record.database).await;
    Ok(Sample {
        total: between(created, finished),
        copy: between(copy.0, copy.1),
        held: between(held_from, held_to),
        slowest: observed.slowest,
        failures: observed.failures,
        bytes,
        steps: done
            .steps
            .iter()
            .filter_map(|s| step_bounds(s).map(|(f, t)| (s.name.clone(), between(f, t))))
            .collect(),
    })
}

/// Drops the source database the move kept (renamed `<database>_moved_<unix time>`), so
/// memory and disk do not fill up over the moves; what the retention pass does later.
async fn drop_kept_sources(env: &TestEnv, server: &str, database: &str) {
    let admin = env.admin_client(server_index(server), "postgres").await;
    let kept = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1",
            &[&format!("{database}_moved_%")],
        )
        .await
        .expect("kept databases");
    for row in kept {
        let name: String = row.get(0);
        admin
            .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .await
            .expect("drop the kept source");
    }
}

/// Makes the tenant's tables through the router and fills `fill` to `bytes`.
async fn fill(env: &TestEnv, cp: &TestControlPlane, router: &TestRouter, tenant: &str, bytes: u64) {
    for sql in [
        "CREATE TABLE fill (id bigint PRIMARY KEY, payload text NOT NULL)",
        "CREATE TABLE writes (client bigint, n bigint, PRIMARY KEY (client, n))",
    ] {
        router
            .client
            .clone()
            .execute(call(
                rpb::ExecuteRequest {
                    statement: statement(sql, vec![]),
                },
                &tenant_token(tenant),
                None,
            ))
            .await
            .expect("tenant tables");
    }
    let record = cp.get_tenant(tenant).await.expect("GetTenant");
    let admin = env
        .admin_client(server_index(&record.placement), &record.database)
        .await;
    let started = Instant::now();
    let (mut rows, mut size) = (0i64, 0i64);
    while (size as u64) < bytes {
        // About 180 bytes a row with its index entry; the first batch tells.
        let per_row = if rows == 0 { 180 } else { (size / rows).max(1) };
        let batch = (((bytes as i64 - size) / per_row) + 1).clamp(1, FILL_BATCH);
        admin
            .execute(
                "INSERT INTO fill SELECT g, md5(g::text) || md5((g + 1)::text) || md5((-g)::text)
                 FROM generate_series($1::bigint + 1, $1::bigint + $2::bigint) g",
                &[&rows, &batch],
            )
            .await
            .expect("fill");
        rows += batch;
        size = admin
            .query_one("SELECT pg_total_relation_size('fill')", &[])
            .await
            .expect("size")
            .get(0);
    }
    admin
        .batch_execute("VACUUM (FREEZE, ANALYZE) fill")
        .await
        .expect("vacuum");
    println!(
        "{tenant}: filled {rows} rows, {} in {:.1} s",
        mib(size),
        started.elapsed().as_secs_f64()
    );
}

/// Checks every acknowledged write is in the tenant's database; returns (acknowledged,
/// missing, rows).
async fn check_writes(
    env: &TestEnv,
    cp: &TestControlPlane,
    tenant: &str,
    written: &[(i64, Vec<i64>)],
) -> (usize, usize, usize) {
    let record = cp.get_tenant(tenant).await.expect("GetTenant");
    let rows: HashSet<(i64, i64)> = env
        .admin_client(server_index(&record.placement), &record.database)
        .await
        .query("SELECT client, n FROM writes", &[])
        .await
        .expect("writes")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let acknowledged: Vec<(i64, i64)> = written
        .iter()
        .flat_map(|(client, ns)| ns.iter().map(move |n| (*client, *n)))
        .collect();
    let missing = acknowledged.iter().filter(|w| !rows.contains(w)).count();
    (acknowledged.len(), missing, rows.len())
}

fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The directories this run made: each server's (data and socket, in `/dev/shm` or the
/// temporary directory) and the environment's scratch directory.
fn own_directories(env: &TestEnv) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env
        .servers
        .iter()
        .filter_map(|server| server.data_dir().parent().map(PathBuf::from))
        .collect();
    dirs.extend(env.scratch_file("-").parent().map(PathBuf::from));
    dirs
}

/// `silo-pg-template-*` in `/dev/shm` and the temporary directory.
fn templates() -> HashSet<PathBuf> {
    [PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .into_iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("silo-pg-template-"))
        })
        .collect()
}
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let knobs = Knobs::from_env();
    let templates_before = templates();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "tenant moves benchmark: machine nproc {nproc}, load average at start {} (1, 5, 15 min)",
        load_average()
    );
    let env = TestEnv::start(2).await;
    // Every server of the bench is up: the template cluster it built (in /dev/shm) goes.
    silo_pg_server::remove_template_built_here();
    let own = own_directories(&env);
    println!(
        "servers: 2 local PostgreSQL, data in {}; router hold {} ms, {} clients, call deadline {} ms",
        env.servers[0].data_dir().display(),
        knobs.hold.as_millis(),
        knobs.clients,
        (knobs.hold + Duration::from_secs(5)).as_millis()
    );
    let cp = env
        .control_plane_with(
            env.config(&["--retention-interval-secs=0"]),
            Hooks::default(),
        )
        .await;
    let limits = CallLimits {
        move_hold: knobs.hold,
        ..CallLimits::default()
    };
    let router = TestRouter::start_with_limits(&cp, PoolConfig::default(), limits).await;

    let mut rows = Vec::new();
    let mut lost_writes = false;
    for (label, bytes) in &knobs.sizes {
        let tenant = format!("bench-{}", label.to_ascii_lowercase());
        cp.onboard(&[&tenant]).await;
        fill(&env, &cp, &router, &tenant, *bytes).await;
        let deadline = knobs.hold + Duration::from_secs(5);
        let load = Load::start(&router, &tenant, knobs.clients, deadline);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for &method in &knobs.methods {
            let planned = knobs.moves;
            let mut row = Row {
                size: label.clone(),
                method,
                planned,
                samples: Vec::new(),
                failed_moves: Vec::new(),
            };
            for i in 1..=planned {
                let request_id = format!("{tenant}-{method:?}-{i}");
                match move_once(&env, &cp, &load, &tenant, method, &request_id).await {
                    Ok(sample) => {
                        println!(
                            "{label} {method:?} move {i}/{planned}: move {} s, copy {} s, held {} s, \
                             slowest call {} s, failed calls {}, {}",
                            secs(sample.total),
                            secs(sample.copy),
                            secs(sample.held),
                            secs(sample.slowest),
                            sample.failures.len(),
                            mib(sample.bytes)
                        );
                        row.samples.push(sample);
                    }
                    Err(why) => {
                        println!("{label} {method:?} move {i}/{planned} FAILED: {why}");
                        row.failed_moves.push(why);
                        break;
                    }
                }
                // Calls go on between moves: a pause like a fleet's between two moves.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            rows.push(row);
        }
        let written = load.stop().await;
        let (acknowledged, missing, present) = check_writes(&env, &cp, &tenant, &written).await;
        println!(
            "{tenant}: {acknowledged} acknowledged writes, {missing} missing after the last move \
             ({present} rows in the table)"
        );
        lost_writes |= missing > 0;
    }

    let failed_calls = report::print(&rows);
    println!("load average at the end {} (1, 5, 15 min)", load_average());

    drop(router);
    cp.stop().await;
    drop(env);
    let mut left: Vec<PathBuf> = own.iter().filter(|dir| dir.exists()).cloned().collect();
    left.extend(templates().difference(&templates_before).cloned());
    if left.is_empty() {
        println!(
            "left behind: nothing ({} removed, no new template cluster)",
            own.iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        println!("LEFT BEHIND: {left:?}");
    }
    let failed_moves = rows.iter().any(|row| !row.failed_moves.is_empty());
    if failed_moves || lost_writes || failed_calls || !left.is_empty() {
        println!(
            "NOT CLEAN: failed moves {failed_moves}, lost writes {lost_writes}, failed calls \
             {failed_calls}, left behind {}",
            !left.is_empty()
        );
        std::process::exit(1);
    }
}
