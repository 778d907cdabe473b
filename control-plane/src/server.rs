//! Starting and stopping the control plane: the catalog, the workers and the gRPC server.

use std::{net::SocketAddr, sync::Arc};

use silo_auth::JwtVerifier;
use silo_proto::controlplane::v1::control_plane_server::ControlPlaneServer;
use thiserror::Error;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{Catalog, CatalogError},
    config::{ConfigError, ControlPlaneConfig, Tiers},
    crypto::{CredentialCipher, CryptoError},
    migrations::{MigrationError, MigrationSet},
    onboarding::{Hooks, Onboarding},
    provisioner::{
        AnyProvisioner, FleetServer, PostgresProvisioner, ProvisionError, Provisioners,
        RdsProvisioner, rds,
    },
    service::ControlPlaneService,
};

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("credentials key: {0}")]
    Crypto(#[from] CryptoError),
    #[error("token verification: {0}")]
    Auth(#[from] silo_auth::AuthConfigError),
    #[error("provisioner: {0}")]
    Provisioner(#[from] ProvisionError),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("tenant migrations: {0}")]
    Migrations(#[from] MigrationError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started control plane.
pub struct RunningControlPlane {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningControlPlane {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting calls, lets the calls and steps in flight finish, and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the control plane stops by itself (its shutdown token was cancelled).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Stops everything at once, as a crash would: no step finishes, claims are dropped.
    pub fn abort(mut self) {
        self.shutdown.cancel();
        self.tasks.abort_all();
    }
}

async fn provisioners(
    config: &ControlPlaneConfig,
    tiers: &Tiers,
    cipher: &CredentialCipher,
) -> Result<Provisioners, StartError> {
    let mut provisioners = Provisioners::default();
    if !config.postgres_servers.is_empty() {
        let servers = config
            .postgres_servers
            .iter()
            .map(|server| {
                Ok(FleetServer {
                    name: server.name.clone(),
                    admin: server.to_config()?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        provisioners.insert(
            "postgres",
            AnyProvisioner::Postgres(PostgresProvisioner::new(servers)?),
        );
    }
    if tiers.tiers.values().any(|tier| tier.provisioner == "rds") {
        let rds = RdsProvisioner::from_args(&config.rds, tiers, cipher.clone()).await?;
        provisioners.insert("rds", AnyProvisioner::Rds(rds));
    }
    for (name, tier) in &tiers.tiers {
        if provisioners.get(&tier.provisioner).is_none() {
            tracing::warn!(
                tier = %name,
                provisioner = %tier.provisioner,
                "tier names a provisioner that is not configured; creating tenants in it will fail"
            );
        }
    }
    Ok(provisioners)
}

/// Starts the control plane; it runs until `shutdown` is cancelled (or `stop` is called).
pub async fn start(
    config: ControlPlaneConfig,
    hooks: Hooks,
    shutdown: CancellationToken,
) -> Result<RunningControlPlane, StartError> {
    use secrecy::ExposeSecret;

    let cipher = CredentialCipher::from_base64(&config.credentials_key)?;
    let tiers = Arc::new(Tiers::load(config.tiers_file.as_ref())?);
    let verifier = JwtVerifier::new(config.jwt.verifier_config()?)?;
    let provisioners = provisioners(&config, &tiers, &cipher).await?;
    let migrations = match &config.tenant_migrations_dir {
        Some(dir) => MigrationSet::from_dir(dir)?,
        None => MigrationSet::tenant()?,
    };
    let catalog_config: tokio_postgres::Config = config
        .catalog_url
        .expose_secret()
        .parse()
        .map_err(|_| ConfigError::Invalid("the catalog DSN does not parse".into()))?;
    let catalog = Catalog::open(catalog_config, config.catalog_pool_size, shutdown.clone()).await?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    let mut tasks = JoinSet::new();
    let onboarding = Arc::new(Onboarding {
        catalog: catalog.clone(),
        provisioners: provisioners.clone(),
        cipher: cipher.clone(),
        migrations: migrations.clone(),
        hooks,
        max_attempts: config.max_step_attempts.max(1),
    });
    for worker in 0..config.workers {
        tasks.spawn(onboarding.clone().run_worker(worker, shutdown.clone()));
    }
    if let (Some(AnyProvisioner::Rds(rds)), 1..) =
        (provisioners.get("rds"), config.rds.reconcile_interval_secs)
    {
        tasks.spawn(rds::reconcile::run_periodically(
            rds.clone(),
            catalog.clone(),
            std::time::Duration::from_secs(config.rds.reconcile_interval_secs),
            shutdown.clone(),
        ));
    }

    let service = ControlPlaneService {
        catalog,
        verifier,
        tiers,
        provisioners,
        cipher,
        migrations: Arc::new(migrations),
        shutdown: shutdown.clone(),
    };
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(ControlPlaneServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "control-plane server stopped");
        }
    });
    tracing::info!(%addr, "control plane listening");
    Ok(RunningControlPlane {
        addr,
        shutdown,
        tasks,
    })
}
