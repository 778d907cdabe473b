//! Provisioners make and remove the database server side of a tenant's silo. One trait,
//! several implementations (`postgres` now; `rds` fits the same steps), one shared test
//! suite. The parts every provisioner shares once it has admin access to a server — the
//! tenant's role, database, grants and schema — live in `bootstrap`.

pub mod bootstrap;
pub mod isolation;
mod postgres;
pub mod rds;
pub mod relocate;
pub mod scram;

use std::{collections::BTreeMap, future::Future, time::Duration};

use thiserror::Error;

pub use postgres::{FleetServer, PostgresProvisioner};
pub use rds::RdsProvisioner;

use crate::{
    catalog::{Placement, TenantRecord},
    tenant::{SiloNames, TenantId},
};

/// The tenant a provisioner works for, with the names the catalog keeps for its silo.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    /// The tenant.
    pub id: TenantId,
    /// The tenant's tier; the `rds` provisioner takes the instance settings from it and
    /// tags the instance with it.
    pub tier: String,
    /// Idempotency key of the onboarding request; `rds` tags the instance with it and
    /// derives the final snapshot name of a deletion from it.
    pub request_id: String,
    /// Name of the tenant's database, as stored in the catalog.
    pub database: String,
    /// Name of the tenant's login role, as stored in the catalog.
    pub role: String,
}

impl TenantSpec {
    /// A spec from its parts; `names` are the catalog's, never recomputed.
    pub fn new(id: &TenantId, tier: &str, request_id: &str, names: &SiloNames) -> Self {
        Self {
            id: id.clone(),
            tier: tier.to_owned(),
            request_id: request_id.to_owned(),
            database: names.database.clone(),
            role: names.role.clone(),
        }
    }

    /// The spec of a tenant in the catalog: its stored names, whatever scheme made them.
    pub fn of(record: &TenantRecord) -> Self {
        Self::new(
            &record.id,
            &record.tier,
            &record.request_id,
            &record.silo_names(),
        )
    }
}

/// Whether a server can take connections yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// The server accepts connections.
    Ready,
    /// Still coming up (or going away); ask again after `retry_after`.
    Waiting {
        /// What the server reports (e.g. the RDS instance status `creating`).
        status: String,
        /// How long to wait before polling again.
        retry_after: Duration,
    },
}

/// A superuser-like login on the server that holds a placement. Never logged.
#[derive(Clone)]
pub struct AdminAccess {
    /// Host, port, user and password of the admin login.
    pub config: tokio_postgres::Config,
    /// TLS for the server (the admin login's, and the tenant logins' on the same server).
    pub connector: silo_tls::postgres::PgConnector,
    /// The same TLS settings as `sslmode` / `sslrootcert`, for libpq (`pg_dump`,
    /// `pg_restore`) and for a subscription's connection string.
    pub tls: silo_tls::postgres::PgTls,
    /// Other tenants share this server (`postgres` fleet), so the silo must be isolated
    /// from them (`isolation`), and onboarding fails if it cannot be.
    pub shared: bool,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAccess(..)")
    }
}

/// A provisioner step failed; onboarding and deletion retry or fail the tenant according to
/// the variant.
#[derive(Debug, Error)]
pub enum ProvisionError {
    /// Worth retrying: the server is unreachable, throttled, restarting.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help; the tenant goes to FAILED with this reason.
    #[error("{0}")]
    Permanent(String),
}

impl ProvisionError {
    /// Whether the step should be retried (up to `--max-step-attempts`).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// Makes and removes tenants' database servers or databases. Every method is idempotent:
/// a step retried after a crash finds what an earlier attempt made and adopts it.
pub trait Provisioner: Send + Sync {
    /// Chooses where a new tenant goes, given the live tenants each server of this
    /// provisioner holds. Runs inside the catalog's placement transaction.
    fn place(
        &self,
        tenant: &TenantSpec,
        load: &[(String, i64)],
    ) -> Result<Placement, ProvisionError>;

    /// Makes sure the placement's server exists, creating it when this provisioner makes
    /// servers. Returns the placement with whatever the server's creation taught us.
    fn ensure_server(
        &self,
        tenant: &TenantSpec,
        placement: &Placement,
    ) -> impl Future<Output = Result<Placement, ProvisionError>> + Send;

    /// Whether the server takes connections yet; returns the placement's final address.
    fn poll_available(
        &self,
        placement: &Placement,
    ) -> impl Future<Output = Result<(Availability, Placement), ProvisionError>> + Send;

    /// Admin login on the placement's server, for the shared bootstrap steps.
    fn admin_access(
        &self,
        placement: &Placement,
    ) -> impl Future<Output = Result<AdminAccess, ProvisionError>> + Send;

    /// Removes the tenant's silo: drops (or, with `keep_database`, keeps renamed) the
    /// database, drops the role; a provisioner that made a server removes it.
    fn retire(
        &self,
        tenant: &TenantSpec,
        placement: &Placement,
        keep_database: bool,
    ) -> impl Future<Output = Result<Availability, ProvisionError>> + Send;
}

/// Every provisioner this build knows; the tiers name one of them.
#[derive(Clone, Debug)]
pub enum AnyProvisioner {
    /// A database per tenant on a shared fleet of PostgreSQL servers.
    Postgres(PostgresProvisioner),
    /// An RDS for PostgreSQL instance per tenant.
    Rds(RdsProvisioner),
}

impl Provisioner for AnyProvisioner {
    fn place(
        &self,
        tenant: &TenantSpec,
        load: &[(String, i64)],
    ) -> Result<Placement, ProvisionError> {
        match self {
            Self::Postgres(p) => p.place(tenant, load),
            Self::Rds(p) => p.place(tenant, load),
        }
    }

    async fn ensure_server(
        &self,
        tenant: &TenantSpec,
        placement: &Placement,
    ) -> Result<Placement, ProvisionError> {
        match self {
            Self::Postgres(p) => p.ensure_server(tenant, placement).await,
            Self::Rds(p) => p.ensure_server(tenant, placement).await,
        }
    }

    async fn poll_available(
        &self,
        placement: &Placement,
    ) -> Result<(Availability, Placement), ProvisionError> {
        match self {
            Self::Postgres(p) => p.poll_available(placement).await,
            Self::Rds(p) => p.poll_available(placement).await,
        }
    }

    async fn admin_access(&self, placement: &Placement) -> Result<AdminAccess, ProvisionError> {
        match self {
            Self::Postgres(p) => p.admin_access(placement).await,
            Self::Rds(p) => p.admin_access(placement).await,
        }
    }

    async fn retire(
        &self,
        tenant: &TenantSpec,
        placement: &Placement,
        keep_database: bool,
    ) -> Result<Availability, ProvisionError> {
        match self {
            Self::Postgres(p) => p.retire(tenant, placement, keep_database).await,
            Self::Rds(p) => p.retire(tenant, placement, keep_database).await,
        }
    }
}

/// The configured provisioners by name (`postgres`, `rds`).
#[derive(Clone, Debug, Default)]
pub struct Provisioners {
    by_name: BTreeMap<String, AnyProvisioner>,
}

impl Provisioners {
    /// Registers `provisioner` under `name` (the name tiers use), replacing any earlier
    /// one.
    pub fn insert(&mut self, name: &str, provisioner: AnyProvisioner) {
        self.by_name.insert(name.to_owned(), provisioner);
    }

    /// The provisioner called `name`; `None` when it is not configured.
    pub fn get(&self, name: &str) -> Option<&AnyProvisioner> {
        self.by_name.get(name)
    }

    /// The configured provisioner names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
