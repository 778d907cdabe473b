//! Router vs a direct tokio-postgres connection, point SELECT by primary key, side by side.
//! Run with `cargo test --release -p silo-router --test router bench_point_select -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;

use crate::harness::{Harness, execute, int, query};

const RUN: Duration = Duration::from_secs(3);

struct Figures {
    qps: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Figures {
        qps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark, not a check"]
async fn bench_point_select() {
    for test_on_check_out in [true, false] {
        println!("test_on_check_out = {test_on_check_out}");
        bench_once(PoolConfig {
            test_on_check_out,
            ..PoolConfig::default()
        })
        .await;
    }
}

async fn bench_once(pools: PoolConfig) {
    let limits = TierLimits {
        max_connections: 64,
        rate_per_second: 0,
        max_concurrent_calls: 0,
        ..TierLimits::default()
    };
    let harness = Harness::start(pools).await;
    let database = harness.add_tenant("bench", 0, limits).await;
    let mut client = harness.client.clone();
    client
        .execute(harness.request(
            "bench",
            execute(
                "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS body \
                 FROM generate_series(1, 10000) g",
                vec![],
            ),
        ))
        .await
        .expect("create table");
    client
        .execute(harness.request(
            "bench",
            execute("ALTER TABLE items ADD PRIMARY KEY (id)", vec![]),
        ))
        .await
        .expect("primary key");
    let sql = "SELECT id, body FROM items WHERE id = $1";

    for clients in [1usize, 64] {
        // Direct: one tokio-postgres connection per client, statement prepared once.
        let mut tasks = Vec::new();
        let started = Instant::now();
        for c in 0..clients {
            let pg = harness.servers[0]
                .connect(&database)
                .await
                .expect("connect");
            tasks.push(tokio::spawn(async move {
                let statement = pg.prepare(sql).await.expect("prepare");
                let mut latencies = Vec::new();
                let mut id = c as i32;
                while started.elapsed() < RUN {
                    id = id % 10_000 + 1;
                    let t = Instant::now();
                    pg.query_one(&statement, &[&id]).await.expect("row");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("task"));
        }
        let direct = figures(latencies, started.elapsed());

        // Through the router over gRPC.
        let mut tasks = Vec::new();
        let started = Instant::now();
        for c in 0..clients {
            let mut client = harness.client.clone();
            let token = harness.tenant_token("bench");
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut id = c as i64;
                while started.elapsed() < RUN {
                    id = id % 10_000 + 1;
                    let request =
                        crate::harness::authorized(query(sql, vec![int(id)]), &token, None);
                    let t = Instant::now();
                    client.query(request).await.expect("row");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("task"));
        }
        let routed = figures(latencies, started.elapsed());
        println!(
            "{clients:>2} clients | direct {:>8.0} qps p50 {:>8.1?} p99 {:>8.1?} | router {:>8.0} qps p50 {:>8.1?} p99 {:>8.1?} | qps ratio {:.2}, added p50 {:?}",
            direct.qps,
            direct.p50,
            direct.p99,
            routed.qps,
            routed.p50,
            routed.p99,
            routed.qps / direct.qps,
            routed.p50.saturating_sub(direct.p50),
        );
    }
}
