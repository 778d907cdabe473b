//! `siloctl query` and `siloctl exec`: one SQL statement in a tenant's silo, through the
//! router, with the caller's token (a token for that tenant, or a service token whose
//! `tenants` claim allows it, with `--tenant` sent as `x-tenant-id`).

use anyhow::Context as _;
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use silo_proto::router::v1::{self as rpb, router_client::RouterClient};
use tonic::{Request, transport::Channel};

use crate::{output::Format, values};

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The tenant to act for, sent as `x-tenant-id` (must match a tenant token's claim;
    /// required with a service token).
    #[arg(long)]
    tenant: Option<String>,
    /// `$1`, `$2`, ... in order; JSON literals (`42`, `true`, `null`, `"42"`), anything else
    /// is text.
    #[arg(short = 'p', long = "param")]
    params: Vec<String>,
    /// The SQL statement.
    sql: String,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    sql: SqlArgs,
    /// Most rows returned (0: the router's default); more is RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 0)]
    max_rows: u32,
}

/// The router connection and the metadata every call carries.
pub struct RouterConnection {
    client: RouterClient<Channel>,
    token: Option<String>,
}

impl RouterConnection {
    pub async fn new(
        endpoint: &str,
        token: Option<String>,
        tls: &silo_tls::grpc::ClientTls,
    ) -> anyhow::Result<Self> {
        let channel = crate::client::channel(endpoint, tls, "router").await?;
        Ok(Self {
            client: RouterClient::new(channel),
            token,
        })
    }

    fn request<T>(&self, message: T, tenant: Option<&str>) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .context("the token is not a valid header value")?;
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(tenant) = tenant {
            let value = tenant
                .parse()
                .with_context(|| format!("{tenant:?} is not a valid tenant header"))?;
            request.metadata_mut().insert("x-tenant-id", value);
        }
        Ok(request)
    }
}

fn statement(args: &SqlArgs) -> rpb::Statement {
    rpb::Statement {
        sql: args.sql.clone(),
        params: args.params.iter().map(|raw| values::param(raw)).collect(),
    }
}

pub async fn query(
    connection: &RouterConnection,
    args: QueryArgs,
    format: Format,
) -> anyhow::Result<()> {
    let request = rpb::QueryRequest {
        statement: Some(statement(&args.sql)),
        max_rows: args.max_rows,
    };
    let response = connection
        .client
        .clone()
        .query(connection.request(request, args.sql.tenant.as_deref())?)
        .await?
        .into_inner();
    match format {
        Format::Json => crate::output::print_json(&serde_json::Value::Array(
            response
                .rows
                .iter()
                .map(|row| values::row_json(&response.columns, row))
                .collect(),
        )),
        Format::Table | Format::Csv => {
            println!("{}", rows_table(&response));
            let count = response.rows.len();
            println!("({count} row{})", if count == 1 { "" } else { "s" });
        }
    }
    Ok(())
}

pub async fn exec(
    connection: &RouterConnection,
    args: SqlArgs,
    format: Format,
) -> anyhow::Result<()> {
    let request = rpb::ExecuteRequest {
        statement: Some(statement(&args)),
    };
    let response = connection
        .client
        .clone()
        .execute(connection.request(request, args.tenant.as_deref())?)
        .await?
        .into_inner();
    match format {
        Format::Json => crate::output::print_json(
            &serde_json::json!({ "rows_affected": response.rows_affected }),
        ),
        Format::Table | Format::Csv => println!(
            "{} row{} affected",
            response.rows_affected,
            if response.rows_affected == 1 { "" } else { "s" }
        ),
    }
    Ok(())
}

fn rows_table(response: &rpb::QueryResponse) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_BORDERS_ONLY)
        .set_header(response.columns.iter().map(|column| column.name.clone()));
    for row in &response.rows {
        table.add_row(row.values.iter().map(values::cell));
    }
    table
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The tenant to act for, sent as `x-tenant-id` (must match a tenant token's claim;
    /// required with a service token).
    #[arg(long)]
    tenant: Option<String>,
    /// The version already held: when it is current, only that is printed.
    #[arg(long, default_value = "")]
    if_version: String,
}

/// `siloctl config`: the calling tenant's settings as the router serves them (GetConfig).
pub async fn config(
    router: &RouterConnection,
    args: ConfigArgs,
    format: Format,
) -> anyhow::Result<()> {
    let answer = router
        .client
        .clone()
        .get_config(router.request(
            rpb::GetConfigRequest {
                if_version: args.if_version,
            },
            args.tenant.as_deref(),
        )?)
        .await?
        .into_inner();
    let settings: std::collections::BTreeMap<String, serde_json::Value> = answer
        .settings
        .iter()
        .map(|(key, text)| {
            let value = serde_json::from_str(text)
                .unwrap_or_else(|_| serde_json::Value::String(text.clone()));
            (key.clone(), value)
        })
        .collect();
    match format {
        Format::Json => crate::output::print_json(&serde_json::json!({
            "version": answer.version,
            "not_modified": answer.not_modified,
            "settings": settings,
        })),
        Format::Table | Format::Csv => {
            if !answer.not_modified {
                let mut table = Table::new();
                table
                    .load_style(UTF8_BORDERS_ONLY)
                    .set_header(["KEY", "VALUE"]);
                for (key, value) in &settings {
                    table.add_row([key.clone(), value.to_string()]);
                }
                println!("{table}");
            }
            println!(
                "version {}{}",
                answer.version,
                if answer.not_modified {
                    " (not modified)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
