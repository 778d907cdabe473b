//! The `postgres` provisioner: tenants get a database and a role on one server of a
//! configured fleet, placed on the server with the fewest tenants.

use std::time::Duration;

use silo_tls::postgres::{PgConnector, PgTls, PgTlsError};
use tokio_postgres::config::Host;

use super::{AdminAccess, Availability, ProvisionError, Provisioner, TenantSpec, bootstrap};
use crate::catalog::Placement;

/// One server of the fleet: a name that stays stable in the catalog, and an admin login.
#[derive(Clone)]
pub struct FleetServer {
    /// Name tenants are placed under (`--postgres-server NAME=DSN`); stays stable in the
    /// catalog.
    pub name: String,
    /// The admin (superuser) login from the DSN; never printed.
    pub admin: tokio_postgres::Config,
    /// The DSN's `sslmode` / `sslrootcert`; also what tenant routes to this server use
    /// unless their tier names its own.
    pub tls: PgTls,
    connector: PgConnector,
}

impl std::fmt::Debug for FleetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetServer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl FleetServer {
    /// A fleet member; reads the TLS settings' CA file now.
    ///
    /// Errors: the CA file cannot be read or holds no certificate.
    pub fn new(
        name: String,
        admin: tokio_postgres::Config,
        tls: PgTls,
    ) -> Result<Self, PgTlsError> {
        let connector = tls.connector()?;
        Ok(Self {
            name,
            admin,
            tls,
            connector,
        })
    }

    /// Host and port routers connect to: the admin login's first TCP host.
    fn address(&self) -> Result<(String, u16), ProvisionError> {
        let host = self
            .admin
            .get_hosts()
            .iter()
            .find_map(|host| match host {
                Host::Tcp(name) => Some(name.clone()),
                Host::Unix(_) => None,
            })
            .ok_or_else(|| {
                ProvisionError::Permanent(format!("fleet server {} has no TCP host", self.name))
            })?;
        let port = self.admin.get_ports().first().copied().unwrap_or(5432);
        Ok((host, port))
    }
}

/// The `postgres` provisioner: tenants' databases and roles on a fixed fleet of shared
/// PostgreSQL servers; a new tenant goes to the server holding the fewest live tenants.
#[derive(Clone, Debug)]
pub struct PostgresProvisioner {
    servers: Vec<FleetServer>,
}

impl PostgresProvisioner {
    /// A provisioner over `servers`; `Permanent` if there are none or one has no TCP host.
    pub fn new(servers: Vec<FleetServer>) -> Result<Self, ProvisionError> {
        if servers.is_empty() {
            return Err(ProvisionError::Permanent(
                "the postgres provisioner needs at least one fleet server".into(),
            ));
        }
        for server in &servers {
            server.address()?;
        }
        Ok(Self { servers })
    }

    /// The TLS settings (from its DSN) of the fleet server `name`, which tenant routes to it
    /// use unless their tier names its own.
    pub fn server_tls(&self, name: &str) -> Option<&PgTls> {
        self.servers.iter().find(|s| s.name == name).map(|s| &s.tls)
    }

    /// The names of the fleet's servers.
    pub fn server_names(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|server| server.name.as_str())
    }

    /// Where a silo on the fleet server `name` lives, for a move to it.
    ///
    /// # Errors
    /// `Permanent` when no fleet server has that name, or it has no TCP host.
    pub fn placement_on(&self, name: &str) -> Result<Placement, ProvisionError> {
        let (host, port) = self.server(name)?.address()?;
        Ok(Placement {
            server: name.to_owned(),
            host,
            port,
            details: serde_json::Value::Null,
        })
    }

    fn server(&self, name: &str) -> Result<&FleetServer, ProvisionError> {
        self.servers.iter().find(|s| s.name == name).ok_or_else(|| {
            ProvisionError::Permanent(format!("fleet server {name} is not configured any more"))
        })
    }
}

impl Provisioner for PostgresProvisioner {
    fn place(
        &self,
        _tenant: &TenantSpec,
        load: &[(String, i64)],
    ) -> Result<Placement, ProvisionError> {
        let tenants_on = |name: &str| {
            load.iter()
                .find(|(server, _)| server == name)
                .map_or(0, |(_, count)| *count)
        };
        let server = self
            .servers
            .iter()
            .min_by_key(|server| tenants_on(&server.name))
            .ok_or_else(|| ProvisionError::Permanent("no fleet server configured".into()))?;
        let (host, port) = server.address()?;
        Ok(Placement {
            server: server.name.clone(),
            host,
            port,
            details: serde_json::Value::Null,
        })
    }

    async fn ensure_server(
        &self,
        _tenant: &TenantSpec,
        placement: &Placement,
    ) -> Result<Placement, ProvisionError> {
        self.server(&placement.server)?;
        Ok(placement.clone())
    }

    async fn poll_available(
        &self,
        placement: &Placement,
    ) -> Result<(Availability, Placement), ProvisionError> {
        let server = self.server(&placement.server)?;
        let client = bootstrap::connect(
            &server.admin,
            &server.connector,
            "reaching the fleet server",
        )
        .await;
        match client {
            Ok(_) => Ok((Availability::Ready, placement.clone())),
            Err(ProvisionError::Transient(_)) => Ok((
                Availability::Waiting {
                    status: format!("fleet server {} is unreachable", server.name),
                    retry_after: Duration::from_secs(1),
                },
                placement.clone(),
            )),
            Err(permanent) => Err(permanent),
        }
    }

    async fn admin_access(&self, placement: &Placement) -> Result<AdminAccess, ProvisionError> {
        let server = self.server(&placement.server)?;
        Ok(AdminAccess {
            config: server.admin.clone(),
            connector: server.connector.clone(),
            tls: server.tls.clone(),
            shared: true,
        })
    }

    async fn retire(
        &self,
        tenant: &TenantSpec,
        placement: &Placement,
        keep_database: bool,
    ) -> Result<Availability, ProvisionError> {
        let admin = self.admin_access(placement).await?;
        bootstrap::teardown(&admin, tenant, keep_database).await?;
        Ok(Availability::Ready)
    }
}
