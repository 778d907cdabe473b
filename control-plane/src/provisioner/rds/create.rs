//! Create or adopt: describe first, create only when RDS does not know the identifier, and
//! adopt an existing instance only when its `silo:tenant-id` tag names this tenant. An
//! instance of anyone else is never modified; the tenant fails with the reason.

use aws_sdk_rds::{
    config::retry::RetryConfig,
    types::{DbInstance, Tag},
};
use secrecy::ExposeSecret;

use super::{AwsFault, RdsDetails, RdsProvisioner, identifiers, tenant_tag, unix_now};
use crate::provisioner::ProvisionError;

impl RdsProvisioner {
    /// Makes sure the tenant's instance exists and is ours; fills in what RDS reports.
    pub(super) async fn ensure_instance(
        &self,
        details: &mut RdsDetails,
    ) -> Result<(), ProvisionError> {
        if let Some(instance) = self.describe(&details.instance_id).await? {
            return self.adopt(details, &instance);
        }
        match self.create(details).await {
            Ok(instance) => {
                tracing::info!(instance_id = %details.instance_id, "rds instance creation requested");
                details.created_at = Some(unix_now());
                details.adopted = false;
                record(details, &instance);
                Ok(())
            }
            Err(fault) if fault.is("DBInstanceAlreadyExists") => {
                match self.describe(&details.instance_id).await? {
                    Some(instance) => self.adopt(details, &instance),
                    None => Err(ProvisionError::Transient(format!(
                        "RDS instance {} exists but cannot be described yet",
                        details.instance_id
                    ))),
                }
            }
            Err(fault) => Err(fault.into()),
        }
    }

    /// Takes over an instance that exists already, if its tags say it is this tenant's.
    fn adopt(&self, details: &mut RdsDetails, instance: &DbInstance) -> Result<(), ProvisionError> {
        match tenant_tag(instance) {
            Some(owner) if owner == details.tenant_id => {
                if details.created_at.is_none() {
                    tracing::info!(instance_id = %details.instance_id, "adopting existing rds instance");
                    details.created_at = Some(unix_now());
                    details.adopted = true;
                }
                record(details, instance);
                Ok(())
            }
            owner => Err(ProvisionError::Permanent(format!(
                "RDS instance {} already exists and is not this tenant's ({}); it was left untouched",
                details.instance_id,
                owner.map_or_else(
                    || format!("no {} tag", identifiers::TENANT_TAG),
                    |o| format!("{} = {o}", identifiers::TENANT_TAG)
                ),
            ))),
        }
    }

    /// CreateDBInstance, never repeated by the SDK itself: whether a failed call made the
    /// instance is learnt by describing it on the step's next attempt.
    async fn create(&self, details: &RdsDetails) -> Result<DbInstance, AwsFault> {
        let context = format!("creating RDS instance {}", details.instance_id);
        let settings = self.settings(&details.tier).map_err(|e| AwsFault {
            code: None,
            message: e.to_string(),
            transient: false,
        })?;
        let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
        let mut request = self
            .inner
            .rds
            .create_db_instance()
            .db_instance_identifier(&details.instance_id)
            .engine("postgres")
            .set_engine_version(settings.engine_version.clone())
            .db_instance_class(&settings.instance_class)
            .allocated_storage(settings.allocated_storage_gb)
            .set_storage_type(settings.storage_type.clone())
            .master_username(&details.master_username)
            .storage_encrypted(true)
            .set_kms_key_id(settings.kms_key_id.clone())
            .deletion_protection(settings.deletion_protection)
            .multi_az(settings.multi_az)
            .publicly_accessible(settings.publicly_accessible)
            .set_db_subnet_group_name(settings.db_subnet_group.clone())
            .set_vpc_security_group_ids(
                (!settings.vpc_security_group_ids.is_empty())
                    .then(|| settings.vpc_security_group_ids.clone()),
            )
            .set_db_parameter_group_name(settings.db_parameter_group.clone())
            .set_backup_retention_period(settings.backup_retention_days)
            .copy_tags_to_snapshot(true)
            .tags(tag(identifiers::TENANT_TAG, &details.tenant_id))
            .tags(tag(identifiers::REQUEST_TAG, &details.request_id))
            .tags(tag(identifiers::TIER_TAG, &details.tier));
        if details.master_password_sealed.is_some() {
            let password = self.master_password(details).await.map_err(|e| AwsFault {
                code: None,
                message: e.to_string(),
                transient: false,
            })?;
            request = request.master_user_password(password.expose_secret());
        } else {
            request = request
                .manage_master_user_password(true)
                .set_master_user_secret_kms_key_id(settings.kms_key_id.clone());
        }
        let created = request
            .customize()
            .config_override(
                aws_sdk_rds::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| AwsFault::from_sdk(&context, &e))?;
        created.db_instance().cloned().ok_or_else(|| AwsFault {
            code: None,
            message: format!("{context}: RDS returned no instance"),
            transient: true,
        })
    }
}

/// Copies what RDS reports about the instance into the placement details.
fn record(details: &mut RdsDetails, instance: &DbInstance) {
    if let Some(arn) = instance.db_instance_arn() {
        details.instance_arn = Some(arn.to_owned());
    }
    if let Some(arn) = instance.master_user_secret().and_then(|s| s.secret_arn()) {
        details.master_secret_arn = Some(arn.to_owned());
    }
}
