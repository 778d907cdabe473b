//! Per-tenant usage metering: every call of a tenant is accounted to the minute it ended
//! in, by method and gRPC code (calls, rows returned and affected, message bytes, database
//! time, the peak of concurrent calls), and shipped to the control plane's RecordUsage.
//!
//! Exactly once without coordination: this process is a router instance (a fresh id per
//! start) that keeps *running totals* per key (tenant, minute, method, code) and ships
//! them until acknowledged; the control plane stores each key's latest totals, replacing
//! what it had. A record sent twice is counted once, and one that failed to arrive is sent
//! again with the next shipment. A minute's keys are forgotten once the minute is over and
//! its last totals are stored. While the control plane cannot be reached the totals are
//! kept in memory, up to `--usage-max-records` keys; a call whose key does not fit is
//! dropped and counted (`silo_router_usage_dropped_calls`). On shutdown the router ships
//! what is left once more.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use silo_proto::controlplane::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::metrics::ResultLabels;
use crate::tenant::TenantId;

/// Most records in one RecordUsage call (the control plane takes up to 5,000).
pub const SHIPMENT_RECORDS: usize = 5_000;

/// The gRPC paths of the Router's methods, as usage records name them.
pub mod method {
    /// `Router/Query`.
    pub const QUERY: &str = "/silo.router.v1.Router/Query";
    /// `Router/QueryStream`.
    pub const QUERY_STREAM: &str = "/silo.router.v1.Router/QueryStream";
    /// `Router/Execute`.
    pub const EXECUTE: &str = "/silo.router.v1.Router/Execute";
    /// `Router/Batch`.
    pub const BATCH: &str = "/silo.router.v1.Router/Batch";
    /// `Router/Transaction`.
    pub const TRANSACTION: &str = "/silo.router.v1.Router/Transaction";
}

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...), as in the gRPC
/// specification's status code table.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One key's running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Calls.
    pub calls: u64,
    /// Rows sent back.
    pub rows_returned: u64,
    /// Rows written.
    pub rows_affected: u64,
    /// Encoded request message bytes.
    pub bytes_in: u64,
    /// Encoded response message bytes.
    pub bytes_out: u64,
    /// Time waiting on the database, µs.
    pub db_time_us: u64,
    /// The most calls of the tenant running at once in the minute.
    pub peak_concurrent: u32,
}

impl Totals {
    fn add(&mut self, call: &Totals) {
        self.calls += call.calls;
        self.rows_returned += call.rows_returned;
        self.rows_affected += call.rows_affected;
        self.bytes_in += call.bytes_in;
        self.bytes_out += call.bytes_out;
        self.db_time_us += call.db_time_us;
        self.peak_concurrent = self.peak_concurrent.max(call.peak_concurrent);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    tenant: String,
    /// Unix minutes.
    minute: i64,
    method: &'static str,
    code: &'static str,
}

struct Entry {
    totals: Totals,
    /// Bumped by every change; `shipped` is the version the control plane has.
    version: u64,
    shipped: u64,
}

#[derive(Default)]
struct State {
    records: HashMap<Key, Entry>,
    in_flight: HashMap<String, u32>,
    /// The latest minute a call was accounted to: a clock that steps back never reopens
    /// a minute whose keys were forgotten.
    minute: i64,
}

/// The metering's own metrics.
#[derive(Clone, Debug, Default)]
pub struct UsageMetrics {
    /// Calls not accounted: their key did not fit in the bound while unshipped.
    pub dropped_calls: Counter,
    /// Keys held in memory (shipped or not).
    pub records: Gauge,
    /// RecordUsage calls, by result (`ok`, `failed`).
    pub shipments: Family<ResultLabels, Counter>,
}

impl UsageMetrics {
    /// Registers `silo_router_usage_*` in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "silo_router_usage_dropped_calls",
            "calls left out of usage records: the unshipped records reached --usage-max-records",
            metrics.dropped_calls.clone(),
        );
        registry.register(
            "silo_router_usage_records",
            "usage records (tenant, minute, method, code) held in memory",
            metrics.records.clone(),
        );
        registry.register(
            "silo_router_usage_shipments",
            "RecordUsage calls to the control plane, by result (ok, failed)",
            metrics.shipments.clone(),
        );
        metrics
    }
}

