//! The control plane's configuration: every flag has a `SILO_*` environment variable, secrets
//! are held in types that do not print them, and tiers come from a TOML file.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, str::FromStr};

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use silo_tls::postgres::{PgTls, PgTlsError, parse_dsn};
use thiserror::Error;

/// Why the configuration was refused at startup.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A flag's value is wrong (a fleet server's DSN or TLS settings); the message names
    /// the flag or server, never a secret.
    #[error("{0}")]
    Invalid(String),
    /// The `--tiers-file` could not be read, is not valid TOML for [`Tiers`], or fails its
    /// checks.
    #[error("tiers file {path}: {message}")]
    Tiers {
        /// The tiers file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

/// A fleet member: `NAME=postgres://admin@host:port/postgres`.
#[derive(Clone)]
pub struct FleetServerArg {
    /// The name tenants are placed under (`Placement::server`): letters, digits, `-` and
    /// `_`.
    pub name: String,
    /// The admin DSN, libpq URL or key-value form; holds a password, so never printed.
    pub dsn: SecretString,
}

impl std::fmt::Debug for FleetServerArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetServerArg({}=..)", self.name)
    }
}

impl FromStr for FleetServerArg {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (name, dsn) = raw
            .split_once('=')
            .ok_or("expected NAME=postgres://user@host:port/database")?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("fleet server names use letters, digits, '-' and '_'".into());
        }
        Ok(Self {
            name: name.to_owned(),
            dsn: SecretString::from(dsn.to_owned()),
        })
    }
}

impl FleetServerArg {
    /// The admin login and its TLS settings (`sslmode`, `sslrootcert` in the DSN).
    ///
    /// Errors: the DSN does not parse, or its TLS settings are wrong; the message names the
    /// server, never the DSN.
    pub fn to_config(&self) -> Result<(tokio_postgres::Config, PgTls), ConfigError> {
        parse_dsn(self.dsn.expose_secret())
            .map_err(|e| ConfigError::Invalid(format!("fleet server {}: {e}", self.name)))
    }
}

/// Everything `silo-control-plane` is started with, from flags or `SILO_*` environment
/// variables.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "silo-control-plane",
    version,
    about = "silo control plane: tenant catalog, provisioning, onboarding"
)]
pub struct ControlPlaneConfig {
    /// Address the gRPC API listens on.
    #[arg(long, env = "SILO_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// DSN of the catalog database (may hold a password; never printed).
    #[arg(long, env = "SILO_CATALOG_URL", value_parser = secret, hide_env_values = true)]
    pub catalog_url: SecretString,

    /// Connections the control plane keeps to the catalog.
    #[arg(long, env = "SILO_CATALOG_POOL_SIZE", default_value_t = 16)]
    pub catalog_pool_size: u32,

    /// AES-256-GCM key (32 bytes, base64) that seals tenant credentials in the catalog.
    #[arg(
        long,
        env = "SILO_CREDENTIALS_KEY",
        value_parser = secret,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub credentials_key: SecretString,

    /// Key of the keyed hash (HMAC-SHA256) that names new tenants' databases and roles, so
    /// that names on a shared server do not reveal tenant ids. Any secret string; keep it
    /// for the life of the deployment. Unset: derived from the credentials key.
    #[arg(
        long,
        env = "SILO_NAME_KEY",
        value_parser = secret,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub silo_name_key: Option<SecretString>,

    /// How often the silo guard compares every tenant role on the `postgres` fleet with
    /// the catalog and repairs what a tenant changed (password, role settings), and brings
    /// older silos up to the current isolation (0: off).
    #[arg(long, env = "SILO_GUARD_INTERVAL_MS", default_value_t = 2000)]
    pub guard_interval_ms: u64,

    /// Servers of the `postgres` provisioner's fleet, `NAME=DSN`, comma-separated in the
    /// environment. The DSN logs in as a superuser: besides roles and databases, it closes
    /// the cluster's catalogs inside each silo (onboarding fails when it cannot).
    #[arg(
        long = "postgres-server",
        env = "SILO_POSTGRES_SERVERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub postgres_servers: Vec<FleetServerArg>,

