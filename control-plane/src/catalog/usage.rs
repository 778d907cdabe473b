//! Usage metering in the catalog: routers' per-minute records (`tenant_usage`, replaced
//! per key, so a record sent twice counts once), sampled database sizes, and the sums
//! GetUsage answers with.

use std::time::SystemTime;

use super::{Catalog, CatalogError};

/// One router instance's running totals for a tenant, minute, method and code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The tenant the calls were made for.
    pub tenant_id: String,
    /// Start of the minute the calls ended in (whole minutes, UTC).
    pub minute: SystemTime,
    /// The gRPC method's path.
    pub method: String,
    /// The gRPC code's name the calls ended with.
    pub code: String,
    /// Calls.
    pub calls: i64,
    /// Rows sent back.
    pub rows_returned: i64,
    /// Rows INSERT / UPDATE / DELETE reported.
    pub rows_affected: i64,
    /// Encoded request message bytes.
    pub bytes_in: i64,
    /// Encoded response message bytes.
    pub bytes_out: i64,
    /// Time spent waiting on the tenant's database, in µs.
    pub db_time_us: i64,
    /// The most calls of the tenant the instance had running at once in the minute.
    pub peak_concurrent: i32,
}

/// How GetUsage buckets minutes (PostgreSQL `date_trunc` units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageBucket {
    /// Minutes.
    Minute,
    /// Hours.
    Hour,
    /// Days (UTC).
    Day,
    /// Calendar months (UTC).
    Month,
}

impl UsageBucket {
    fn unit(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// One tenant's usage in one period, summed over routers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsagePeriod {
    /// The tenant.
    pub tenant_id: String,
    /// The period's start.
    pub period_start: Option<SystemTime>,
    /// Calls.
    pub calls: i64,
    /// Calls that ended with a code other than `OK`.
    pub failed_calls: i64,
    /// Rows sent back.
    pub rows_returned: i64,
    /// Rows written.
    pub rows_affected: i64,
    /// Request bytes.
    pub bytes_in: i64,
    /// Response bytes.
    pub bytes_out: i64,
    /// Database time, µs.
    pub db_time_us: i64,
    /// The most calls running at once in a minute of the period, over all routers.
    pub peak_concurrent: i64,
    /// The largest sampled database size in the period, bytes.
    pub database_bytes: i64,
    /// Calls by method and code.
    pub by_method: Vec<(String, String, i64)>,
}

impl Catalog {
    /// Stores `records` of `router_instance`, each replacing the stored totals of its key.
    /// Returns how many were stored.
    pub async fn record_usage(
        &self,
        router_instance: &str,
        records: &[UsageRecord],
    ) -> Result<u64, CatalogError> {
        if records.is_empty() {
            return Ok(0);
        }
        let column = |f: fn(&UsageRecord) -> i64| records.iter().map(f).collect::<Vec<i64>>();
        let tenants: Vec<&str> = records.iter().map(|r| r.tenant_id.as_str()).collect();
        let minutes: Vec<SystemTime> = records.iter().map(|r| r.minute).collect();
        let methods: Vec<&str> = records.iter().map(|r| r.method.as_str()).collect();
        let codes: Vec<&str> = records.iter().map(|r| r.code.as_str()).collect();
        let peaks: Vec<i32> = records.iter().map(|r| r.peak_concurrent).collect();
        let conn = self.conn().await?;
        let stored = conn
            .execute(
                "INSERT INTO tenant_usage (tenant_id, minute, router_instance, method, code,
                     calls, rows_returned, rows_affected, bytes_in, bytes_out, db_time_us,
                     peak_concurrent)
                 SELECT t, m, $1, me, c, ca, rr, ra, bi, bo, dt, pk
                 FROM unnest($2::text[], $3::timestamptz[], $4::text[], $5::text[],
                             $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                             $10::bigint[], $11::bigint[], $12::int[])
                      AS u(t, m, me, c, ca, rr, ra, bi, bo, dt, pk)
                 ON CONFLICT (tenant_id, minute, router_instance, method, code) DO UPDATE SET
                     calls = excluded.calls,
                     rows_returned = excluded.rows_returned,
                     rows_affected = excluded.rows_affected,
                     bytes_in = excluded.bytes_in,
                     bytes_out = excluded.bytes_out,
                     db_time_us = excluded.db_time_us,
                     peak_concurrent = excluded.peak_concurrent",
                &[
                    &router_instance,
                    &tenants,
                    &minutes,
                    &methods,
                    &codes,
                    &column(|r| r.calls),
                    &column(|r| r.rows_returned),
                    &column(|r| r.rows_affected),
                    &column(|r| r.bytes_in),
                    &column(|r| r.bytes_out),
                    &column(|r| r.db_time_us),
                    &peaks,
                ],
            )
            .await?;
        Ok(stored)
    }

