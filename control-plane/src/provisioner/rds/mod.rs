//! The `rds` provisioner: every tenant gets an RDS for PostgreSQL instance of its own.
//!
//! - `place` names the instance (`identifiers`) and, without a Secrets-Manager-managed
//!   password, generates the master password and seals it into the placement, so every
//!   retry creates with the same one.
//! - `ensure_server` describes first, then creates; an instance that already exists is
//!   adopted only if its tags name this tenant (`create`).
//! - `poll_available` runs silo's own status poll (`wait`, `status`).
//! - `admin_access` logs in as the master user for the shared bootstrap steps.
//! - `retire` deletes with a final snapshot (`delete`); `reconcile` compares instances
//!   with the catalog.
//!
//! What RDS taught us (instance id, secret ARN, sealed master password, creation time)
//! lives in the placement's `details` (`RdsDetails`), in the catalog.

pub mod config;
mod create;
mod delete;
mod error;
pub mod identifiers;
pub mod reconcile;
pub mod status;
mod wait;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_rds::types::DbInstance;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use config::{EndpointRewrite, RdsArgs, RdsTierSettings};
pub use error::AwsFault;
pub use reconcile::{ReconcileReport, reconcile};

use silo_tls::postgres::{PgConnector, PgTls};

use super::{AdminAccess, Availability, ProvisionError, Provisioner, TenantSpec};
use crate::{catalog::Placement, config::Tiers, crypto::CredentialCipher};

/// Facts about a tenant's instance, kept in `Placement::details`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdsDetails {
    /// RDS DB instance identifier (`silo-<tenant id>`, cleaned and hashed when the id
    /// breaks RDS's rules).
    pub instance_id: String,
    /// The tenant the instance was made for (its `silo:tenant-id` tag).
    pub tenant_id: String,
    /// Request id of the onboarding that made it (its `silo:request-id` tag).
    pub request_id: String,
    /// The tier whose settings made it (its `silo:tier` tag); also chooses the TLS to it.
    pub tier: String,
    /// The instance's master user, which the bootstrap logs in as.
    pub master_username: String,
    /// The generated master password, sealed (base64); absent when RDS manages it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_password_sealed: Option<String>,
    /// The Secrets Manager secret RDS keeps the master password in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_secret_arn: Option<String>,
    /// ARN of the DB instance, once RDS has reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_arn: Option<String>,
    /// Unix seconds when silo created (or adopted) the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    /// The instance existed already and was adopted (its tags named this tenant).
    #[serde(default)]
    pub adopted: bool,
    /// `host:port` as RDS reports it, before any dev/test rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds_endpoint: Option<String>,
}

impl RdsDetails {
    /// The RDS details stored in a placement; `Permanent` if they are missing or unreadable
    /// (the placement was not made by this provisioner).
    pub fn from_placement(placement: &Placement) -> Result<Self, ProvisionError> {
        serde_json::from_value(placement.details.clone()).map_err(|e| {
            ProvisionError::Permanent(format!(
                "placement {} has no readable RDS details: {e}",
                placement.server
            ))
        })
    }

    fn into_placement(self, host: String, port: u16) -> Result<Placement, ProvisionError> {
        Ok(Placement {
            server: self.instance_id.clone(),
            host,
            port,
            details: serde_json::to_value(&self)
                .map_err(|e| ProvisionError::Permanent(format!("RDS details: {e}")))?,
        })
    }

    fn since_created(&self) -> Option<Duration> {
        let created = UNIX_EPOCH + Duration::from_secs(self.created_at?);
        SystemTime::now().duration_since(created).ok()
    }