    /// TOML file with the tiers; without it, the built-in `free`, `standard` and `enterprise`
    /// tiers all use the `postgres` provisioner.
    #[arg(long, env = "SILO_TIERS_FILE")]
    pub tiers_file: Option<PathBuf>,

    /// Directory of tenant migrations (`V<n>__<name>.sql`) to use instead of the ones
    /// compiled into this binary.
    #[arg(long, env = "SILO_TENANT_MIGRATIONS_DIR")]
    pub tenant_migrations_dir: Option<PathBuf>,

    /// Onboarding / deletion operations one replica runs at once (0: this replica only
    /// serves the API).
    #[arg(long, env = "SILO_WORKERS", default_value_t = 4)]
    pub workers: usize,

    /// Attempts of a failing step before the tenant goes to FAILED.
    #[arg(long, env = "SILO_MAX_STEP_ATTEMPTS", default_value_t = 8)]
    pub max_step_attempts: u32,

    /// Directory of PostgreSQL's `pg_dump` and `pg_restore`, which tenant moves run (at
    /// least the fleet servers' major version). Unset: `pg_dump` on the PATH, else the
    /// newest `/usr/lib/postgresql/<version>/bin`.
    #[arg(long, env = "SILO_PG_BIN_DIR")]
    pub pg_bin_dir: Option<std::path::PathBuf>,

    /// A move by replication whose target has not confirmed the source's last changes this
    /// long after the tenant's calls started being held is given up (the tenant is served
    /// from its source again), in seconds.
    #[arg(long, env = "SILO_MOVE_CATCH_UP_LIMIT_SECS", default_value_t = 10)]
    pub move_catch_up_limit_secs: u64,

    /// A move by replication still SUBSCRIBING (initial copy, or a lag above 16 MiB) this
    /// long after the step started is given up, in seconds: the tenant is served
    /// meanwhile, but the source keeps its WAL for the move's slot.
    #[arg(long, env = "SILO_MOVE_SUBSCRIBE_LIMIT_SECS", default_value_t = 6 * 3600)]
    pub move_subscribe_limit_secs: u64,

    /// JWT verification of callers (`--jwt-*` flags; see the auth crate).
    #[command(flatten)]
    pub jwt: JwtArgs,

    /// TLS of the gRPC API (`--tls-cert-file`, `--tls-key-file`, `--tls-client-ca-file`).
    #[command(flatten)]
    pub tls: silo_tls::grpc::ServerTlsArgs,

    /// The `rds` provisioner's AWS settings (`--rds-*` flags).
    #[command(flatten)]
    pub rds: crate::provisioner::rds::RdsArgs,

    /// Tenant events older than this are deleted, in hours (the newest one always stays).
    /// A router away for longer re-resolves what it caches instead of replaying.
    #[arg(long, env = "SILO_EVENT_RETENTION_HOURS", default_value_t = 72)]
    pub event_retention_hours: u64,

    /// Finished operations older than this are deleted, in days; tenant deletions are
    /// kept.
    #[arg(long, env = "SILO_OPERATION_RETENTION_DAYS", default_value_t = 30)]
    pub operation_retention_days: u64,

    /// A moved tenant's source database is kept (renamed `<database>_moved_<unix time>`)
    /// this long, in hours, then dropped by the retention pass.
    #[arg(long, env = "SILO_MOVE_RETAIN_HOURS", default_value_t = 24.0)]
    pub move_retain_hours: f64,

    /// Usage records and database-size samples older than this are deleted, in days.
    #[arg(long, env = "SILO_USAGE_RETENTION_DAYS", default_value_t = 400)]
    pub usage_retention_days: u64,

    /// How often every tenant's database size is sampled for usage, in seconds; 0 turns
    /// sampling off.
    #[arg(long, env = "SILO_USAGE_SIZE_INTERVAL_SECS", default_value_t = 300)]
    pub usage_size_interval_secs: u64,

    /// How often the retention pass runs, in seconds; 0 turns it off.
    #[arg(long, env = "SILO_RETENTION_INTERVAL_SECS", default_value_t = 600)]
    pub retention_interval_secs: u64,

