//! SetTenantConfig, UnsetTenantConfig, GetTenantConfig, and the merged settings that
//! ResolveTenant hands routers.

use std::collections::HashMap;

use silo_proto::controlplane::v1 as pb;

use super::{ControlPlaneService, tenant_id};
use crate::{
    catalog::StoredConfig,
    error::{ControlPlaneError, RequestError},
    tenant::TenantId,
    tenant_config::{self, ConfigKey, ConfigRuleError, ConfigValue, Settings},
};

/// A change of one key of a tenant's own configuration, checked on receipt.
pub(super) struct ConfigChange {
    pub tenant: TenantId,
    pub key: ConfigKey,
    /// `None`: remove the tenant's own value.
    pub value: Option<ConfigValue>,
}

impl TryFrom<pb::SetTenantConfigRequest> for ConfigChange {
    type Error = ControlPlaneError;

    fn try_from(request: pb::SetTenantConfigRequest) -> Result<Self, ControlPlaneError> {
        Ok(Self {
            tenant: tenant_id(&request.tenant_id)?,
            key: ConfigKey::parse(&request.key).map_err(RequestError::from)?,
            value: Some(ConfigValue::parse(&request.value_json).map_err(RequestError::from)?),
        })
    }
}

impl TryFrom<pb::UnsetTenantConfigRequest> for ConfigChange {
    type Error = ControlPlaneError;

    fn try_from(request: pb::UnsetTenantConfigRequest) -> Result<Self, ControlPlaneError> {
        Ok(Self {
            tenant: tenant_id(&request.tenant_id)?,
            key: ConfigKey::parse(&request.key).map_err(RequestError::from)?,
            value: None,
        })
    }
}

fn texts(settings: &Settings) -> HashMap<String, String> {
    settings
        .iter()
        .map(|(key, value)| (key.clone(), tenant_config::text(value)))
        .collect()
}

impl ControlPlaneService {
    /// The defaults of the tenant's tier (none when the tier is no longer configured).
    fn tier_defaults(&self, tier: &str) -> Settings {
        self.tiers
            .get(tier)
            .map(|tier| tier.config.clone())
            .unwrap_or_default()
    }

    fn tenant_config_message(&self, tenant: &TenantId, stored: &StoredConfig) -> pb::TenantConfig {
        let defaults = self.tier_defaults(&stored.tier);
        let merged = tenant_config::merge(&defaults, &stored.values);
        pb::TenantConfig {
            tenant_id: tenant.to_string(),
            tier: stored.tier.clone(),
            version: tenant_config::version(stored.revision, &merged),
            settings: texts(&merged),
            tenant_settings: texts(&stored.values),
            tier_defaults: texts(&defaults),
            revision: u64::try_from(stored.revision).unwrap_or(0),
        }
    }

    /// What a route carries: the merged settings and their version.
    pub(super) fn route_config(&self, stored: &StoredConfig) -> pb::RouteConfig {
        let merged = tenant_config::merge(&self.tier_defaults(&stored.tier), &stored.values);
        pb::RouteConfig {
            version: tenant_config::version(stored.revision, &merged),
            settings: texts(&merged),
        }
    }

    /// Sets or removes one key; the tenant's configuration after the change.
    pub(super) async fn change_config(
        &self,
        change: &ConfigChange,
    ) -> Result<pb::TenantConfig, ControlPlaneError> {
        let stored = self
            .catalog
            .change_tenant_config(
                &change.tenant,
                change.key.as_str(),
                change.value.as_ref().map(ConfigValue::json),
                // A removal never breaks a bound; a set may.
                |values| match &change.value {
                    Some(_) => tenant_config::check_settings(values),
                    None => Ok::<(), ConfigRuleError>(()),
                },
            )
            .await?
            .map_err(RequestError::from)?;
        Ok(self.tenant_config_message(&change.tenant, &stored))
    }

    /// The tenant's configuration: merged, its own values, its tier's defaults, version.
    pub(super) async fn get_config(
        &self,
        tenant: &TenantId,
    ) -> Result<pb::TenantConfig, ControlPlaneError> {
        let stored = self.catalog.tenant_config(tenant).await?;
        Ok(self.tenant_config_message(tenant, &stored))
    }
}
