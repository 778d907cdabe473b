//! Whether every call to the router succeeded. h2load only sees HTTP statuses (a gRPC
//! error is an HTTP 200 with a non-zero `grpc-status`), so the outcomes come from the
//! router's own counter, `silo_router_grpc_calls_total{method, code, tenant_id}`, read
//! before and after each run.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::ensure;

use crate::load::H2loadTotals;

const COUNTER: &str = "silo_router_grpc_calls_total";

/// Calls counted so far, by method and code (over every tenant).
#[derive(Debug, Default)]
pub struct Calls(BTreeMap<(String, String), u64>);

impl Calls {
    pub async fn scrape(metrics: SocketAddr) -> Self {
        Self::parse(&silo_tests::http_get(metrics, "/metrics").await)
    }

    fn parse(exposition: &str) -> Self {
        let mut calls = BTreeMap::new();
        for line in exposition.lines() {
            let Some(rest) = line.strip_prefix(COUNTER).and_then(|r| r.strip_prefix('{')) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    (key == name).then(|| value.trim_matches('"').to_owned())
                })
            };
            if let (Some(method), Some(code), Ok(value)) =
                (label("method"), label("code"), value.trim().parse::<f64>())
            {
                *calls.entry((method, code)).or_default() += value as u64;
            }
        }
        Self(calls)
    }

    /// Calls counted since `earlier`.
    fn since(&self, earlier: &Calls) -> BTreeMap<(String, String), u64> {
        self.0
            .iter()
            .map(|(key, count)| {
                (
                    key.clone(),
                    count - earlier.0.get(key).copied().unwrap_or(0),
                )
            })
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// Fails unless every call counted between `before` and `after` ended with OK, h2load
/// saw no failure, and the OK calls of `method` match the requests h2load completed
/// (give or take the `in_flight` calls it dropped when its time was up).
pub fn check(
    method: &str,
    before: &Calls,
    after: &Calls,
    h2load: &H2loadTotals,
) -> anyhow::Result<u64> {
    let counted = after.since(before);
    let not_ok: Vec<_> = counted
        .iter()
        .filter(|((_, code), _)| code != "Ok")
        .collect();
    ensure!(
        not_ok.is_empty(),
        "the router ended calls with other codes than OK: {not_ok:?}"
    );
    ensure!(
        h2load.failed == 0 && h2load.errored == 0 && h2load.timeout == 0,
        "h2load saw failures: {h2load:?}"
    );
    let ok = counted
        .get(&(method.to_owned(), "Ok".to_owned()))
        .copied()
        .unwrap_or(0);
    // A call h2load gave up on when its time was up may still have been answered.
    let slack = h2load.in_flight + 2;
    ensure!(
        ok.abs_diff(h2load.succeeded) <= slack,
        "{method}: the router counted {ok} OK calls, h2load completed {} (in flight at the \
         end: {})",
        h2load.succeeded,
        h2load.in_flight
    );
    Ok(ok)
}