    /// Address of the Prometheus endpoint (`GET /metrics`).
    #[arg(long, env = "SILO_METRICS_LISTEN", default_value = "127.0.0.1:9152")]
    pub metrics_listen: SocketAddr,

    /// On SIGTERM, how long calls and steps in flight may take to finish before the
    /// process exits anyway.
    #[arg(long, env = "SILO_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Log format: `human` or `json`.
    #[arg(long, env = "SILO_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,

    /// Span export (OpenTelemetry over OTLP/gRPC).
    #[command(flatten)]
    pub traces: silo_telemetry::TraceArgs,
}

pub use silo_telemetry::LogFormat;

impl ControlPlaneConfig {
    /// What the retention pass keeps, and how often it runs (`None`: never).
    pub fn retention(&self) -> Option<crate::retention::Retention> {
        (self.retention_interval_secs > 0).then(|| crate::retention::Retention {
            events: std::time::Duration::from_secs(self.event_retention_hours * 3600),
            operations: std::time::Duration::from_secs(self.operation_retention_days * 86_400),
            usage: std::time::Duration::from_secs(self.usage_retention_days * 86_400),
            every: std::time::Duration::from_secs(self.retention_interval_secs),
        })
    }
}

pub use silo_auth::JwtArgs;

/// What a tier gives its tenants; routers enforce the limits.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Provisioner that makes the tier's silos: `postgres` (a database on a fleet server)
    /// or `rds` (an instance per tenant).
    pub provisioner: String,
    /// Most connections a router's pool opens to one tenant's database (default 10).
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Calls per second a router admits for one tenant (token bucket refill; 0: unlimited;
    /// default 1000).
    #[serde(default = "defaults::rate_per_second")]
    pub rate_per_second: u32,
    /// Size of the token bucket: calls admitted at once after a quiet spell (default 2000).
    #[serde(default = "defaults::burst")]
    pub burst: u32,
    /// Calls of one tenant a router runs at once (0: unlimited; default 32).
    #[serde(default = "defaults::max_concurrent_calls")]
    pub max_concurrent_calls: u32,
    /// PostgreSQL `statement_timeout` of the tenant's connections, in ms, when the call has
    /// no shorter deadline (default 30000).
    #[serde(default = "defaults::statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Instance settings when the provisioner is `rds` (`[tiers.NAME.rds]`).
    #[serde(default)]
    pub rds: Option<crate::provisioner::rds::RdsTierSettings>,
    /// libpq `sslmode` of every connection to the tier's tenant databases (routers' and the
    /// control plane's): `disable`, `prefer`, `require`, `verify-ca`, `verify-full`. Unset:
    /// `verify-full` for `rds`; for `postgres`, whatever the fleet server's DSN says.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// libpq `sslrootcert`: a PEM file of trusted CA certificates, present at the same path
    /// on the control plane and on every router (the Helm chart mounts one at
    /// `/etc/silo/tenant-ca/`), or `system`. For `rds`, Amazon's bundle
    /// (`https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem`).
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Default per-tenant settings of the tier's tenants (`[tiers.NAME.config]`, key → any
    /// TOML value, served as JSON); a tenant's own value for a key replaces the default
    /// (see `tenant_config`). Keys and values follow the per-tenant rules.
    #[serde(default)]
    pub config: crate::tenant_config::Settings,
    /// Calls (of every method, through every router) a tenant of the tier may make per
    /// calendar month (UTC); unset: no quota. A tenant's own quota (SetTenantQuota)
    /// replaces it.
    #[serde(default)]
    pub monthly_call_quota: Option<u64>,
    /// Rows (returned plus affected) per calendar month (UTC); unset: no quota.
    #[serde(default)]
    pub monthly_row_quota: Option<u64>,
}

