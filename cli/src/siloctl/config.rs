//! `siloctl tenants config ...`: a tenant's settings (key → JSON value) and their tier
//! defaults.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};
use silo_proto::controlplane::v1 as pb;

use crate::{
    client::Connection,
    output::{self, Format},
};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show the tenant's settings as services see them (tier defaults overridden by the
    /// tenant's own values), where each comes from, and their version.
    Get { tenant_id: String },
    /// Set one of the tenant's own settings; routers serve it within a second.
    Set {
        tenant_id: String,
        /// 1 to 128 of [a-z0-9_.-], starting with a letter or digit.
        key: String,
        /// One JSON value: true, 42, '"eu"' (a string keeps its quotes), '{"seats": 50}'.
        value: String,
    },
    /// Remove one of the tenant's own settings (the tier's default, if any, applies again).
    Unset { tenant_id: String, key: String },
}

/// A map of JSON texts, parsed (a text that does not parse is kept as a string).
fn parsed(texts: &HashMap<String, String>) -> BTreeMap<String, Value> {
    texts
        .iter()
        .map(|(key, text)| {
            let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
            (key.clone(), value)
        })
        .collect()
}

fn config_json(config: &pb::TenantConfig) -> Value {
    json!({
        "tenant_id": config.tenant_id,
        "tier": config.tier,
        "version": config.version,
        "revision": config.revision,
        "settings": parsed(&config.settings),
        "tenant_settings": parsed(&config.tenant_settings),
        "tier_defaults": parsed(&config.tier_defaults),
    })
}

fn config_table(config: &pb::TenantConfig) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_BORDERS_ONLY)
        .set_header(["KEY", "VALUE", "FROM"]);
    let keys: BTreeMap<_, _> = config.settings.iter().collect();
    for (key, value) in keys {
        let from = match (
            config.tenant_settings.contains_key(key),
            config.tier_defaults.contains_key(key),
        ) {
            (true, true) => "tenant (overrides tier)",
            (true, false) => "tenant",
            (false, _) => "tier",
        };
        table.add_row([key.clone(), value.clone(), from.to_owned()]);
    }
    table
}

fn print(config: &pb::TenantConfig, format: Format) {
    match format {
        Format::Json => output::print_json(&config_json(config)),
        Format::Table | Format::Csv => {
            println!("{}", config_table(config));
            println!(
                "tenant {} tier {} version {} (revision {})",
                config.tenant_id, config.tier, config.version, config.revision
            );
        }
    }
}

pub async fn run(
    connection: &Connection,
    command: ConfigCommand,
    format: Format,
) -> anyhow::Result<()> {
    let mut client = connection.client();
    let config = match command {
        ConfigCommand::Get { tenant_id } => {
            client
                .get_tenant_config(connection.request(pb::GetTenantConfigRequest { tenant_id })?)
                .await?
        }
        ConfigCommand::Set {
            tenant_id,
            key,
            value,
        } => {
            serde_json::from_str::<Value>(&value).with_context(|| {
                format!(
                    "the value {value:?} is not JSON (a string needs its quotes: '\"{value}\"')"
                )
            })?;
            client
                .set_tenant_config(connection.request(pb::SetTenantConfigRequest {
                    tenant_id,
                    key,
                    value_json: value,
                })?)
                .await?
        }
        ConfigCommand::Unset { tenant_id, key } => {
            client
                .unset_tenant_config(
                    connection.request(pb::UnsetTenantConfigRequest { tenant_id, key })?,
                )
                .await?
        }
    };
    print(&config.into_inner(), format);
    Ok(())
}