    /// Associated data of the sealed master password: bound to the instance.
    fn sealing_context(&self) -> String {
        format!("rds-master:{}", self.instance_id)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The value of the `silo:tenant-id` tag, if the instance has one.
pub fn tenant_tag(instance: &DbInstance) -> Option<&str> {
    instance
        .tag_list()
        .iter()
        .find(|tag| tag.key() == Some(identifiers::TENANT_TAG))
        .and_then(|tag| tag.value())
}

/// Timing of the status poll.
#[derive(Clone, Copy, Debug)]
pub struct PollTiming {
    /// First interval between status polls (`--rds-poll-min-ms`).
    pub min: Duration,
    /// Longest interval between status polls (`--rds-poll-max-ms`); the interval grows with
    /// the instance's age.
    pub max: Duration,
    /// A NotFound this soon after create is eventual consistency, not a lost instance.
    pub not_found_grace: Duration,
}

struct Inner {
    rds: aws_sdk_rds::Client,
    secrets: aws_sdk_secretsmanager::Client,
    cipher: CredentialCipher,
    tiers: BTreeMap<String, RdsTierSettings>,
    rewrites: Vec<EndpointRewrite>,
    timing: PollTiming,
    /// Each tier's TLS to its instances (`verify-full` unless the tier says otherwise).
    tls: BTreeMap<String, (PgTls, PgConnector)>,
}

/// The `rds` provisioner: one RDS for PostgreSQL instance per tenant, made with the
/// settings of the tenant's tier. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct RdsProvisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RdsProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdsProvisioner")
            .field("tiers", &self.inner.tiers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RdsProvisioner {
    /// `tiers`: the instance settings of every tier this provisioner serves.
    pub fn new(
        rds: aws_sdk_rds::Client,
        secrets: aws_sdk_secretsmanager::Client,
        cipher: CredentialCipher,
        tiers: BTreeMap<String, RdsTierSettings>,
        tls: BTreeMap<String, (PgTls, PgConnector)>,
        rewrites: Vec<EndpointRewrite>,
        timing: PollTiming,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                rds,
                secrets,
                cipher,
                tiers,
                rewrites,
                timing,
                tls,
            }),
        }
    }

    /// Builds the provisioner from the `SILO_RDS_*` flags and the tiers that name `rds`.
    pub async fn from_args(
        args: &RdsArgs,
        tiers: &Tiers,
        cipher: CredentialCipher,
    ) -> Result<Self, ProvisionError> {
        let sdk = args.sdk_config().await;
        if sdk.region().is_none() {
            return Err(ProvisionError::Permanent(
                "the rds provisioner needs an AWS region: --rds-region (SILO_RDS_REGION) or the \
                 AWS chain (AWS_REGION, profile)"
                    .into(),
            ));
        }
        let rds_tiers = || {
            tiers
                .tiers
                .iter()
                .filter(|(_, tier)| tier.provisioner == "rds")
        };
        let settings = rds_tiers()
            .map(|(name, tier)| (name.clone(), tier.rds.clone().unwrap_or_default()))
            .collect();
        let tls = rds_tiers()
            .map(|(name, tier)| {
                let tls = tier
                    .tls()
                    .map_err(|e| ProvisionError::Permanent(format!("tier {name}: {e}")))?
                    .unwrap_or_default();
                let connector = tls
                    .connector()
                    .map_err(|e| ProvisionError::Permanent(format!("tier {name}: {e}")))?;
                Ok((name.clone(), (tls, connector)))
            })
            .collect::<Result<_, ProvisionError>>()?;
        Ok(Self::new(
            aws_sdk_rds::Client::new(&sdk),
            aws_sdk_secretsmanager::Client::new(&sdk),
            cipher,
            settings,
            tls,
            args.endpoint_rewrites.clone(),
            PollTiming {
                min: args.poll_min(),
                max: args.poll_max(),
                not_found_grace: args.not_found_grace(),
            },
        ))
    }

    fn settings(&self, tier: &str) -> Result<&RdsTierSettings, ProvisionError> {
        self.inner.tiers.get(tier).ok_or_else(|| {
            ProvisionError::Permanent(format!("tier {tier} has no RDS settings configured"))
        })
    }

    /// The instance, or None when RDS does not know it.
    pub async fn describe(&self, instance_id: &str) -> Result<Option<DbInstance>, AwsFault> {
        let described = self
            .inner
            .rds
            .describe_db_instances()
            .db_instance_identifier(instance_id)
            .send()
            .await;
        match described {
            Ok(output) => Ok(output.db_instances().first().cloned()),
            Err(error) => {
                let fault =
                    AwsFault::from_sdk(&format!("describing RDS instance {instance_id}"), &error);
                if fault.is("DBInstanceNotFound") {
                    Ok(None)
                } else {
                    Err(fault)
                }
            }
        }
    }