impl Tier {
    /// The tier's own TLS settings; `None` when a `postgres` tier leaves them to the fleet
    /// server's DSN.
    ///
    /// Errors: an unknown `sslmode`; `verify-*` (the `rds` default) without `sslrootcert`.
    pub fn tls(&self) -> Result<Option<PgTls>, PgTlsError> {
        let mode = match (&self.sslmode, self.provisioner.as_str()) {
            (Some(mode), _) => mode.as_str(),
            (None, "rds") => "verify-full",
            (None, _) if self.sslrootcert.is_none() => return Ok(None),
            // libpq's default mode; with a CA file it checks the chain.
            (None, _) => "prefer",
        };
        PgTls::new(Some(mode), self.sslrootcert.as_deref()).map(Some)
    }
}

mod defaults {
    pub fn max_connections() -> u32 {
        10
    }
    pub fn rate_per_second() -> u32 {
        1000
    }
    pub fn burst() -> u32 {
        2000
    }
    pub fn max_concurrent_calls() -> u32 {
        32
    }
    pub fn statement_timeout_ms() -> u64 {
        30_000
    }
}

/// The tiers file: `default_tier = "standard"` and a `[tiers.NAME]` table per tier.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    /// The tier of tenants created without one; must be one of `tiers`.
    pub default_tier: String,
    /// The tiers by name (`[tiers.NAME]`).
    pub tiers: BTreeMap<String, Tier>,
}

impl Tiers {
    /// The tiers used without `--tiers-file`: `free`, `standard` (the default) and
    /// `enterprise`, all on the `postgres` provisioner.
    pub fn builtin() -> Self {
        let tier = |max_connections, rate_per_second, max_concurrent_calls| Tier {
            provisioner: "postgres".into(),
            max_connections,
            rate_per_second,
            burst: rate_per_second * 2,
            max_concurrent_calls,
            statement_timeout_ms: defaults::statement_timeout_ms(),
            rds: None,
            sslmode: None,
            sslrootcert: None,
            config: Default::default(),
            monthly_call_quota: None,
            monthly_row_quota: None,
        };
        Self {
            default_tier: "standard".into(),
            tiers: BTreeMap::from([
                ("free".into(), tier(2, 50, 4)),
                ("standard".into(), tier(10, 1000, 32)),
                ("enterprise".into(), tier(40, 10_000, 128)),
            ]),
        }
    }

