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
            },
            &token("admin"),
        ))
        .await
        .map(tonic::Response::into_inner)
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
    let acme = tenant_token("acme");
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
            &acme,
            None,
        ))
        .await
        .unwrap();

    // Eight clients write (and every few writes read their own rows back) until told to
    // stop; each call with a 10 s deadline, far above the router's 2 s hold.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (stop, failures, slowest) = (stop.clone(), failures.clone(), slowest.clone());
            let mut router = router.client.clone();
            let acme = acme.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let mut request = call(
                        rpb::ExecuteRequest {
                            statement: statement(
                                "INSERT INTO writes VALUES ($1, $2)",
                                vec![int(client), int(n)],
                            ),
                        },
                        &acme,
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
                                    vec![int(client)],
                                ),
                                max_rows: 0,
                            },
                            &acme,
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

    let started = Instant::now();
    let operation = move_tenant(&cp, "acme", &target, method, "move-1")
        .await
        .expect("MoveTenant");
    assert_eq!(operation.kind(), pb::OperationKind::MoveTenant);
    let done = cp.wait_succeeded(&operation.operation_id).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.push(client.await.unwrap());
    }

    let failed = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failed.is_empty(),
        "calls failed during the move: {failed:?}"
    );
    let steps: Vec<&str> = done.steps.iter().map(|step| step.name.as_str()).collect();
    assert_eq!(steps, steps_of(method), "{done:?}");
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
    let mut total = 0;
    for (client, written) in &acknowledged {
        let rows: Vec<i32> = moved
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
    assert!(total > 50, "the clients wrote only {total} rows");

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
    let slowest = *slowest.lock().unwrap();
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