    /// Records the sampled database size of each tenant in `sizes` (tenant id, bytes).
    pub async fn record_database_sizes(
        &self,
        sampled_at: SystemTime,
        sizes: &[(String, i64)],
    ) -> Result<(), CatalogError> {
        if sizes.is_empty() {
            return Ok(());
        }
        let tenants: Vec<&str> = sizes.iter().map(|(t, _)| t.as_str()).collect();
        let bytes: Vec<i64> = sizes.iter().map(|(_, b)| *b).collect();
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO tenant_database_sizes (tenant_id, sampled_at, bytes)
             SELECT t, $1, b FROM unnest($2::text[], $3::bigint[]) AS s(t, b)
             ON CONFLICT (tenant_id, sampled_at) DO UPDATE SET bytes = excluded.bytes",
            &[&sampled_at, &tenants, &bytes],
        )
        .await?;
        Ok(())
    }

    /// Usage in `[from, to)` by `bucket`, of `tenant` or of every tenant, ordered by
    /// period then tenant. The peak of a minute is the sum over router instances of each
    /// one's peak; a period's peak is its largest minute's.
    pub async fn usage(
        &self,
        tenant: Option<&str>,
        from: SystemTime,
        to: SystemTime,
        bucket: UsageBucket,
    ) -> Result<Vec<UsagePeriod>, CatalogError> {
        let conn = self.conn().await?;
        let unit = bucket.unit();
        let rows = conn
            .query(
                "WITH per_instance AS (
                     SELECT tenant_id, minute, router_instance,
                            sum(calls) AS calls,
                            sum(calls) FILTER (WHERE code <> 'OK') AS failed,
                            sum(rows_returned) AS rows_returned,
                            sum(rows_affected) AS rows_affected,
                            sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
                            sum(db_time_us) AS db_time_us,
                            max(peak_concurrent) AS peak
                     FROM tenant_usage
                     WHERE minute >= $2 AND minute < $3 AND ($1::text IS NULL OR tenant_id = $1)
                     GROUP BY tenant_id, minute, router_instance),
                 per_minute AS (
                     SELECT tenant_id, minute, sum(calls) AS calls,
                            coalesce(sum(failed), 0) AS failed,
                            sum(rows_returned) AS rows_returned,
                            sum(rows_affected) AS rows_affected,
                            sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
                            sum(db_time_us) AS db_time_us, sum(peak) AS peak
                     FROM per_instance GROUP BY tenant_id, minute),
                 periods AS (
                     SELECT tenant_id, date_trunc($4, minute, 'UTC') AS period,
                            sum(calls)::bigint AS calls, sum(failed)::bigint AS failed,
                            sum(rows_returned)::bigint AS rows_returned,
                            sum(rows_affected)::bigint AS rows_affected,
                            sum(bytes_in)::bigint AS bytes_in,
                            sum(bytes_out)::bigint AS bytes_out,
                            sum(db_time_us)::bigint AS db_time_us,
                            max(peak)::bigint AS peak
                     FROM per_minute GROUP BY 1, 2)
                 SELECT p.*, coalesce((
                     SELECT max(bytes) FROM tenant_database_sizes s
                     WHERE s.tenant_id = p.tenant_id
                       AND date_trunc($4, s.sampled_at, 'UTC') = p.period
                       AND s.sampled_at >= $2 AND s.sampled_at < $3), 0) AS database_bytes
                 FROM periods p ORDER BY period, tenant_id",
                &[&tenant, &from, &to, &unit],
            )
            .await?;
        let mut periods = Vec::with_capacity(rows.len());
        for row in &rows {
            periods.push(UsagePeriod {
                tenant_id: row.try_get("tenant_id")?,
                period_start: Some(row.try_get("period")?),
                calls: row.try_get("calls")?,
                failed_calls: row.try_get("failed")?,
                rows_returned: row.try_get("rows_returned")?,
                rows_affected: row.try_get("rows_affected")?,
                bytes_in: row.try_get("bytes_in")?,
                bytes_out: row.try_get("bytes_out")?,
                db_time_us: row.try_get("db_time_us")?,
                peak_concurrent: row.try_get("peak")?,
                database_bytes: row.try_get("database_bytes")?,
                by_method: Vec::new(),
            });
        }
        let methods = conn
            .query(
                "SELECT tenant_id, date_trunc($4, minute, 'UTC') AS period, method, code,
                        sum(calls)::bigint
                 FROM tenant_usage
                 WHERE minute >= $2 AND minute < $3 AND ($1::text IS NULL OR tenant_id = $1)
                 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                &[&tenant, &from, &to, &unit],
            )
            .await?;
        for row in &methods {
            let tenant: String = row.try_get(0)?;
            let period: SystemTime = row.try_get(1)?;
            if let Some(target) = periods
                .iter_mut()
                .find(|p| p.tenant_id == tenant && p.period_start == Some(period))
            {
                target
                    .by_method
                    .push((row.try_get(2)?, row.try_get(3)?, row.try_get(4)?));
            }
        }
        Ok(periods)
    }

    /// Deletes at most `batch` usage rows and database-size samples older than `cutoff`;
    /// returns how many went.
    pub async fn delete_usage_before(
        &self,
        cutoff: SystemTime,
        batch: i64,
    ) -> Result<u64, CatalogError> {
        let conn = self.conn().await?;
        let usage = conn
            .execute(
                "DELETE FROM tenant_usage WHERE ctid IN (
                     SELECT ctid FROM tenant_usage WHERE minute < $1 LIMIT $2)",
                &[&cutoff, &batch],
            )
            .await?;
        let sizes = conn
            .execute(
                "DELETE FROM tenant_database_sizes WHERE ctid IN (
                     SELECT ctid FROM tenant_database_sizes WHERE sampled_at < $1 LIMIT $2)",
                &[&cutoff, &batch],
            )
            .await?;
        Ok(usage + sizes)
    }
}
