//! Tenant moves between the servers of a `postgres` fleet, with a router in the path:
//! MoveTenant copies the silo while the router holds the tenant's calls, switches, and
//! keeps the old database renamed; refusals; and a control plane killed after every step.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};
use std::time::{Duration, Instant};

use silo_control_plane::{HookAction, Hooks};
use silo_proto::controlplane::v1 as pb;
use silo_proto::router::v1 as rpb;
use silo_router::pool::PoolConfig;
use silo_tests::{
    TestControlPlane, TestEnv,
    router::{TestRouter, call, int, statement, tenant_token},
    token, with_token,
};
use tonic::Code;

/// The steps of a move by `method`.
fn steps_of(method: pb::MoveMethod) -> &'static [&'static str] {
    match method {
        pb::MoveMethod::Copy => &[
            "PREPARING",
            "HOLDING",
            "COPYING",
            "VERIFYING",
            "SWITCHING",
            "RETIRING",
        ],
        _ => &[
            "PREPARING",
            "SUBSCRIBING",
            "HOLDING",
            "CATCHING_UP",
            "VERIFYING",
            "SWITCHING",
            "RETIRING",
        ],
    }
}

/// Where the tests' PostgreSQL programs are: `SILO_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bin_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os(silo_pg_server::PG_BIN_ENV) {
        return dir.into();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .expect("a PostgreSQL installation")
}

