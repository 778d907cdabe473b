//! Configuration of the `rds` provisioner: the `SILO_RDS_*` flags, the per-tier instance
//! settings (`[tiers.NAME.rds]` in the tiers file), the dev/test endpoint rewrite map, and
//! the AWS clients built from them (credentials from the standard AWS chain).

use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// How one tier's RDS instances are made. Every field has a default, so a tier with
/// `provisioner = "rds"` and no `[tiers.NAME.rds]` table gets a small encrypted instance.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RdsTierSettings {
    /// RDS instance class, e.g. `db.t4g.micro` (the default).
    pub instance_class: String,
    /// Allocated storage in GiB (RDS's `AllocatedStorage`); default 20.
    pub allocated_storage_gb: i32,
    /// RDS storage type (`gp3`, `gp2`, `io1`, ...); empty: RDS's default.
    pub storage_type: Option<String>,
    /// Empty: RDS's default PostgreSQL version.
    pub engine_version: Option<String>,
    /// DB subnet group the instance is placed in (its VPC); empty: the default VPC.
    pub db_subnet_group: Option<String>,
    /// VPC security groups of the instance; empty: the VPC's default group.
    pub vpc_security_group_ids: Vec<String>,
    /// DB parameter group; empty: RDS's default for the engine version.
    pub db_parameter_group: Option<String>,
    /// KMS key for storage encryption (and the managed master secret); empty: the AWS key.
    pub kms_key_id: Option<String>,
    /// Create a Multi-AZ deployment (a standby in another availability zone).
    pub multi_az: bool,
    /// Give the instance a public DNS address; false keeps it inside the VPC.
    pub publicly_accessible: bool,
    /// Days RDS keeps automated backups (0 turns them off); empty: RDS's default.
    pub backup_retention_days: Option<i32>,
    /// Master user of the instance; the bootstrap logs in as it to make the tenant's
    /// database and role.
    pub master_username: String,
    /// true: RDS keeps the master password in Secrets Manager and silo reads it from there;
    /// false: silo generates it and keeps it encrypted in the catalog.
    pub manage_master_password: bool,
    /// RDS deletion protection; deletion turns it off just before deleting the instance.
    pub deletion_protection: bool,
}

impl Default for RdsTierSettings {
    fn default() -> Self {
        Self {
            instance_class: "db.t4g.micro".into(),
            allocated_storage_gb: 20,
            storage_type: None,
            engine_version: None,
            db_subnet_group: None,
            vpc_security_group_ids: Vec::new(),
            db_parameter_group: None,
            kms_key_id: None,
            multi_az: false,
            publicly_accessible: false,
            backup_retention_days: None,
            master_username: "silo_admin".into(),
            manage_master_password: true,
            deletion_protection: true,
        }
    }
}

/// `FROM=HOST:PORT`: routes an instance endpoint RDS reports (`host`, `host:port`, or `*`
/// for every instance) to another address. For tests and local development only, so the
/// bootstrap step can run against a local PostgreSQL server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRewrite {
    /// The endpoint to match: `host`, `host:port`, or `*`.
    pub from: String,
    /// Host to connect to instead.
    pub to_host: String,
    /// Port to connect to instead.
    pub to_port: u16,
}

impl FromStr for EndpointRewrite {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (from, to) = raw
            .split_once('=')
            .ok_or("expected FROM=HOST:PORT (FROM: host, host:port or *)")?;
        let (host, port) = to
            .rsplit_once(':')
            .ok_or("the rewrite target must be HOST:PORT")?;
        let port = port
            .parse()
            .map_err(|_| format!("bad port in rewrite target {to:?}"))?;
        if from.is_empty() || host.is_empty() {
            return Err("empty host in an endpoint rewrite".into());
        }
        Ok(Self {
            from: from.to_owned(),
            to_host: host.to_owned(),
            to_port: port,
        })
    }
}

/// Applies the most specific rewrite (`host:port`, then `host`, then `*`) to an endpoint.
pub fn rewrite_endpoint(rewrites: &[EndpointRewrite], host: &str, port: u16) -> (String, u16) {
    let with_port = format!("{host}:{port}");
    [with_port.as_str(), host, "*"]
        .iter()
        .find_map(|key| rewrites.iter().find(|r| r.from == *key))
        .map_or_else(
            || (host.to_owned(), port),
            |r| (r.to_host.clone(), r.to_port),
        )
}

fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