struct Inner {
    instance: String,
    max_records: usize,
    state: Mutex<State>,
    metrics: UsageMetrics,
}

/// The router's usage accounts; cheap to clone. A meter made with [`UsageMeter::off`]
/// accounts nothing.
#[derive(Clone)]
pub struct UsageMeter {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for UsageMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageMeter")
            .field("on", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

fn unix_minute(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs() / 60).unwrap_or(i64::MAX)
    })
}

impl UsageMeter {
    /// Metering off: calls are not accounted.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// A meter of a new router instance (a random id) holding at most `max_records`
    /// keys.
    pub fn new(max_records: usize, metrics: UsageMetrics) -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                instance: uuid::Uuid::new_v4().to_string(),
                max_records,
                state: Mutex::new(State::default()),
                metrics,
            })),
        }
    }

    /// The router instance id records are shipped under; empty when metering is off.
    pub fn instance(&self) -> &str {
        self.inner.as_ref().map_or("", |inner| &inner.instance)
    }

    /// Starts accounting a call of `tenant` to `method` whose request message had
    /// `bytes_in` bytes; the call is counted when the returned guard is finished or
    /// dropped (then as CANCELLED: the caller went away).
    pub fn begin(&self, tenant: &TenantId, method: &'static str, bytes_in: usize) -> CallUsage {
        let Some(inner) = &self.inner else {
            return CallUsage::off();
        };
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        // No key to allocate while the tenant has calls running.
        let peak = match state.in_flight.get_mut(tenant.as_str()) {
            Some(running) => {
                *running += 1;
                *running
            }
            None => {
                state.in_flight.insert(tenant.as_str().to_owned(), 1);
                1
            }
        };
        drop(state);
        CallUsage {
            inner: Some(inner.clone()),
            tenant: tenant.as_str().to_owned(),
            method,
            totals: Totals {
                calls: 1,
                bytes_in: bytes_in as u64,
                peak_concurrent: peak,
                ..Totals::default()
            },
            code: None,
        }
    }

    /// The records not yet stored by the control plane, with the version each one is
    /// at, in shipments of at most [`SHIPMENT_RECORDS`].
    fn unshipped(&self) -> Vec<Vec<(pb::UsageRecord, Key, u64)>> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut records: Vec<(pb::UsageRecord, Key, u64)> = state
            .records
            .iter()
            .filter(|(_, entry)| entry.version != entry.shipped)
            .map(|(key, entry)| {
                let minute =
                    UNIX_EPOCH + Duration::from_secs(u64::try_from(key.minute).unwrap_or(0) * 60);
                let record = pb::UsageRecord {
                    tenant_id: key.tenant.clone(),
                    minute: Some(prost_types::Timestamp::from(minute)),
                    method: key.method.to_owned(),
                    code: key.code.to_owned(),
                    calls: entry.totals.calls,
                    rows_returned: entry.totals.rows_returned,
                    rows_affected: entry.totals.rows_affected,
                    bytes_in: entry.totals.bytes_in,
                    bytes_out: entry.totals.bytes_out,
                    db_time_us: entry.totals.db_time_us,
                    peak_concurrent_calls: entry.totals.peak_concurrent,
                };
                (record, key.clone(), entry.version)
            })
            .collect();
        drop(state);
        let mut shipments = Vec::new();
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(SHIPMENT_RECORDS));
            shipments.push(std::mem::replace(&mut records, rest));
        }
        shipments
    }

    /// The control plane stored `shipped`: those versions are clean, and the keys of
    /// minutes that are over and clean are forgotten.
    fn stored(&self, shipped: &[(pb::UsageRecord, Key, u64)]) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, key, version) in shipped {
            if let Some(entry) = state.records.get_mut(key) {
                entry.shipped = entry.shipped.max(*version);
            }
        }
        let current = state.minute.max(unix_minute(SystemTime::now()));
        state
            .records
            .retain(|key, entry| key.minute >= current || entry.version != entry.shipped);
        inner.metrics.records.set(state.records.len() as i64);
    }

    /// Ships every unshipped record through `sink`; stops at the first failure (what is
    /// left goes with the next shipment).
    pub async fn ship<K: UsageSink>(&self, sink: &K) -> Result<usize, String> {
        let Some(inner) = &self.inner else {
            return Ok(0);
        };
        let mut sent = 0;
        for shipment in self.unshipped() {
            let request = pb::RecordUsageRequest {
                router_instance: inner.instance.clone(),
                records: shipment
                    .iter()
                    .map(|(record, _, _)| record.clone())
                    .collect(),
            };
            let result = sink.record_usage(request).await;
            let label = ResultLabels {
                result: if result.is_ok() { "ok" } else { "failed" }.to_owned(),
            };
            inner.metrics.shipments.get_or_create(&label).inc();
            result?;
            sent += shipment.len();
            self.stored(&shipment);
        }
        Ok(sent)
    }
}