/// Replication slots and subscriptions on both servers (a move leaves none).
async fn replication_left(env: &TestEnv) -> (i64, i64) {
    let (mut slots, mut subscriptions) = (0, 0);
    for server in 0..2 {
        let admin = env.admin_client(server, "postgres").await;
        let count = |sql| {
            let admin = &admin;
            async move { admin.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        slots += count("SELECT count(*) FROM pg_replication_slots").await;
        subscriptions += count("SELECT count(*) FROM pg_subscription").await;
    }
    (slots, subscriptions)
}

fn server_index(name: &str) -> usize {
    match name {
        "pg0" => 0,
        "pg1" => 1,
        other => panic!("unexpected server {other}"),
    }
}

async fn move_tenant(
    cp: &TestControlPlane,
    tenant: &str,
    target: &str,
    method: pb::MoveMethod,
    request_id: &str,
) -> Result<pb::Operation, tonic::Status> {
    cp.client()
        .move_tenant(with_token(
            pb::MoveTenantRequest {
                tenant_id: tenant.into(),
                target_server: target.into(),
                method: method.into(),
                request_id: request_id.into(),
                target_tier: String::new(),
                rollback: false,
            },
            &token("admin"),
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Eight clients that write (and every few writes read their own rows back) through a
/// router until stopped, each call with a 10 s deadline, far above the router's 2 s hold.
struct Writers {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<tonic::Status>>>,
    slowest: Arc<Mutex<Duration>>,
    clients: Vec<tokio::task::JoinHandle<(usize, Vec<usize>)>>,
}

impl Writers {
    /// Creates the `writes` table in the tenant's silo and starts the clients.
    async fn start(router: &TestRouter, tenant: &str) -> Self {
        let token = tenant_token(tenant);
        router
            .client
            .clone()
            .execute(call(
                rpb::ExecuteRequest {
                    statement: statement(
                        "CREATE TABLE writes (client int, n int, PRIMARY KEY (client, n))",
                        vec![],
                    ),
                },
                &token,
                None,
            ))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let slowest = Arc::new(Mutex::new(Duration::ZERO));
        let clients = (0..8)
            .map(|client| {
                let (stop, failures, slowest) = (stop.clone(), failures.clone(), slowest.clone());
                let mut router = router.client.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let mut request = call(
                            rpb::ExecuteRequest {
                                statement: statement(
                                    "INSERT INTO writes VALUES ($1, $2)",
                                    vec![int(client as i64), int(n as i64)],
                                ),
                            },
                            &token,
                            None,
                        );
                        request.set_timeout(Duration::from_secs(10));
                        let started = Instant::now();
                        match router.execute(request).await {
                            Ok(_) => acknowledged.push(n),
                            Err(status) => failures.lock().unwrap().push(status),
                        }
                        if n % 5 == 0 {
                            let mut request = call(
                                rpb::QueryRequest {
                                    statement: statement(
                                        "SELECT count(*) FROM writes WHERE client = $1",
                                        vec![int(client as i64)],
                                    ),
                                    max_rows: 0,
                                },
                                &token,
                                None,
                            );
                            request.set_timeout(Duration::from_secs(10));
                            if let Err(status) = router.query(request).await {
                                failures.lock().unwrap().push(status);
                            }
                        }
                        let took = started.elapsed();
                        let mut slowest = slowest.lock().unwrap();
                        *slowest = (*slowest).max(took);
                    }
                    (client, acknowledged)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self {
            stop,
            failures,
            slowest,
            clients,
        }
    }

    /// Stops the clients; asserts no call failed. Returns each client's acknowledged
    /// writes and the slowest call.
    async fn stop(self) -> (Vec<(usize, Vec<usize>)>, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let mut acknowledged = Vec::new();
        for client in self.clients {
            acknowledged.push(client.await.unwrap());
        }
        let failed = std::mem::take(&mut *self.failures.lock().unwrap());
        assert!(
            failed.is_empty(),
            "calls failed during the move: {failed:?}"
        );
        let slowest = *self.slowest.lock().unwrap();
        (acknowledged, slowest)
    }
}

/// Every acknowledged write is in `silo`'s `writes`, and nothing else; returns how many.
async fn assert_written(
    silo: &tokio_postgres::Client,
    acknowledged: &[(usize, Vec<usize>)],
) -> usize {
    let mut total = 0;
    for (client, written) in acknowledged {
        let rows: Vec<i32> = silo
            .query(
                "SELECT n FROM writes WHERE client = $1 ORDER BY n",
                &[&(*client as i32)],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let written: Vec<i32> = written.iter().map(|n| *n as i32).collect();
        assert_eq!(rows, written, "client {client}");
        total += written.len();
    }
    total
}

/// The tenant's server, and the other one.
async fn servers_of(cp: &TestControlPlane, tenant: &str) -> (String, String) {
    let on = cp.get_tenant(tenant).await.unwrap().placement;
    let other = if on == "pg0" { "pg1" } else { "pg0" };
    (on, other.to_owned())
}

/// Whether `server` holds a database named `name`, and a role named `name`.
async fn silo_on(env: &TestEnv, server: &str, name: &str) -> (bool, bool) {
    let admin = env.admin_client(server_index(server), "postgres").await;
    let database: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    let role: i64 = admin
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    (database == 1, role == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_by_copy_while_eight_clients_write_and_read() {
    move_under_load(pb::MoveMethod::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_by_replication_while_eight_clients_write_and_read() {
    move_under_load(pb::MoveMethod::Replicate).await;
}

/// Eight clients write and read through a router while the tenant moves by `method`: no
/// call fails, every acknowledged write is on the target, one live silo is left.
async fn move_under_load(method: pb::MoveMethod) {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let (source, target) = servers_of(&cp, "acme").await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let writers = Writers::start(&router, "acme").await;
    let started = Instant::now();
    let operation = move_tenant(&cp, "acme", &target, method, "move-1")
        .await
        .expect("MoveTenant");
    assert_eq!(operation.kind(), pb::OperationKind::MoveTenant);
    let done = cp.wait_succeeded(&operation.operation_id).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acknowledged, slowest) = writers.stop().await;
    let steps: Vec<&str> = done.steps.iter().map(|step| step.name.as_str()).collect();
    assert_eq!(steps, steps_of(method), "{done:?}");
    // The operation finished when its last step did, not when the worker's pass began.
    let seconds = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
    };
    let last_step = done
        .steps
        .iter()
        .map(|s| seconds(&s.finished_at))
        .fold(0.0, f64::max);
    assert!(seconds(&done.finished_at) >= last_step, "{done:?}");
    // Progress in the steps' details.
    let detail = |name: &str| {
        done.steps
            .iter()
            .find(|step| step.name == name)
            .map(|step| step.detail.clone())
            .unwrap_or_default()
    };
    match method {
        pb::MoveMethod::Copy => assert!(detail("COPYING").ends_with(" bytes"), "{done:?}"),
        _ => {
            assert!(
                detail("SUBSCRIBING").contains("tables copied, lag"),
                "{done:?}"
            );
            assert!(
                detail("CATCHING_UP").starts_with("caught up in"),
                "{done:?}"
            );
        }
    }
    assert!(detail("VERIFYING").contains(" rows"), "{done:?}");
    let record = cp.get_tenant("acme").await.unwrap();
    assert_eq!(record.placement, target);
    assert_eq!(record.state(), pb::TenantState::Active);

    // Every acknowledged write is in the target database, and nothing else.
    let moved = env
        .admin_client(server_index(&target), &record.database)
        .await;
    let total = assert_written(&moved, &acknowledged).await;

    // One live silo: the target's; the source database is kept renamed, its role gone.
    assert_eq!(silo_on(&env, &target, &record.database).await, (true, true));
    assert_eq!(
        silo_on(&env, &source, &record.database).await,
        (false, false)
    );
    let kept: i64 = env
        .admin_client(server_index(&source), "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &[&format!("{}_moved_%", record.database)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the source database is kept, renamed");
    let held = done
        .steps
        .iter()
        .filter(|step| {
            ["HOLDING", "COPYING", "CATCHING_UP", "VERIFYING"].contains(&step.name.as_str())
        })
        .filter_map(|step| step.duration.as_ref())
        .map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
        .sum::<Duration>();
    println!(
        "{method:?}: move of {total} rows took {took:?}, calls held for about {held:?}; the \
         slowest client call took {slowest:?}"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_refuse_what_they_cannot_do_and_a_retry_gets_the_same_operation() {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let (source, target) = servers_of(&cp, "acme").await;

    let nowhere = move_tenant(&cp, "acme", "pg9", pb::MoveMethod::Copy, "n")
        .await
        .unwrap_err();
    assert_eq!(nowhere.code(), Code::InvalidArgument, "{nowhere:?}");
    let here = move_tenant(&cp, "acme", &source, pb::MoveMethod::Copy, "h")
        .await
        .unwrap_err();
    assert_eq!(here.code(), Code::FailedPrecondition, "{here:?}");
    let missing = move_tenant(&cp, "nobody", &target, pb::MoveMethod::Copy, "m")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let viewer = cp
        .client()
        .move_tenant(with_token(
            pb::MoveTenantRequest {
                tenant_id: "acme".into(),
                target_server: target.clone(),
                method: pb::MoveMethod::Copy.into(),
                request_id: "v".into(),
                target_tier: String::new(),
                rollback: false,
            },
            &token("viewer"),
        ))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied, "{viewer:?}");

    let first = move_tenant(&cp, "acme", &target, pb::MoveMethod::Unspecified, "once")
        .await
        .unwrap();
    let again = move_tenant(&cp, "acme", &target, pb::MoveMethod::Copy, "once")
        .await
        .unwrap();
    assert_eq!(first.operation_id, again.operation_id);
    cp.wait_succeeded(&first.operation_id).await;
    let after = move_tenant(&cp, "acme", &target, pb::MoveMethod::Copy, "once")
        .await
        .unwrap();
    assert_eq!(
        after.operation_id, first.operation_id,
        "a retry after the end"
    );
    assert!(after.done);
    cp.stop().await;
}

/// Halts the worker at the `at`-th tenant transition it writes (1-based), as if the
/// control plane were killed right there.
fn crash_at_transition(at: usize) -> (Hooks, Arc<AtomicBool>) {
    let crashed = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let flag = crashed.clone();
    let hooks = Hooks {
        after_transition: Some(Arc::new(move |_, _| {
            if seen.fetch_add(1, Ordering::SeqCst) + 1 == at && !flag.swap(true, Ordering::SeqCst) {
                HookAction::Halt
            } else {
                HookAction::Continue
            }
        })),
    };
    (hooks, crashed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_by_copy_finishes_after_the_control_plane_is_killed_after_any_step() {
    crash_after_every_step(pb::MoveMethod::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_by_replication_finishes_after_the_control_plane_is_killed_after_any_step() {
    crash_after_every_step(pb::MoveMethod::Replicate).await;
}

/// A move writes a transition at each step's end (with the next one's start) and at the
/// switch to MOVING; the control plane is killed after each in turn, and a new one
/// finishes the move with one live silo, the data intact and nothing of the replication
/// left.
async fn crash_after_every_step(method: pb::MoveMethod) {
    let env = TestEnv::start(2).await;
    let onboarding = env.control_plane(Hooks::default()).await;
    onboarding.onboard(&["acme"]).await;
    let database = onboarding.get_tenant("acme").await.unwrap().database;
    onboarding.stop().await;
    let mut rows = 0_i64;
    let transitions = steps_of(method).len() + 1;
    for at in 1..=transitions {
        let (hooks, crashed) = crash_at_transition(at);
        let first = env
            .control_plane_with(env.config(&["--workers=1"]), hooks)
            .await;
        let (source, target) = servers_of(&first, "acme").await;
        {
            let silo = env.admin_client(server_index(&source), &database).await;
            silo.batch_execute(
                "CREATE TABLE IF NOT EXISTS kept
                     (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int);
                 INSERT INTO kept (n) SELECT generate_series(1, 10)",
            )
            .await
            .unwrap();
            rows += 10;
        }
        let operation = move_tenant(&first, "acme", &target, method, &format!("m{at}"))
            .await
            .unwrap();
        silo_tests::eventually(Duration::from_secs(30), "the worker to crash", || async {
            crashed.load(Ordering::SeqCst).then_some(())
        })
        .await;
        first.abort();

        let second = env.control_plane(Hooks::default()).await;
        let done = second.wait_succeeded(&operation.operation_id).await;
        let steps: Vec<&str> = done.steps.iter().map(|step| step.name.as_str()).collect();
        assert_eq!(
            steps,
            steps_of(method),
            "crash at transition {at}: {done:?}"
        );
        let record = second.get_tenant("acme").await.unwrap();
        assert_eq!(record.placement, target, "crash at transition {at}");
        assert_eq!(record.state(), pb::TenantState::Active);
        assert_eq!(
            silo_on(&env, &target, &database).await,
            (true, true),
            "at {at}"
        );
        assert_eq!(
            silo_on(&env, &source, &database).await,
            (false, false),
            "at {at}"
        );
        let moved = env.admin_client(server_index(&target), &database).await;
        let count: i64 = moved
            .query_one("SELECT count(*) FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, rows, "crash at transition {at}");
        assert_eq!(
            replication_left(&env).await,
            (0, 0),
            "slots, subscriptions left (crash at {at})"
        );
        second.stop().await;
    }
}

/// A move that fails before its switch is given up: with a `pg_restore` that fails, the
/// tenant is ACTIVE on its source again, served there through the router, and the target
/// holds nothing. Without a PostgreSQL client at all the move stops at PREPARING, before
/// any call is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_fails_before_the_switch_leaves_the_tenant_where_it_was() {
    let env = TestEnv::start(2).await;
    let onboarding = env.control_plane(Hooks::default()).await;
    onboarding.onboard(&["acme"]).await;
    let database = onboarding.get_tenant("acme").await.unwrap().database;
    onboarding.stop().await;

    let tools = tempfile::tempdir().unwrap();
    let pg_dump = pg_bin_dir().join("pg_dump");
    std::os::unix::fs::symlink(&pg_dump, tools.path().join("pg_dump")).unwrap();
    let failing = tools.path().join("pg_restore");
    std::fs::write(
        &failing,
        "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\ncat > /dev/null\necho 'pg_restore: error: injected' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &failing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let flag = format!("--pg-bin-dir={}", tools.path().display());
    let cp = env
        .control_plane_with(
            env.config(&[&flag, "--max-step-attempts=1"]),
            Hooks::default(),
        )
        .await;
    let (source, target) = servers_of(&cp, "acme").await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let operation = move_tenant(&cp, "acme", &target, pb::MoveMethod::Copy, "doomed")
        .await
        .unwrap();
    let done = cp
        .wait_done(&operation.operation_id, Duration::from_secs(30))
        .await;
    assert_eq!(done.status(), pb::OperationStatus::Failed, "{done:?}");
    assert!(
        done.error.contains("COPYING") && done.error.contains("injected"),
        "{done:?}"
    );
    let record = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (record.placement.as_str(), record.state()),
        (source.as_str(), pb::TenantState::Active)
    );
    assert_eq!(silo_on(&env, &source, &database).await, (true, true));
    assert_eq!(silo_on(&env, &target, &database).await, (false, false));
    // The source is open to the tenant again: served through the router.
    let served = router
        .client
        .clone()
        .query(call(
            rpb::QueryRequest {
                statement: statement("SELECT current_database()", vec![]),
                max_rows: 0,
            },
            &tenant_token("acme"),
            None,
        ))
        .await;
    assert!(served.is_ok(), "{served:?}");
    cp.stop().await;

    let cp = env
        .control_plane_with(env.config(&["--pg-bin-dir=/nonexistent"]), Hooks::default())
        .await;
    let operation = move_tenant(&cp, "acme", &target, pb::MoveMethod::Copy, "no-tools")
        .await
        .unwrap();
    let done = cp
        .wait_done(&operation.operation_id, Duration::from_secs(30))
        .await;
    assert_eq!(done.status(), pb::OperationStatus::Failed, "{done:?}");
    let steps: Vec<&str> = done.steps.iter().map(|step| step.name.as_str()).collect();
    assert_eq!(steps, ["PREPARING"], "{done:?}");
    assert!(done.error.contains("--pg-bin-dir"), "{done:?}");
    cp.stop().await;
}

/// A source server without `wal_level = logical` refuses `replicate` with the reason, and
/// the default method moves by copy there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_logical_wal_refuses_replicate_and_moves_by_copy() {
    let env = TestEnv::start_with_settings(2, &[("wal_level", "replica")]).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let (_, target) = servers_of(&cp, "acme").await;
    let refused = move_tenant(&cp, "acme", &target, pb::MoveMethod::Replicate, "r")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("wal_level = logical"),
        "{refused:?}"
    );
    let moved = move_tenant(&cp, "acme", &target, pb::MoveMethod::Unspecified, "d")
        .await
        .unwrap();
    let done = cp.wait_succeeded(&moved.operation_id).await;
    let steps: Vec<&str> = done.steps.iter().map(|step| step.name.as_str()).collect();
    assert_eq!(steps, steps_of(pb::MoveMethod::Copy), "{done:?}");
    cp.stop().await;
}

/// The source database a move kept is dropped once `--move-retain-hours` have passed (here
/// at once, by a retention pass every second); the tenant goes on being served from the
/// target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_source_is_dropped_after_the_retention() {
    let env = TestEnv::start(2).await;
    let cp = env
        .control_plane_with(
            env.config(&["--move-retain-hours=0", "--retention-interval-secs=1"]),
            Hooks::default(),
        )
        .await;
    cp.onboard(&["acme"]).await;
    let (source, target) = servers_of(&cp, "acme").await;
    let database = cp.get_tenant("acme").await.unwrap().database;
    let operation = move_tenant(&cp, "acme", &target, pb::MoveMethod::Copy, "m")
        .await
        .unwrap();
    cp.wait_succeeded(&operation.operation_id).await;
    let admin = env.admin_client(server_index(&source), "postgres").await;
    let pattern = format!("{database}_moved_%");
    silo_tests::eventually(
        Duration::from_secs(10),
        "the kept source dropped",
        || async {
            let kept: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
                    &[&pattern],
                )
                .await
                .unwrap()
                .get(0);
            (kept == 0).then_some(())
        },
    )
    .await;
    assert_eq!(silo_on(&env, &target, &database).await, (true, true));
    cp.stop().await;
}

/// RebalanceFleet proposes the moves that even out the servers (a dry run changes nothing,
/// a viewer may ask for it), and with `execute` starts them as moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_fleet_evens_out_the_servers() {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;
    let tenants = ["t-a", "t-b", "t-c", "t-d"];
    cp.onboard(&tenants).await;
    // Everything onto pg0 first.
    for tenant in tenants {
        if cp.get_tenant(tenant).await.unwrap().placement != "pg0" {
            let operation = move_tenant(&cp, tenant, "pg0", pb::MoveMethod::Copy, "gather")
                .await
                .unwrap();
            cp.wait_succeeded(&operation.operation_id).await;
        }
    }
    let rebalance = |execute: bool, role: &str| {
        let mut client = cp.client();
        let token = token(role);
        async move {
            client
                .rebalance_fleet(with_token(
                    pb::RebalanceFleetRequest {
                        execute,
                        max_moves: 0,
                        method: pb::MoveMethod::Copy.into(),
                        request_id: "even-out".into(),
                    },
                    &token,
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let dry = rebalance(false, "viewer").await.unwrap();
    let count = |loads: &[pb::ServerLoad]| -> Vec<(String, u32)> {
        loads
            .iter()
            .map(|l| (l.server.clone(), l.tenants))
            .collect()
    };
    assert_eq!(count(&dry.before), [("pg0".into(), 4), ("pg1".into(), 0)]);
    assert_eq!(count(&dry.after), [("pg0".into(), 2), ("pg1".into(), 2)]);
    assert_eq!(dry.moves.len(), 2, "{dry:?}");
    assert!(
        dry.moves
            .iter()
            .all(|m| m.operation_id.is_empty() && m.to_server == "pg1")
    );
    assert!(dry.before[0].database_bytes > 0);
    for tenant in tenants {
        assert_eq!(
            cp.get_tenant(tenant).await.unwrap().placement,
            "pg0",
            "a dry run moved {tenant}"
        );
    }
    let refused = rebalance(true, "viewer").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let executed = rebalance(true, "admin").await.unwrap();
    assert_eq!(executed.moves.len(), 2, "{executed:?}");
    for moved in &executed.moves {
        cp.wait_succeeded(&moved.operation_id).await;
        assert_eq!(
            cp.get_tenant(&moved.tenant_id).await.unwrap().placement,
            "pg1"
        );
    }
    let again = rebalance(true, "admin").await.unwrap();
    assert!(again.moves.is_empty(), "a balanced fleet: {again:?}");
    assert_eq!(count(&again.before), [("pg0".into(), 2), ("pg1".into(), 2)]);
    cp.stop().await;
}

/// CancelOperation stops a move that has not switched: it gives up at its next step
/// boundary and the tenant stays where it was. Only a running move can be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_move_leaves_the_tenant_where_it_was() {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let (source, target) = servers_of(&cp, "acme").await;
    let database = cp.get_tenant("acme").await.unwrap().database;
    let create = cp.create_tenant("globex", "g").await.unwrap();
    cp.wait_succeeded(&create.operation_id).await;
    cp.stop().await;

    let cancel = |cp: &TestControlPlane, id: &str, role: &str| {
        let mut client = cp.client();
        let request = with_token(
            pb::CancelOperationRequest {
                operation_id: id.into(),
            },
            &token(role),
        );
        async move { client.cancel_operation(request).await }
    };
    // No worker takes the move before it is cancelled.
    let idle = env
        .control_plane_with(env.config(&["--workers=0"]), Hooks::default())
        .await;
    let operation = move_tenant(&idle, "acme", &target, pb::MoveMethod::Replicate, "c")
        .await
        .unwrap();
    let viewer = cancel(&idle, &operation.operation_id, "viewer")
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied);
    cancel(&idle, &operation.operation_id, "admin")
        .await
        .expect("cancel");
    let other = cancel(&idle, &create.operation_id, "admin")
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    let unknown = cancel(&idle, "4bf92f35-77b3-4ce9-a3ce-929d0e0e4736", "admin")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    idle.stop().await;

    let cp = env.control_plane(Hooks::default()).await;
    let done = cp
        .wait_done(&operation.operation_id, Duration::from_secs(30))
        .await;
    assert_eq!(done.status(), pb::OperationStatus::Failed, "{done:?}");
    assert!(done.error.contains("cancelled"), "{done:?}");
    let record = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (record.placement.as_str(), record.state()),
        (source.as_str(), pb::TenantState::Active)
    );
    assert_eq!(silo_on(&env, &source, &database).await, (true, true));
    assert_eq!(silo_on(&env, &target, &database).await, (false, false));
    let finished = cancel(&cp, &operation.operation_id, "admin")
        .await
        .unwrap_err();
    assert_eq!(finished.code(), Code::FailedPrecondition, "{finished:?}");
    cp.stop().await;
}

/// A table without a primary key (or replica identity) cannot be replicated without making
/// the tenant's UPDATEs and DELETEs on it fail: `replicate` is refused naming it, and the
/// default method copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_primary_key_refuses_replicate_and_the_default_copies() {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let (source, target) = servers_of(&cp, "acme").await;
    let database = cp.get_tenant("acme").await.unwrap().database;
    env.admin_client(server_index(&source), &database)
        .await
        .batch_execute("CREATE TABLE loose (n int); INSERT INTO loose VALUES (1)")
        .await
        .unwrap();
    let refused = move_tenant(&cp, "acme", &target, pb::MoveMethod::Replicate, "r")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("public.loose"), "{refused:?}");
    let moved = move_tenant(&cp, "acme", &target, pb::MoveMethod::Unspecified, "d")
        .await
        .unwrap();
    let done = cp.wait_succeeded(&moved.operation_id).await;
    let steps: Vec<&str> = done.steps.iter().map(|step| step.name.as_str()).collect();
    assert_eq!(steps, steps_of(pb::MoveMethod::Copy), "{done:?}");
    cp.stop().await;
}

/// A target that does not catch up while the tenant's calls are held gives the move up
/// after `--move-catch-up-limit-secs`: here its subscription is disabled by hand while the
/// control plane is down after HOLDING, and the tenant is served from its source again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_does_not_catch_up_gives_the_move_up() {
    let env = TestEnv::start(2).await;
    let onboarding = env.control_plane(Hooks::default()).await;
    onboarding.onboard(&["acme"]).await;
    let (source, target) = servers_of(&onboarding, "acme").await;
    let database = onboarding.get_tenant("acme").await.unwrap().database;
    onboarding.stop().await;

    // Transitions of a replicate move: PREPARING done, SUBSCRIBING done, MOVING, HOLDING done.
    let (hooks, crashed) = crash_at_transition(4);
    let first = env
        .control_plane_with(env.config(&["--workers=1"]), hooks)
        .await;
    let operation = move_tenant(&first, "acme", &target, pb::MoveMethod::Replicate, "stuck")
        .await
        .unwrap();
    silo_tests::eventually(
        Duration::from_secs(30),
        "the worker to stop after HOLDING",
        || async { crashed.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    first.abort();
    let subscriber = env.admin_client(server_index(&target), &database).await;
    let name: String = subscriber
        .query_one("SELECT subname::text FROM pg_subscription", &[])
        .await
        .unwrap()
        .get(0);
    subscriber
        .batch_execute(&format!("ALTER SUBSCRIPTION \"{name}\" DISABLE"))
        .await
        .unwrap();
    // The apply worker stops at its next turn: wait for it, so what follows is never
    // applied (nor confirmed).
    silo_tests::eventually(
        Duration::from_secs(10),
        "the apply worker to stop",
        || async {
            let running: i64 = subscriber
                .query_one(
                    "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (running == 0).then_some(())
        },
    )
    .await;
    // A change the disabled subscription never confirms.
    env.admin_client(server_index(&source), &database)
        .await
        .batch_execute(
            "CREATE TABLE after_hold (id int PRIMARY KEY); INSERT INTO after_hold VALUES (1)",
        )
        .await
        .unwrap();

    let second = env
        .control_plane_with(
            env.config(&["--move-catch-up-limit-secs=1"]),
            Hooks::default(),
        )
        .await;
    let done = second
        .wait_done(&operation.operation_id, Duration::from_secs(30))
        .await;
    assert_eq!(done.status(), pb::OperationStatus::Failed, "{done:?}");
    assert!(done.error.contains("did not confirm"), "{done:?}");
    let record = second.get_tenant("acme").await.unwrap();
    assert_eq!(
        (record.placement.as_str(), record.state()),
        (source.as_str(), pb::TenantState::Active)
    );
    assert_eq!(silo_on(&env, &target, &database).await, (false, false));
    let router = TestRouter::start(&second, PoolConfig::default()).await;
    let served = router
        .client
        .clone()
        .query(call(
            rpb::QueryRequest {
                statement: statement("SELECT current_database()", vec![]),
                max_rows: 0,
            },
            &tenant_token("acme"),
            None,
        ))
        .await;
    assert!(served.is_ok(), "{served:?}");
    assert_eq!(
        replication_left(&env).await,
        (0, 0),
        "slots, subscriptions left"
    );
    second.stop().await;
}

/// ChangeTier as an admin.
async fn change_tier(cp: &TestControlPlane, tenant: &str, tier: &str) -> pb::ChangeTierResponse {
    cp.client()
        .change_tier(with_token(
            pb::ChangeTierRequest {
                tenant_id: tenant.into(),
                tier: tier.into(),
                method: pb::MoveMethod::Unspecified.into(),
                request_id: format!("tier-{tenant}-{tier}"),
            },
            &token("admin"),
        ))
        .await
        .expect("ChangeTier")
        .into_inner()
}

/// The promotion path against moto, instance endpoints rewritten to pg1: a `standard`
/// tenant on pg0 moves to the `enterprise` tier (an RDS instance of its own) and back with
/// ChangeTier, while eight clients write through a router: no call fails, every write
/// is on the final silo, the instance is deleted with a final snapshot, one live silo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_promoted_to_its_own_rds_instance_and_demoted_back_under_load() {
    use silo_tests::rds::rds_client;
    let env = TestEnv::start(2).await;
    let moto = silo_tests::moto::Moto::start().await;
    let cp = env
        .control_plane_with(promotion_config(&env, &moto, &[]), Hooks::default())
        .await;
    cp.onboard_in_tier("acme", "standard").await;
    let before = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (before.tier.as_str(), before.placement.as_str()),
        ("standard", "pg0")
    );
    // An rds tier gets an instance of its own (no server to name); tiers must exist.
    for (server, tier) in [("pg1", "enterprise"), ("", "gold")] {
        let refused = cp
            .client()
            .move_tenant(with_token(
                pb::MoveTenantRequest {
                    tenant_id: "acme".into(),
                    target_server: server.into(),
                    target_tier: tier.into(),
                    rollback: false,
                    request_id: format!("refused-{tier}"),
                    ..Default::default()
                },
                &token("admin"),
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let writers = Writers::start(&router, "acme").await;

    // A tier of the same provisioner would change at once; `enterprise` is rds: a move.
    let promotion = cp
        .client()
        .move_tenant(with_token(
            pb::MoveTenantRequest {
                tenant_id: "acme".into(),
                target_tier: "enterprise".into(),
                rollback: false,
                request_id: "promote".into(),
                ..Default::default()
            },
            &token("admin"),
        ))
        .await
        .expect("MoveTenant to the enterprise tier")
        .into_inner();
    let promoted = cp.wait_succeeded(&promotion.operation_id).await;
    let steps: Vec<&str> = promoted.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, steps_of(pb::MoveMethod::Replicate), "{promoted:?}");
    let tenant = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (
            tenant.tier.as_str(),
            tenant.provisioner.as_str(),
            tenant.placement.as_str(),
            tenant.state()
        ),
        ("enterprise", "rds", "silo-acme", pb::TenantState::Active)
    );
    let rds = rds_client(&moto.endpoint_url()).await;
    let instance = rds
        .describe_db_instances()
        .db_instance_identifier("silo-acme")
        .send()
        .await
        .expect("the promotion made an instance");
    let tags: Vec<(&str, &str)> = instance.db_instances()[0]
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")))
        .collect();
    assert!(tags.contains(&("silo:tenant-id", "acme")), "{tags:?}");
    assert!(tags.contains(&("silo:tier", "enterprise")), "{tags:?}");
    // The fleet database is kept renamed on pg0, its role gone.
    assert_eq!(silo_on(&env, "pg0", &tenant.database).await, (false, false));
    // The reconciler counts the promoted instance as the tenant's.
    let report = cp
        .client()
        .reconcile_rds_instances(with_token(
            pb::ReconcileRdsInstancesRequest::default(),
            &token("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(report.orphans.is_empty(), "{report:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back to the fleet: ChangeTier moves it, since the provisioner differs.
    let changed = change_tier(&cp, "acme", "standard").await;
    let demotion = changed.operation.expect("a demotion is a move");
    let demoted = cp.wait_succeeded(&demotion.operation_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acknowledged, slowest) = writers.stop().await;
    let retiring = demoted.steps.last().unwrap();
    assert!(retiring.detail.contains("final snapshot"), "{demoted:?}");
    let tenant = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (
            tenant.tier.as_str(),
            tenant.provisioner.as_str(),
            tenant.placement.as_str()
        ),
        ("standard", "postgres", "pg0")
    );
    let silo = env.admin_client(0, &tenant.database).await;
    let total = assert_written(&silo, &acknowledged).await;
    assert!(total > 50, "the clients wrote only {total} rows");
    // The instance is gone, its final snapshot kept.
    let gone = rds
        .describe_db_instances()
        .db_instance_identifier("silo-acme")
        .send()
        .await;
    assert!(gone.is_err(), "the instance is deleted: {gone:?}");
    let snapshots = rds
        .describe_db_snapshots()
        .db_instance_identifier("silo-acme")
        .send()
        .await
        .unwrap();
    let kept: Vec<&str> = snapshots
        .db_snapshots()
        .iter()
        .filter(|s| s.snapshot_type() == Some("manual"))
        .filter_map(|s| s.db_snapshot_identifier())
        .collect();
    assert_eq!(
        kept,
        [
            silo_control_plane::provisioner::rds::identifiers::final_snapshot_id(
                "silo-acme",
                "promote"
            )
        ],
        "{snapshots:?}"
    );
    // (pg1 stands in for the instance: what was on it went with the instance.)
    assert_eq!(replication_left(&env).await, (0, 0));
    println!("promotion and demotion of {total} rows; slowest client call {slowest:?}");
    cp.stop().await;
}

/// ChangeTier within one provisioner changes the tier at once (routers take its limits);
/// an unknown tier is INVALID_ARGUMENT; a move to an rds tier with a fleet server named
/// is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_tier_within_a_provisioner_is_immediate() {
    let env = TestEnv::start(1).await;
    let cp = env
        .control_plane_with_tiers(
            "default_tier = \"standard\"\n\
         [tiers.standard]\nprovisioner = \"postgres\"\nmax_connections = 5\n\
         [tiers.premium]\nprovisioner = \"postgres\"\nmax_connections = 20\n",
        )
        .await;
    cp.onboard(&["acme"]).await;
    let route = cp.resolve("acme").await.unwrap();
    assert_eq!(route.limits.unwrap().max_connections, 5);
    let changed = change_tier(&cp, "acme", "premium").await;
    assert!(changed.operation.is_none(), "{changed:?}");
    assert_eq!(changed.tenant.unwrap().tier, "premium");
    let route = cp.resolve("acme").await.unwrap();
    assert_eq!(
        (route.tier.as_str(), route.limits.unwrap().max_connections),
        ("premium", 20)
    );
    let unknown = cp
        .client()
        .change_tier(with_token(
            pb::ChangeTierRequest {
                tenant_id: "acme".into(),
                tier: "gold".into(),
                ..Default::default()
            },
            &token("admin"),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument, "{unknown:?}");
    let viewer = cp
        .client()
        .change_tier(with_token(
            pb::ChangeTierRequest {
                tenant_id: "acme".into(),
                tier: "standard".into(),
                ..Default::default()
            },
            &token("viewer"),
        ))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied, "{viewer:?}");
    cp.stop().await;
}

/// The control plane's configuration for the promotion tests: tiers `standard` (the
/// `postgres` fleet pg0, pg1) and `enterprise` (`rds` against moto, every instance's
/// endpoint rewritten to pg1).
fn promotion_config(
    env: &TestEnv,
    moto: &silo_tests::moto::Moto,
    extra: &[&str],
) -> silo_control_plane::ControlPlaneConfig {
    let rewrite = format!(
        "--rds-endpoint-rewrite=*={}:{}",
        env.tenant_host(),
        env.servers[1].port()
    );
    let mut flags = vec![rewrite.as_str()];
    flags.extend_from_slice(extra);
    env.rds_config(
        &moto.endpoint_url(),
        silo_tests::rds::RdsTier {
            managed_password: true,
        },
        &flags,
    )
}

/// A promotion and a demotion in turn, the control plane killed after each transition
/// in turn (8 of a move by replication): a new control plane finishes each with the
/// tenant in its new tier and provisioner, every row, nothing of the replication left;
/// and while a promotion is stopped half-way, the RDS reconciler counts the instance it
/// made as the tenant's, not as an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_and_demotions_finish_after_the_control_plane_is_killed_after_any_step() {
    let env = TestEnv::start(2).await;
    let moto = silo_tests::moto::Moto::start().await;
    let onboarding = env
        .control_plane_with(promotion_config(&env, &moto, &[]), Hooks::default())
        .await;
    onboarding.onboard_in_tier("acme", "standard").await;
    let database = onboarding.get_tenant("acme").await.unwrap().database;
    onboarding.stop().await;
    let mut rows = 0_i64;
    let transitions = steps_of(pb::MoveMethod::Replicate).len() + 1;
    for at in 1..=transitions {
        let (tier, provisioner, server) = if at % 2 == 1 {
            ("enterprise", "rds", 1)
        } else {
            ("standard", "postgres", 0)
        };
        let (hooks, crashed) = crash_at_transition(at);
        let first = env
            .control_plane_with(promotion_config(&env, &moto, &["--workers=1"]), hooks)
            .await;
        {
            let from = 1 - server;
            let silo = env.admin_client(from, &database).await;
            silo.batch_execute(
                "CREATE TABLE IF NOT EXISTS kept
                     (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int);
                 INSERT INTO kept (n) SELECT generate_series(1, 10)",
            )
            .await
            .unwrap();
            rows += 10;
        }
        let operation = first
            .client()
            .move_tenant(with_token(
                pb::MoveTenantRequest {
                    tenant_id: "acme".into(),
                    target_tier: tier.into(),
                    rollback: false,
                    request_id: format!("tier-{at}"),
                    ..Default::default()
                },
                &token("admin"),
            ))
            .await
            .expect("MoveTenant to another tier")
            .into_inner();
        silo_tests::eventually_reporting(
            Duration::from_secs(30),
            "the worker to crash",
            || async {
                if crashed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let operation = first.get_operation(&operation.operation_id).await;
                Err(format!("{operation:?}"))
            },
        )
        .await;
        if tier == "enterprise" {
            let report = first
                .client()
                .reconcile_rds_instances(with_token(
                    pb::ReconcileRdsInstancesRequest::default(),
                    &token("admin"),
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(
                report.orphans.is_empty(),
                "crash at transition {at}: {report:?}"
            );
        }
        first.abort();

        let second = env
            .control_plane_with(promotion_config(&env, &moto, &[]), Hooks::default())
            .await;
        let done = second.wait_succeeded(&operation.operation_id).await;
        let steps: Vec<&str> = done.steps.iter().map(|step| step.name.as_str()).collect();
        assert_eq!(
            steps,
            steps_of(pb::MoveMethod::Replicate),
            "crash at transition {at}: {done:?}"
        );
        let record = second.get_tenant("acme").await.unwrap();
        assert_eq!(
            (
                record.tier.as_str(),
                record.provisioner.as_str(),
                record.state()
            ),
            (tier, provisioner, pb::TenantState::Active),
            "crash at transition {at}"
        );
        let silo = env.admin_client(server, &database).await;
        let count: i64 = silo
            .query_one("SELECT count(*) FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, rows, "crash at transition {at}");
        assert_eq!(
            replication_left(&env).await,
            (0, 0),
            "crash at transition {at}"
        );
        second.stop().await;
        if tier == "standard" {
            // Deletion keeps automated backups (RDS names them by time); moto names them by
            // the minute, so a new instance of the same name within it would collide.
            let rds = silo_tests::rds::rds_client(&moto.endpoint_url()).await;
            let automated = rds
                .describe_db_snapshots()
                .db_instance_identifier("silo-acme")
                .snapshot_type("automated")
                .send()
                .await
                .unwrap();
            for snapshot in automated.db_snapshots() {
                rds.delete_db_snapshot()
                    .set_db_snapshot_identifier(snapshot.db_snapshot_identifier().map(Into::into))
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

/// A rollback moves the tenant back where its last finished move took it from, with the
/// writes made since; without a finished move, or naming a target, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_moves_the_tenant_back_where_its_last_move_took_it_from() {
    let env = TestEnv::start(2).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let (source, target) = servers_of(&cp, "acme").await;
    let rollback = |request_id: &'static str, target_server: &'static str| {
        let cp = &cp;
        async move {
            cp.client()
                .move_tenant(with_token(
                    pb::MoveTenantRequest {
                        tenant_id: "acme".into(),
                        target_server: target_server.into(),
                        rollback: true,
                        request_id: request_id.into(),
                        ..Default::default()
                    },
                    &token("admin"),
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let nothing = rollback("r0", "").await.unwrap_err();
    assert_eq!(nothing.code(), Code::FailedPrecondition, "{nothing:?}");
    assert!(
        nothing.message().contains("no finished move"),
        "{nothing:?}"
    );

    let moved = move_tenant(&cp, "acme", &target, pb::MoveMethod::Copy, "m1")
        .await
        .unwrap();
    cp.wait_succeeded(&moved.operation_id).await;
    let database = cp.get_tenant("acme").await.unwrap().database;
    env.admin_client(server_index(&target), &database)
        .await
        .batch_execute("CREATE TABLE since (id int PRIMARY KEY); INSERT INTO since VALUES (1), (2)")
        .await
        .unwrap();
    let named = rollback("r1", "pg0").await.unwrap_err();
    assert_eq!(named.code(), Code::InvalidArgument, "{named:?}");

    let back = rollback("r2", "").await.expect("rollback");
    let done = cp.wait_succeeded(&back.operation_id).await;
    assert!(done.steps.iter().any(|s| s.name == "VERIFYING"), "{done:?}");
    let tenant = cp.get_tenant("acme").await.unwrap();
    assert_eq!(tenant.placement, source);
    let rows: i64 = env
        .admin_client(server_index(&source), &database)
        .await
        .query_one("SELECT count(*) FROM since", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "the writes made after the first move came back");
    cp.stop().await;
}

/// A replicate move whose target has not caught up within `--move-subscribe-limit-secs`
/// is given up: the tenant stays ACTIVE where it was, the target silo is dropped, and no
/// slot (which would keep the source's WAL) or subscription is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_still_subscribing_past_its_limit_is_given_up() {
    let env = TestEnv::start(2).await;
    let cp = env
        .control_plane_with(
            env.config(&["--move-subscribe-limit-secs=0"]),
            Hooks::default(),
        )
        .await;
    cp.onboard(&["acme"]).await;
    let (source, target) = servers_of(&cp, "acme").await;
    let database = cp.get_tenant("acme").await.unwrap().database;
    let operation = move_tenant(&cp, "acme", &target, pb::MoveMethod::Replicate, "slow")
        .await
        .unwrap();
    let done = cp
        .wait_done(&operation.operation_id, Duration::from_secs(30))
        .await;
    assert_eq!(done.status(), pb::OperationStatus::Failed, "{done:?}");
    assert!(
        done.error.contains("did not catch up within 0 s"),
        "{done:?}"
    );
    let record = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (record.placement.as_str(), record.state()),
        (source.as_str(), pb::TenantState::Active)
    );
    assert_eq!(silo_on(&env, &target, &database).await, (false, false));
    assert_eq!(replication_left(&env).await, (0, 0));
    cp.stop().await;
}

/// With `synchronous_commit = off` on the source (the test servers' setting, and common)
/// a commit returns before its WAL is written, and the WAL writer writes it within
/// `wal_writer_delay` (2 s here): CATCHING_UP must wait for the tenant's last commits as
/// inserted, not as written, or the move fails at VERIFYING (or worse, without VERIFYING,
/// loses them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicate_move_waits_for_commits_not_yet_written_to_wal() {
    let env = TestEnv::start_with_settings(2, &[("wal_writer_delay", "2000")]).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let (_, target) = servers_of(&cp, "acme").await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let writers = Writers::start(&router, "acme").await;
    let operation = move_tenant(&cp, "acme", &target, pb::MoveMethod::Replicate, "unflushed")
        .await
        .expect("MoveTenant");
    let done = cp
        .wait_done(&operation.operation_id, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acknowledged, _) = writers.stop().await;
    assert_eq!(done.status(), pb::OperationStatus::Succeeded, "{done:?}");
    let record = cp.get_tenant("acme").await.unwrap();
    let moved = env
        .admin_client(server_index(&target), &record.database)
        .await;
    assert_written(&moved, &acknowledged).await;
    cp.stop().await;
}

/// CancelOperation answers at once while a worker is in the middle of the move (its
/// claim holds the operation's row for the whole pass, a copy included), and the move
/// gives up at its next step boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_cancelled_at_once_while_a_worker_runs_it() {
    let env = TestEnv::start(2).await;
    let onboarding = env.control_plane(Hooks::default()).await;
    onboarding.onboard(&["acme"]).await;
    let (source, target) = servers_of(&onboarding, "acme").await;
    onboarding.stop().await;
    // The worker stays 3 s in its pass right after the tenant goes MOVING.
    let hooks = Hooks {
        after_transition: Some(Arc::new(|_, state| {
            if state == silo_control_plane::tenant::TenantState::Moving {
                std::thread::sleep(Duration::from_secs(3));
            }
            HookAction::Continue
        })),
    };
    let cp = env
        .control_plane_with(env.config(&["--workers=1"]), hooks)
        .await;
    let operation = move_tenant(&cp, "acme", &target, pb::MoveMethod::Copy, "slow-cancel")
        .await
        .unwrap();
    silo_tests::eventually(
        Duration::from_secs(20),
        "the tenant to be MOVING",
        || async {
            (cp.get_tenant("acme").await.unwrap().state() == pb::TenantState::Moving).then_some(())
        },
    )
    .await;
    let asked = Instant::now();
    cp.client()
        .cancel_operation(with_token(
            pb::CancelOperationRequest {
                operation_id: operation.operation_id.clone(),
            },
            &token("admin"),
        ))
        .await
        .expect("cancel");
    let answered = asked.elapsed();
    assert!(
        answered < Duration::from_secs(1),
        "CancelOperation took {answered:?}"
    );
    let done = cp
        .wait_done(&operation.operation_id, Duration::from_secs(30))
        .await;
    assert_eq!(done.status(), pb::OperationStatus::Failed, "{done:?}");
    assert!(done.error.contains("cancelled"), "{done:?}");
    let record = cp.get_tenant("acme").await.unwrap();
    assert_eq!(
        (record.placement.as_str(), record.state()),
        (source.as_str(), pb::TenantState::Active)
    );
    cp.stop().await;
}