    /// The master password: from Secrets Manager when RDS manages it, else unsealed.
    async fn master_password(&self, details: &RdsDetails) -> Result<SecretString, ProvisionError> {
        if let Some(sealed) = &details.master_password_sealed {
            let bytes = STANDARD.decode(sealed).map_err(|_| {
                ProvisionError::Permanent("the sealed master password is damaged".into())
            })?;
            return self
                .inner
                .cipher
                .decrypt(&details.sealing_context(), &bytes)
                .map_err(|e| ProvisionError::Permanent(e.to_string()));
        }
        let arn = details.master_secret_arn.as_deref().ok_or_else(|| {
            ProvisionError::Transient(format!(
                "RDS has not reported the master secret of {} yet",
                details.instance_id
            ))
        })?;
        let secret = self
            .inner
            .secrets
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| AwsFault::from_sdk("reading the master secret", &e))?;
        #[derive(Deserialize)]
        struct MasterSecret {
            password: String,
        }
        let parsed: MasterSecret = secret
            .secret_string()
            .map(serde_json::from_str)
            .transpose()
            .ok()
            .flatten()
            .ok_or_else(|| {
                ProvisionError::Permanent(
                    "the master secret holds no JSON object with a password".into(),
                )
            })?;
        Ok(SecretString::from(parsed.password))
    }

    fn rewrite(&self, host: &str, port: u16) -> (String, u16) {
        config::rewrite_endpoint(&self.inner.rewrites, host, port)
    }
}

impl Provisioner for RdsProvisioner {
    fn place(
        &self,
        tenant: &TenantSpec,
        _load: &[(String, i64)],
    ) -> Result<Placement, ProvisionError> {
        let settings = self.settings(&tenant.tier)?;
        let mut details = RdsDetails {
            instance_id: identifiers::instance_id(&tenant.id),
            tenant_id: tenant.id.to_string(),
            request_id: tenant.request_id.clone(),
            tier: tenant.tier.clone(),
            master_username: settings.master_username.clone(),
            ..RdsDetails::default()
        };
        if !settings.manage_master_password {
            let password = crate::crypto::generate_password();
            let sealed = self
                .inner
                .cipher
                .encrypt(&details.sealing_context(), &password)
                .map_err(|e| ProvisionError::Permanent(e.to_string()))?;
            details.master_password_sealed = Some(STANDARD.encode(sealed));
        }
        details.into_placement(String::new(), 5432)
    }

    async fn ensure_server(
        &self,
        tenant: &TenantSpec,
        placement: &Placement,
    ) -> Result<Placement, ProvisionError> {
        let mut details = RdsDetails::from_placement(placement)?;
        if details.tenant_id != tenant.id.as_str() {
            return Err(ProvisionError::Permanent(format!(
                "placement {} belongs to tenant {}",
                placement.server, details.tenant_id
            )));
        }
        self.ensure_instance(&mut details).await?;
        details.into_placement(placement.host.clone(), placement.port)
    }

    async fn poll_available(
        &self,
        placement: &Placement,
    ) -> Result<(Availability, Placement), ProvisionError> {
        self.poll(placement).await
    }

    async fn admin_access(&self, placement: &Placement) -> Result<AdminAccess, ProvisionError> {
        let details = RdsDetails::from_placement(placement)?;
        if placement.host.is_empty() {
            return Err(ProvisionError::Transient(format!(
                "the endpoint of {} is not known yet",
                details.instance_id
            )));
        }
        let password = self.master_password(&details).await?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&placement.host)
            .port(placement.port)
            .user(&details.master_username)
            .password(password.expose_secret())
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        let (tls, connector) = self.inner.tls.get(&details.tier).cloned().ok_or_else(|| {
            ProvisionError::Permanent(format!(
                "tier {} has no RDS settings configured",
                details.tier
            ))
        })?;
        tls.apply(&mut config);
        Ok(AdminAccess {
            config,
            connector,
            tls,
            shared: false,
        })
    }

    async fn retire(
        &self,
        tenant: &TenantSpec,
        placement: &Placement,
        _keep_database: bool,
    ) -> Result<Availability, ProvisionError> {
        // The whole instance goes; its final snapshot keeps the data either way.
        let details = RdsDetails::from_placement(placement)?;
        self.delete_instance(
            &details.instance_id,
            tenant.id.as_str(),
            &details.request_id,
        )
        .await
    }
}