/// The `rds` provisioner's flags. The provisioner is built when a tier names it.
#[derive(Clone, Debug, clap::Args)]
pub struct RdsArgs {
    /// AWS region; empty: from the standard AWS chain (AWS_REGION, profile, IMDS).
    #[arg(long = "rds-region", env = "SILO_RDS_REGION")]
    pub region: Option<String>,
    /// Endpoint override for RDS and Secrets Manager (moto, LocalStack).
    #[arg(long = "rds-endpoint-url", env = "SILO_RDS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Static access key id, for moto / LocalStack; production uses the AWS chain.
    #[arg(long = "rds-access-key-id", env = "SILO_RDS_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    /// Static secret access key, with --rds-access-key-id.
    #[arg(
        long = "rds-secret-access-key",
        env = "SILO_RDS_SECRET_ACCESS_KEY",
        value_parser = secret,
        hide_env_values = true
    )]
    pub secret_access_key: Option<SecretString>,
    /// Dev/test only: `FROM=HOST:PORT` rewrites of instance endpoints, comma-separated.
    #[arg(
        long = "rds-endpoint-rewrite",
        env = "SILO_RDS_ENDPOINT_REWRITES",
        value_delimiter = ','
    )]
    pub endpoint_rewrites: Vec<EndpointRewrite>,
    /// First interval between status polls of a new instance; it grows to the maximum.
    #[arg(
        long = "rds-poll-min-ms",
        env = "SILO_RDS_POLL_MIN_MS",
        default_value_t = 5_000
    )]
    pub poll_min_ms: u64,
    /// Longest interval between status polls.
    #[arg(
        long = "rds-poll-max-ms",
        env = "SILO_RDS_POLL_MAX_MS",
        default_value_t = 60_000
    )]
    pub poll_max_ms: u64,
    /// How long after CreateDBInstance a NotFound is taken for eventual consistency; after
    /// it the instance is created again.
    #[arg(
        long = "rds-not-found-grace-secs",
        env = "SILO_RDS_NOT_FOUND_GRACE_SECS",
        default_value_t = 300
    )]
    pub not_found_grace_secs: u64,
    /// Attempts of one AWS call on throttling, 5xx and network errors (CreateDBInstance is
    /// never repeated by the SDK: the step describes first and adopts).
    #[arg(
        long = "rds-max-attempts",
        env = "SILO_RDS_MAX_ATTEMPTS",
        default_value_t = 4
    )]
    pub max_attempts: u32,
    /// Interval of the reconciler that compares instances with the catalog (0: off).
    #[arg(
        long = "rds-reconcile-interval-secs",
        env = "SILO_RDS_RECONCILE_INTERVAL_SECS",
        default_value_t = 3600
    )]
    pub reconcile_interval_secs: u64,
}

impl RdsArgs {
    /// `--rds-poll-min-ms` as a duration (at least 1 ms).
    pub fn poll_min(&self) -> Duration {
        Duration::from_millis(self.poll_min_ms.max(1))
    }

    /// `--rds-poll-max-ms` as a duration, never shorter than the minimum.
    pub fn poll_max(&self) -> Duration {
        Duration::from_millis(self.poll_max_ms.max(self.poll_min_ms.max(1)))
    }

    /// `--rds-not-found-grace-secs` as a duration.
    pub fn not_found_grace(&self) -> Duration {
        Duration::from_secs(self.not_found_grace_secs)
    }

    /// The shared AWS configuration: region, endpoint, credentials and retries.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let (Some(key), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_rds::config::Credentials::new(
                key.clone(),
                secret.expose_secret().to_owned(),
                None,
                None,
                "silo-static",
            ));
        }
        loader.load().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_prefer_the_most_specific_match() {
        let rewrites: Vec<EndpointRewrite> = [
            "*=127.0.0.1:1",
            "db.example=127.0.0.1:2",
            "db.example:6000=127.0.0.1:3",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        assert_eq!(
            rewrite_endpoint(&rewrites, "db.example", 6000),
            ("127.0.0.1".into(), 3)
        );
        assert_eq!(
            rewrite_endpoint(&rewrites, "db.example", 5432),
            ("127.0.0.1".into(), 2)
        );
        assert_eq!(
            rewrite_endpoint(&rewrites, "other", 5432),
            ("127.0.0.1".into(), 1)
        );
        assert_eq!(rewrite_endpoint(&[], "other", 5432), ("other".into(), 5432));
        assert!("no-target".parse::<EndpointRewrite>().is_err());
        assert!("*=host-without-port".parse::<EndpointRewrite>().is_err());
    }

    #[test]
    fn tier_settings_default_and_reject_unknown_keys() {
        let settings: RdsTierSettings =
            toml::from_str("instance_class = \"db.r6g.large\"\nmulti_az = true\n").unwrap();
        assert_eq!(settings.instance_class, "db.r6g.large");
        assert!(settings.multi_az && settings.deletion_protection);
        assert!(toml::from_str::<RdsTierSettings>("instance_klass = \"x\"").is_err());
    }
}
