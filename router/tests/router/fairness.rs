//! Fairness: a tenant over its tier's rate or concurrency is refused with retry
//! information, and the other tenants do not notice.

use std::time::Duration;

use silo_router::pool::PoolConfig;
use silo_router::tenant::TierLimits;
use tonic::Code;

use crate::harness::{Harness, query};

/// Runs `calls` queries of `sql` for `tenant` at once; the codes they end with.
async fn call_at_once(harness: &Harness, tenant: &str, sql: &str, calls: usize) -> Vec<Code> {
    let calls = (0..calls).map(|_| {
        let mut client = harness.client.clone();
        let request = harness.request(tenant, query(sql, vec![]));
        async move {
            match client.query(request).await {
                Ok(_) => Code::Ok,
                Err(status) => {
                    if status.code() == Code::ResourceExhausted {
                        let retry = status
                            .metadata()
                            .get("retry-after-ms")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        assert!(retry.is_some_and(|ms| ms > 0), "retry info: {status:?}");
                    }
                    status.code()
                }
            }
        }
    });
    futures::future::join_all(calls).await
}

fn count(codes: &[Code], code: Code) -> usize {
    codes.iter().filter(|&&c| c == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_is_refused_and_others_are_not() {
    let harness = Harness::start(PoolConfig::default()).await;
    let slow_tier = TierLimits {
        rate_per_second: 2,
        burst: 5,
        ..TierLimits::default()
    };
    harness.add_tenant("noisy", 0, slow_tier).await;
    harness.add_tenant("quiet", 0, TierLimits::default()).await;

    let noisy = call_at_once(&harness, "noisy", "SELECT 1", 20).await;
    let quiet = call_at_once(&harness, "quiet", "SELECT 1", 20).await;
    assert!(
        (5..=7).contains(&count(&noisy, Code::Ok)),
        "the burst, and no more: {noisy:?}"
    );
    assert_eq!(
        count(&noisy, Code::Ok) + count(&noisy, Code::ResourceExhausted),
        20,
        "{noisy:?}"
    );
    assert_eq!(count(&quiet, Code::Ok), 20, "{quiet:?}");

    // The bucket refills at the tier's rate. This pause is the condition under test
    // (time passing refills the bucket), not a wait for something to happen.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = call_at_once(&harness, "noisy", "SELECT 1", 1).await;
    assert_eq!(later, vec![Code::Ok]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_concurrency_is_refused_and_others_are_not() {
    let harness = Harness::start(PoolConfig::default()).await;
    let narrow_tier = TierLimits {
        max_concurrent_calls: 2,
        ..TierLimits::default()
    };
    harness.add_tenant("noisy", 0, narrow_tier).await;
    harness.add_tenant("quiet", 0, TierLimits::default()).await;

    let sleepy = "SELECT pg_sleep(0.3)::text";
    let (noisy, quiet) = tokio::join!(
        call_at_once(&harness, "noisy", sleepy, 6),
        call_at_once(&harness, "quiet", sleepy, 6),
    );
    assert_eq!(count(&noisy, Code::Ok), 2, "{noisy:?}");
    assert_eq!(count(&noisy, Code::ResourceExhausted), 4, "{noisy:?}");
    assert_eq!(count(&quiet, Code::Ok), 6, "{quiet:?}");
}
