//! RecordUsage (routers' per-minute records) and GetUsage (sums by period).

use std::time::{Duration, SystemTime};

use silo_proto::controlplane::v1 as pb;

use super::convert;
use crate::{
    catalog::{Catalog, UsageBucket, UsagePeriod, UsageRecord},
    error::{ControlPlaneError, RequestError},
};

/// Most records in one RecordUsage call (a router sends in batches of at most this).
pub const MAX_RECORDS_PER_CALL: usize = 5_000;

/// Most periods GetUsage answers with in one call.
const MAX_PERIODS: usize = 100_000;

fn invalid(message: impl Into<String>) -> ControlPlaneError {
    RequestError::Usage(message.into()).into()
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn time(
    timestamp: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<SystemTime, ControlPlaneError> {
    let timestamp = timestamp.ok_or_else(|| invalid(format!("{field} is required")))?;
    SystemTime::try_from(*timestamp).map_err(|_| invalid(format!("{field} is out of range")))
}

/// Stores a router's records; returns how many.
pub async fn record(
    catalog: &Catalog,
    request: pb::RecordUsageRequest,
) -> Result<u32, ControlPlaneError> {
    if request.router_instance.is_empty() || request.router_instance.len() > 128 {
        return Err(invalid("router_instance must be 1 to 128 characters"));
    }
    if request.records.len() > MAX_RECORDS_PER_CALL {
        return Err(invalid(format!(
            "at most {MAX_RECORDS_PER_CALL} records per call"
        )));
    }
    let mut records = Vec::with_capacity(request.records.len());
    for record in request.records {
        let minute = time(record.minute.as_ref(), "minute")?;
        let since_epoch = minute
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| invalid("minute is before 1970"))?;
        if since_epoch.subsec_nanos() != 0 || since_epoch.as_secs() % 60 != 0 {
            return Err(invalid("minute must be a whole minute"));
        }
        if record.tenant_id.is_empty() || record.tenant_id.len() > 128 {
            return Err(invalid("tenant_id must be 1 to 128 characters"));
        }
        if record.method.len() > 200 || record.code.len() > 64 {
            return Err(invalid("method or code too long"));
        }
        records.push(UsageRecord {
            tenant_id: record.tenant_id,
            minute,
            method: record.method,
            code: record.code,
            calls: count(record.calls),
            rows_returned: count(record.rows_returned),
            rows_affected: count(record.rows_affected),
            bytes_in: count(record.bytes_in),
            bytes_out: count(record.bytes_out),
            db_time_us: count(record.db_time_us),
            peak_concurrent: i32::try_from(record.peak_concurrent_calls).unwrap_or(i32::MAX),
        });
    }
    let stored = catalog
        .record_usage(&request.router_instance, &records)
        .await?;
    Ok(u32::try_from(stored).unwrap_or(u32::MAX))
}

fn period(period: &UsagePeriod) -> pb::UsagePeriod {
    let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
    pb::UsagePeriod {
        tenant_id: period.tenant_id.clone(),
        period_start: period.period_start.map(convert::timestamp),
        calls: unsigned(period.calls),
        failed_calls: unsigned(period.failed_calls),
        rows_returned: unsigned(period.rows_returned),
        rows_affected: unsigned(period.rows_affected),
        bytes_in: unsigned(period.bytes_in),
        bytes_out: unsigned(period.bytes_out),
        db_time_us: unsigned(period.db_time_us),
        peak_concurrent_calls: u32::try_from(period.peak_concurrent).unwrap_or(u32::MAX),
        database_bytes: unsigned(period.database_bytes),
        by_method: period
            .by_method
            .iter()
            .map(|(method, code, calls)| pb::MethodCalls {
                method: method.clone(),
                code: code.clone(),
                calls: unsigned(*calls),
            })
            .collect(),
    }
}

/// GetUsage: the periods of `[from, to)` and their total.
pub async fn get(
    catalog: &Catalog,
    request: pb::GetUsageRequest,
) -> Result<pb::GetUsageResponse, ControlPlaneError> {
    let from = time(request.from.as_ref(), "from")?;
    let to = time(request.to.as_ref(), "to")?;
    if from >= to {
        return Err(invalid("from must be before to"));
    }
    let bucket = match pb::UsageGranularity::try_from(request.granularity) {
        Ok(pb::UsageGranularity::Minute) => UsageBucket::Minute,
        Ok(pb::UsageGranularity::Unspecified | pb::UsageGranularity::Hour) => UsageBucket::Hour,
        Ok(pb::UsageGranularity::Day) => UsageBucket::Day,
        Ok(pb::UsageGranularity::Month) => UsageBucket::Month,
        Err(_) => return Err(invalid("unknown granularity")),
    };
    if bucket == UsageBucket::Minute
        && to.duration_since(from).unwrap_or_default() > Duration::from_secs(31 * 24 * 3600)
    {
        return Err(invalid("by minute, at most 31 days at once"));
    }
    let tenant = (!request.tenant_id.is_empty()).then_some(request.tenant_id.as_str());
    let periods = catalog.usage(tenant, from, to, bucket).await?;
    if periods.len() > MAX_PERIODS {
        return Err(invalid(format!(
            "more than {MAX_PERIODS} periods: ask for a coarser granularity or a shorter range"
        )));
    }
    let mut total = UsagePeriod::default();
    for p in &periods {
        total.calls += p.calls;
        total.failed_calls += p.failed_calls;
        total.rows_returned += p.rows_returned;
        total.rows_affected += p.rows_affected;
        total.bytes_in += p.bytes_in;
        total.bytes_out += p.bytes_out;
        total.db_time_us += p.db_time_us;
        total.peak_concurrent = total.peak_concurrent.max(p.peak_concurrent);
        total.database_bytes = total.database_bytes.max(p.database_bytes);
    }
    Ok(pb::GetUsageResponse {
        periods: periods.iter().map(period).collect(),
        total: Some(period(&total)),
    })
}
