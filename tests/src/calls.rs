//! Short calls the suites about the router's link and the catalog's history share: one
//! query through a router, a suspension or resumption through the control plane, and a
//! wait until the router obeys it.

use std::time::{Duration, Instant};

use silo_proto::controlplane::v1 as cpb;
use silo_proto::router::v1 as rpb;
use tonic::Code;

use crate::router::{TestRouter, call, statement, tenant_token};
use crate::{TestControlPlane, token, with_token};

/// `SELECT 1` as `tenant` through `router`; how long it took.
pub async fn select_one(router: &TestRouter, tenant: &str) -> Result<Duration, tonic::Status> {
    let started = Instant::now();
    let request = rpb::QueryRequest {
        statement: statement("SELECT 1", vec![]),
        max_rows: 0,
    };
    router
        .client
        .clone()
        .query(call(request, &tenant_token(tenant), None))
        .await?;
    Ok(started.elapsed())
}

pub async fn suspend(cp: &TestControlPlane, tenant: &str) {
    cp.client()
        .suspend_tenant(with_token(
            cpb::SuspendTenantRequest {
                tenant_id: tenant.into(),
                reason: String::new(),
            },
            &token("admin"),
        ))
        .await
        .expect("suspend");
}

pub async fn resume(cp: &TestControlPlane, tenant: &str) {
    cp.client()
        .resume_tenant(with_token(
            cpb::ResumeTenantRequest {
                tenant_id: tenant.into(),
            },
            &token("admin"),
        ))
        .await
        .expect("resume");
}

/// How long until `router` refuses `tenant` as not active (FAILED_PRECONDITION); fails the
/// test, saying what it waited for, if it still serves it after `within`.
pub async fn until_refused(router: &TestRouter, tenant: &str, within: Duration) -> Duration {
    let started = Instant::now();
    crate::eventually(
        within,
        &format!("{tenant} to be refused as not active"),
        || async {
            match select_one(router, tenant).await {
                Err(status) if status.code() == Code::FailedPrecondition => Some(()),
                _ => None,
            }
        },
    )
    .await;
    started.elapsed()
}