    /// The tiers of `path` (`--tiers-file`), checked; the built-in ones when `None`.
    pub fn load(path: Option<&PathBuf>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::builtin());
        };
        let error = |message: String| ConfigError::Tiers {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let tiers: Self = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        tiers.check().map_err(error)?;
        Ok(tiers)
    }

    /// What `load` refuses besides TOML errors: an undefined default tier, a tier whose
    /// TLS settings are wrong (an `rds` tier verifies by default and needs `sslrootcert`).
    fn check(&self) -> Result<(), String> {
        for (name, tier) in &self.tiers {
            tier.tls().map_err(|e| format!("tier {name}: {e}"))?;
            crate::tenant_config::check_settings(&tier.config)
                .map_err(|e| format!("tier {name}: config: {e}"))?;
        }
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(format!(
                "default tier {:?} is not defined",
                self.default_tier
            ));
        }
        Ok(())
    }

    /// The tier called `name`, if defined.
    pub fn get(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_starting_with_a_hyphen_are_values_not_flags() {
        let config = ControlPlaneConfig::try_parse_from([
            "silo-control-plane",
            "--catalog-url=postgres://silo@db/catalog",
            "--credentials-key",
            "-not-a-flag-but-a-key",
            "--silo-name-key",
            "-also-a-value",
            "--jwt-hmac-secret",
            "-a-dashed-hmac-secret-long-enough!!",
        ])
        .expect("parses");
        assert_eq!(
            config.credentials_key.expose_secret(),
            "-not-a-flag-but-a-key"
        );
        assert_eq!(
            config
                .silo_name_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            Some("-also-a-value".to_owned())
        );
    }

    #[test]
    fn tier_tls_follows_libpq_and_rds_verifies_by_default() {
        let parse = |toml: &str| toml::from_str::<Tiers>(toml).expect("parses");
        let rds = parse("default_tier = \"e\"\n[tiers.e]\nprovisioner = \"rds\"\n");
        let error = rds.check().expect_err("rds without a CA file");
        assert_eq!(
            error,
            "tier e: sslmode=verify-full needs sslrootcert (a PEM file of CA certificates, or `system`)"
        );
        let rds = parse(
            "default_tier = \"e\"\n[tiers.e]\nprovisioner = \"rds\"\n\
             sslrootcert = \"/ca/global-bundle.pem\"\n",
        );
        rds.check().expect("rds with a CA file");
        assert_eq!(
            rds.get("e").unwrap().tls().unwrap().unwrap().to_string(),
            "sslmode=verify-full sslrootcert=/ca/global-bundle.pem"
        );
        let fleet = parse(
            "default_tier = \"s\"\n[tiers.s]\nprovisioner = \"postgres\"\n\
             [tiers.v]\nprovisioner = \"postgres\"\nsslrootcert = \"system\"\n",
        );
        assert_eq!(
            fleet.get("s").unwrap().tls().unwrap(),
            None,
            "the fleet DSN decides"
        );
        assert_eq!(
            fleet.get("v").unwrap().tls().unwrap().unwrap().to_string(),
            "sslmode=prefer sslrootcert=system"
        );
        let typo = parse(
            "default_tier = \"s\"\n[tiers.s]\nprovisioner = \"postgres\"\n\
             sslmode = \"verify_full\"\n",
        );
        assert!(typo.check().expect_err("typo").contains("\"verify_full\""));
    }

    #[test]
    fn tiers_file_parses_and_rejects_unknown_keys() {
        let tiers: Tiers = toml::from_str(
            r#"
            default_tier = "standard"
            [tiers.standard]
            provisioner = "postgres"
            max_connections = 5
            [tiers.enterprise]
            provisioner = "rds"
            [tiers.enterprise.rds]
            instance_class = "db.r6g.large"
            manage_master_password = false
            "#,
        )
        .unwrap();
        assert_eq!(tiers.get("standard").unwrap().max_connections, 5);
        assert_eq!(tiers.get("enterprise").unwrap().provisioner, "rds");
        let rds = tiers.get("enterprise").unwrap().rds.clone().unwrap();
        assert_eq!(rds.instance_class, "db.r6g.large");
        assert!(!rds.manage_master_password && rds.deletion_protection);
        assert!(
            toml::from_str::<Tiers>(
                "default_tier = \"x\"\n[tiers.x]\nprovisioner = \"postgres\"\nmax_conections = 3\n"
            )
            .is_err()
        );
    }

    #[test]
    fn tier_config_defaults_are_json_values_under_the_key_rules() {
        let tiers: Tiers = toml::from_str(
            r#"
            default_tier = "standard"
            [tiers.standard]
            provisioner = "postgres"
            [tiers.standard.config]
            "beta.search" = false
            max_seats = 5
            limits = { projects = 3, regions = ["eu", "us"] }
            "#,
        )
        .expect("parses");
        tiers.check().expect("valid");
        let config = &tiers.get("standard").expect("tier").config;
        assert_eq!(config["beta.search"], serde_json::json!(false));
        assert_eq!(config["max_seats"], serde_json::json!(5));
        assert_eq!(
            config["limits"],
            serde_json::json!({"projects": 3, "regions": ["eu", "us"]})
        );
        let bad: Tiers = toml::from_str(
            "default_tier = \"x\"\n[tiers.x]\nprovisioner = \"postgres\"\n[tiers.x.config]\nBad = 1\n",
        )
        .expect("parses");
        let refused = bad.check().expect_err("bad key");
        assert!(refused.contains("tier x: config"), "{refused}");
    }

    #[test]
    fn fleet_servers_parse_and_hide_their_dsn() {
        let arg: FleetServerArg = "main=postgres://admin:hunter2@db1:5432/postgres"
            .parse()
            .unwrap();
        assert_eq!(arg.name, "main");
        assert!(!format!("{arg:?}").contains("hunter2"));
        assert!(arg.to_config().is_ok());
        assert!("no-equals-sign".parse::<FleetServerArg>().is_err());
    }
}