/// Where usage records go: the control plane's RecordUsage.
pub trait UsageSink: Send + Sync {
    /// Stores the records; `Err` with what went wrong (for logs) when they may not be.
    fn record_usage(
        &self,
        request: pb::RecordUsageRequest,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Ships every `every` until `shutdown`, then once more (the last minute's totals).
pub async fn ship_periodically<K: UsageSink>(
    meter: UsageMeter,
    sink: Arc<K>,
    every: Duration,
    shutdown: CancellationToken,
) {
    static SHIP_FAILED: silo_telemetry::Throttle =
        silo_telemetry::Throttle::new(Duration::from_secs(30));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(error) = meter.ship(sink.as_ref()).await
            && let Some(held_back) = SHIP_FAILED.allow()
        {
            tracing::warn!(error = %error, held_back, "shipping usage records failed; keeping them to send again");
        }
    }
}

/// One call's usage while it runs; counted when finished, or as CANCELLED when dropped
/// unfinished.
pub struct CallUsage {
    inner: Option<Arc<Inner>>,
    tenant: String,
    method: &'static str,
    totals: Totals,
    code: Option<tonic::Code>,
}

impl CallUsage {
    fn off() -> Self {
        Self {
            inner: None,
            tenant: String::new(),
            method: "",
            totals: Totals::default(),
            code: None,
        }
    }

    /// Rows sent back to the caller.
    pub fn rows_returned(&mut self, rows: u64) {
        self.totals.rows_returned += rows;
    }

    /// Rows the database reported written.
    pub fn rows_affected(&mut self, rows: u64) {
        self.totals.rows_affected += rows;
    }

    /// Response message bytes.
    pub fn bytes_out(&mut self, bytes: usize) {
        self.totals.bytes_out += bytes as u64;
    }

    /// Request message bytes after the first (a Transaction's later messages).
    pub fn bytes_in(&mut self, bytes: usize) {
        self.totals.bytes_in += bytes as u64;
    }

    /// Time spent waiting on the database.
    pub fn db_time(&mut self, took: Duration) {
        self.totals.db_time_us += u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    }

    /// The call ended with `code`.
    pub fn finish(mut self, code: tonic::Code) {
        self.code = Some(code);
    }

    /// The code the call ends with, unless one was set already (the first error of a
    /// stream is what ended it); counted when the guard is dropped.
    pub fn set_code(&mut self, code: tonic::Code) {
        self.code.get_or_insert(code);
    }

    /// The call ended with `result`'s code.
    pub fn finish_with<T>(self, result: &Result<T, tonic::Status>) {
        let code = result
            .as_ref()
            .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
        self.finish(code);
    }
}

impl Drop for CallUsage {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let code = code_name(self.code.unwrap_or(tonic::Code::Cancelled));
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = state.in_flight.get_mut(&self.tenant) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                state.in_flight.remove(&self.tenant);
            }
        }
        let minute = state.minute.max(unix_minute(SystemTime::now()));
        state.minute = minute;
        let key = Key {
            tenant: std::mem::take(&mut self.tenant),
            minute,
            method: self.method,
            code,
        };
        let fits = state.records.len() < inner.max_records;
        match state.records.get_mut(&key) {
            Some(entry) => {
                entry.totals.add(&self.totals);
                entry.version += 1;
            }
            None if fits => {
                state.records.insert(
                    key,
                    Entry {
                        totals: self.totals,
                        version: 1,
                        shipped: 0,
                    },
                );
            }
            None => {
                inner.metrics.dropped_calls.inc();
            }
        }
        inner.metrics.records.set(state.records.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Router instance, tenant, minute (Unix seconds), method, code.
    type StoredKey = (String, String, i64, String, String);

    /// The control plane's side: each key's latest totals replace the stored ones.
    struct Store {
        fail: std::sync::atomic::AtomicBool,
        rows: Mutex<HashMap<StoredKey, pb::UsageRecord>>,
    }

    impl UsageSink for Store {
        async fn record_usage(&self, request: pb::RecordUsageRequest) -> Result<(), String> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("down".into());
            }
            let mut rows = self.rows.lock().unwrap();
            for record in request.records {
                let minute = record.minute.map_or(0, |m| m.seconds);
                rows.insert(
                    (
                        request.router_instance.clone(),
                        record.tenant_id.clone(),
                        minute,
                        record.method.clone(),
                        record.code.clone(),
                    ),
                    record,
                );
            }
            Ok(())
        }
    }

    fn total_calls(store: &Store) -> u64 {
        store.rows.lock().unwrap().values().map(|r| r.calls).sum()
    }

    #[tokio::test]
    async fn shipping_again_after_a_failure_counts_every_call_once() {
        let meter = UsageMeter::new(1000, UsageMetrics::default());
        let store = Store {
            fail: false.into(),
            rows: Mutex::default(),
        };
        let acme = TenantId::parse("acme").unwrap();
        for _ in 0..3 {
            meter
                .begin(&acme, method::QUERY, 10)
                .finish(tonic::Code::Ok);
        }
        meter.ship(&store).await.unwrap();
        // A failed shipment: the next one carries the totals again, replacing them.
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        meter
            .begin(&acme, method::QUERY, 10)
            .finish(tonic::Code::Ok);
        assert!(meter.ship(&store).await.is_err());
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        meter
            .begin(&acme, method::QUERY, 10)
            .finish(tonic::Code::Ok);
        meter.ship(&store).await.unwrap();
        meter.ship(&store).await.unwrap();
        assert_eq!(total_calls(&store), 5);
        let bytes: u64 = store
            .rows
            .lock()
            .unwrap()
            .values()
            .map(|r| r.bytes_in)
            .sum();
        assert_eq!(bytes, 50);
    }

    #[tokio::test]
    async fn a_call_dropped_unfinished_counts_as_cancelled_and_peaks_are_kept() {
        let meter = UsageMeter::new(1000, UsageMetrics::default());
        let store = Store {
            fail: false.into(),
            rows: Mutex::default(),
        };
        let acme = TenantId::parse("acme").unwrap();
        let first = meter.begin(&acme, method::QUERY_STREAM, 1);
        let second = meter.begin(&acme, method::QUERY_STREAM, 1);
        drop(first);
        second.finish(tonic::Code::Ok);
        meter.ship(&store).await.unwrap();
        let rows = store.rows.lock().unwrap();
        let codes: Vec<&str> = {
            let mut codes: Vec<&str> = rows.values().map(|r| r.code.as_str()).collect();
            codes.sort_unstable();
            codes
        };
        assert_eq!(codes, ["CANCELLED", "OK"]);
        assert_eq!(
            rows.values().map(|r| r.peak_concurrent_calls).max(),
            Some(2)
        );
    }

    #[tokio::test]
    async fn past_the_bound_calls_are_dropped_and_counted() {
        let metrics = UsageMetrics::default();
        let meter = UsageMeter::new(2, metrics.clone());
        for tenant in ["acme", "bolt", "cyan"] {
            let tenant = TenantId::parse(tenant).unwrap();
            meter
                .begin(&tenant, method::EXECUTE, 1)
                .finish(tonic::Code::Ok);
        }
        assert_eq!(metrics.dropped_calls.get(), 1);
        // An existing key still counts.
        let a = TenantId::parse("acme").unwrap();
        meter.begin(&a, method::EXECUTE, 1).finish(tonic::Code::Ok);
        assert_eq!(metrics.dropped_calls.get(), 1);
    }
}
