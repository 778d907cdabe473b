//! Tenants as the router sees them: ids, routes and tier limits.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use silo_tls::postgres::PgTls;

/// A tenant id (the control plane's slug).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// A tenant id as it appears in a claim or header, by the rule the control plane
    /// creates tenants with ([`silo_proto::is_valid_tenant_id`]). Anything else cannot
    /// name a tenant.
    pub fn parse(raw: &str) -> Option<Self> {
        silo_proto::is_valid_tenant_id(raw).then(|| Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lifecycle state of a tenant; only [`TenantState::Active`] tenants are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantState {
    /// Served.
    Active,
    /// Not yet active (requested, provisioning, migrating).
    Onboarding,
    /// Suspended by an operator; calls are refused until it is resumed.
    Suspended,
    /// Being deleted.
    Deleting,
    /// Deleted; kept in the catalog as a record.
    Deleted,
    /// Onboarding failed; the reason is in the catalog.
    Failed,
    /// Its silo is being switched to another database: new calls are held until the new
    /// route arrives (at most the router's move hold), open transactions end.
    Moving,
}

/// What the tier allows one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLimits {
    /// Most connections the tenant's pool opens.
    pub max_connections: u32,
    /// Calls per second refilled into the bucket; 0 means unlimited.
    pub rate_per_second: u32,
    /// Size of the bucket: calls allowed at once after a quiet spell.
    pub burst: u32,
    /// Calls running at once; 0 means unlimited.
    pub max_concurrent_calls: u32,
    /// Longest a statement may run when the call has no shorter deadline.
    pub statement_timeout: Duration,
}

impl Default for TierLimits {
    fn default() -> Self {
        Self {
            max_connections: 10,
            rate_per_second: 1000,
            burst: 2000,
            max_concurrent_calls: 32,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a tenant's database is and how to log in to it.
#[derive(Clone)]
pub struct Route {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Its lifecycle state; only ACTIVE is served.
    pub state: TenantState,
    /// The tier's name.
    pub tier: String,
    /// Host of the tenant's PostgreSQL server.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// The tenant's database on it.
    pub database: String,
    /// The role the router logs in as.
    pub user: String,
    /// The role's password (empty when the route is not ACTIVE).
    pub password: SecretString,
    /// Increases with every credential rotation; a new value replaces the tenant's pool.
    pub credentials_version: u32,
    /// What the tier allows the tenant.
    pub limits: TierLimits,
    /// The control plane's event sequence when the route was read.
    pub sequence: u64,
    /// TLS to the tenant's database (libpq `sslmode` / `sslrootcert`).
    pub tls: PgTls,
    /// The tenant's merged configuration, what GetConfig serves.
    pub config: Arc<TenantConfig>,
    /// Which monthly quota of the tenant is used up (its SQL calls are refused with it);
    /// empty while none is.
    pub quota_exhausted: String,
}

/// A tenant's merged configuration (its tier's defaults overridden by its own values), as
/// its route carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantConfig {
    /// Opaque; equal versions mean equal settings.
    pub version: String,
    /// Key → the value as compact JSON text.
    pub settings: BTreeMap<String, String>,
}

impl Route {
    /// What a pool is built from: when any of it changes, the pool must be rebuilt.
    pub fn pool_key(&self) -> PoolKey {
        PoolKey {
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            user: self.user.clone(),
            credentials_version: self.credentials_version,
            max_connections: self.limits.max_connections,
            statement_timeout: self.limits.statement_timeout,
            tls: self.tls.clone(),
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("tenant_id", &self.tenant_id)
            .field("state", &self.state)
            .field("tier", &self.tier)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("credentials_version", &self.credentials_version)
            .field("limits", &self.limits)
            .field("sequence", &self.sequence)
            .field("tls", &self.tls)
            .field("config_version", &self.config.version)
            .finish_non_exhaustive()
    }
}

/// The parts of a route a pool depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    /// Host of the tenant's PostgreSQL server.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// The tenant's database on it.
    pub database: String,
    /// The role the pool logs in as.
    pub user: String,
    /// The credentials' version: a rotation makes a new pool.
    pub credentials_version: u32,
    /// Most connections of the pool.
    pub max_connections: u32,
    /// Statement timeout set on every connection.
    pub statement_timeout: Duration,
    /// TLS settings of every connection.
    pub tls: PgTls,
}

impl PoolKey {
    /// Whether a pool built with this key still fits `route` (no allocation: on every call).
    pub fn matches(&self, route: &Route) -> bool {
        self.host == route.host
            && self.port == route.port
            && self.database == route.database
            && self.user == route.user
            && self.credentials_version == route.credentials_version
            && self.max_connections == route.limits.max_connections
            && self.statement_timeout == route.limits.statement_timeout
            && self.tls == route.tls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_key_notices_credential_and_limit_changes() {
        let route = Route {
            tenant_id: TenantId::parse("acme").expect("valid"),
            state: TenantState::Active,
            tier: "standard".into(),
            host: "db".into(),
            port: 5432,
            database: "acme".into(),
            user: "acme".into(),
            password: SecretString::from("pw"),
            credentials_version: 1,
            limits: TierLimits::default(),
            sequence: 1,
            tls: PgTls::default(),
            config: Arc::default(),
            quota_exhausted: String::new(),
        };
        let key = route.pool_key();
        assert!(key.matches(&route));
        let mut rotated = route.clone();
        rotated.credentials_version = 2;
        assert!(!key.matches(&rotated));
        let mut bigger = route.clone();
        bigger.limits.max_connections += 1;
        assert!(!key.matches(&bigger));
        let mut verified = route.clone();
        verified.tls.mode = silo_tls::postgres::SslMode::VerifyFull;
        assert!(!key.matches(&verified), "a TLS change rebuilds the pool");
        let mut later = route;
        later.sequence = 9;
        assert!(
            key.matches(&later),
            "the sequence alone does not rebuild a pool"
        );
    }

    #[test]
    fn tenant_ids_are_slugs() {
        assert!(TenantId::parse("acme-1x").is_some());
        // What the control plane would refuse to create is refused here too.
        for bad in [
            "",
            "a",
            "Acme",
            "a b",
            "a/b",
            "é",
            "acme_1",
            "1acme",
            "-acme",
            &"a".repeat(64),
        ] {
            assert!(TenantId::parse(bad).is_none(), "{bad}");
        }
    }
}
