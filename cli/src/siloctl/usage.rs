//! `siloctl usage`: per-tenant usage by period, as a table with a total, JSON or CSV.

use anyhow::Context as _;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::json;
use silo_proto::controlplane::v1 as pb;

use crate::{
    client::Connection,
    output::{self, Format},
};

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// One tenant (default: every tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// Start (inclusive): RFC 3339 (`2026-11-01T00:00:00Z`), a date (`2026-11-01`, UTC
    /// midnight) or `now`.
    #[arg(long)]
    from: String,
    /// End (exclusive), as `--from`.
    #[arg(long, default_value = "now")]
    to: String,
    /// Period of each row: `minute`, `hour`, `day` or `month`.
    #[arg(long, default_value = "day")]
    granularity: String,
}

/// A point in time from the command line.
fn parse_time(raw: &str) -> anyhow::Result<prost_types::Timestamp> {
    if raw == "now" {
        return Ok(std::time::SystemTime::now().into());
    }
    let full = if raw.len() == 10 {
        format!("{raw}T00:00:00Z")
    } else {
        raw.to_owned()
    };
    full.parse::<prost_types::Timestamp>()
        .with_context(|| format!("{raw} is not an RFC 3339 time or a YYYY-MM-DD date"))
}

fn granularity(raw: &str) -> anyhow::Result<pb::UsageGranularity> {
    Ok(match raw {
        "minute" => pb::UsageGranularity::Minute,
        "hour" => pb::UsageGranularity::Hour,
        "day" => pb::UsageGranularity::Day,
        "month" => pb::UsageGranularity::Month,
        other => anyhow::bail!("unknown granularity {other}: minute, hour, day or month"),
    })
}

const COLUMNS: [&str; 12] = [
    "tenant",
    "period_start",
    "calls",
    "failed_calls",
    "rows_returned",
    "rows_affected",
    "bytes_in",
    "bytes_out",
    "db_time_ms",
    "peak_concurrent_calls",
    "database_bytes",
    "by_method",
];

fn cells(period: &pb::UsagePeriod) -> Vec<String> {
    let by_method = period
        .by_method
        .iter()
        .map(|m| {
            let method = m.method.rsplit('/').next().unwrap_or(&m.method);
            format!("{method} {} {}", m.code, m.calls)
        })
        .collect::<Vec<_>>()
        .join("; ");
    vec![
        period.tenant_id.clone(),
        output::timestamp(period.period_start.as_ref()),
        period.calls.to_string(),
        period.failed_calls.to_string(),
        period.rows_returned.to_string(),
        period.rows_affected.to_string(),
        period.bytes_in.to_string(),
        period.bytes_out.to_string(),
        format!("{:.3}", period.db_time_us as f64 / 1000.0),
        period.peak_concurrent_calls.to_string(),
        period.database_bytes.to_string(),
        by_method,
    ]
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn period_json(period: &pb::UsagePeriod) -> serde_json::Value {
    json!({
        "tenant_id": period.tenant_id,
        "period_start": output::timestamp(period.period_start.as_ref()),
        "calls": period.calls,
        "failed_calls": period.failed_calls,
        "rows_returned": period.rows_returned,
        "rows_affected": period.rows_affected,
        "bytes_in": period.bytes_in,
        "bytes_out": period.bytes_out,
        "db_time_us": period.db_time_us,
        "peak_concurrent_calls": period.peak_concurrent_calls,
        "database_bytes": period.database_bytes,
        "by_method": period.by_method.iter().map(|m| json!({
            "method": m.method, "code": m.code, "calls": m.calls,
        })).collect::<Vec<_>>(),
    })
}

pub async fn run(connection: &Connection, args: UsageArgs, format: Format) -> anyhow::Result<()> {
    let usage = connection
        .client()
        .get_usage(connection.request(pb::GetUsageRequest {
            tenant_id: args.tenant.unwrap_or_default(),
            from: Some(parse_time(&args.from)?),
            to: Some(parse_time(&args.to)?),
            granularity: granularity(&args.granularity)?.into(),
        })?)
        .await?
        .into_inner();
    let total = usage.total.unwrap_or_default();
    match format {
        Format::Json => output::print_json(&json!({
            "periods": usage.periods.iter().map(period_json).collect::<Vec<_>>(),
            "total": period_json(&total),
        })),
        // One line per period, no total (a spreadsheet sums them).
        Format::Csv => {
            println!("{}", COLUMNS.join(","));
            for period in &usage.periods {
                let line: Vec<String> = cells(period).iter().map(|c| csv_field(c)).collect();
                println!("{}", line.join(","));
            }
        }
        Format::Table => {
            let mut table = Table::new();
            table.load_style(UTF8_BORDERS_ONLY).set_header(COLUMNS);
            for period in &usage.periods {
                table.add_row(cells(period));
            }
            let mut last = cells(&total);
            last[0] = "total".into();
            last[1] = String::new();
            last[11] = String::new();
            table.add_row(last);
            println!("{table}");
        }
    }
    Ok(())
}
