//! Starting and stopping the control plane: the catalog, the workers and the gRPC server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use silo_auth::JwtVerifier;
use silo_proto::controlplane::v1::control_plane_server::ControlPlaneServer;
use silo_telemetry::Health;
use thiserror::Error;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{Catalog, CatalogError},
    config::{ConfigError, ControlPlaneConfig, Tiers},
    crypto::{CredentialCipher, CryptoError},
    metrics::ControlPlaneMetrics,
    migrations::{MigrationError, MigrationSet},
    onboarding::{Hooks, Onboarding},
    provisioner::{
        AnyProvisioner, FleetServer, PostgresProvisioner, ProvisionError, Provisioners,
        RdsProvisioner, rds,
    },
    service::ControlPlaneService,
    silo_guard::{self, SiloGuard},
    tenant::SiloNamer,
};

/// Why [`start`] gave up; nothing is left running when it returns one.
#[derive(Debug, Error)]
pub enum StartError {
    /// A flag, the silo name key, the tiers file or the catalog DSN is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--credentials-key` is not 32 bytes of base64.
    #[error("credentials key: {0}")]
    Crypto(#[from] CryptoError),
    /// The JWT verifier could not be built: the pinned algorithms do not fit the key
    /// source,
    /// or the key could not be loaded.
    #[error("token verification: {0}")]
    Auth(#[from] silo_auth::AuthConfigError),
    /// The `--jwt-*` flags are wrong: an unknown algorithm name, or not exactly one of
    /// `--jwt-public-key-file`, `--jwt-jwks-file`, `--jwt-hmac-secret`.
    #[error("token verification: {0}")]
    AuthArgs(#[from] silo_auth::InvalidJwtArgs),
    /// A provisioner could not be built from its flags (e.g. the `rds` provisioner's AWS
    /// settings).
    #[error("provisioner: {0}")]
    Provisioner(#[from] ProvisionError),
    /// The catalog database could not be reached or migrated at startup.
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// The tenant migrations (compiled in, or `--tenant-migrations-dir`) could not be
    /// loaded.
    #[error("tenant migrations: {0}")]
    Migrations(#[from] MigrationError),
    /// The gRPC API's TLS files could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] silo_tls::grpc::GrpcTlsError),
    /// The gRPC reflection service could not be built from the file descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC API (`--listen`) or the metrics endpoint (`--metrics-listen`) could not be
    /// bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// Why binding failed (address in use, permission denied, ...).
        #[source]
        source: std::io::Error,
    },
}

/// A started control plane.
pub struct RunningControlPlane {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    grace: Duration,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningControlPlane {
    /// Address the gRPC API listens on (the bound port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Address of the Prometheus endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Stops accepting calls and lets the calls and steps in flight finish, for at most the
    /// configured grace period; what is still running then is stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(self.grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "grace period over; stopping what is left"
            );
            self.tasks.abort_all();
        }
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
                let (admin, tls) = server.to_config()?;
                FleetServer::new(server.name.clone(), admin, tls)
                    .map_err(|e| ConfigError::Invalid(format!("fleet server {}: {e}", server.name)))
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
    let namer = match &config.silo_name_key {
        Some(key) => SiloNamer::new(key.expose_secret().as_bytes()),
        None => SiloNamer::derived_from(config.credentials_key.expose_secret().trim().as_bytes()),
    }
    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let tiers = Arc::new(Tiers::load(config.tiers_file.as_ref())?);
    let verifier = JwtVerifier::new(config.jwt.verifier_config()?)?;
    let tls = config.tls.load()?;
    let provisioners = provisioners(&config, &tiers, &cipher).await?;
    let migrations = match &config.tenant_migrations_dir {
        Some(dir) => MigrationSet::from_dir(dir)?,
        None => MigrationSet::tenant()?,
    };
    let (catalog_config, catalog_tls) =
        silo_tls::postgres::parse_dsn(config.catalog_url.expose_secret())
            .map_err(|e| ConfigError::Invalid(format!("the catalog DSN: {e}")))?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ControlPlaneMetrics::register(&mut registry);
    let grpc_metrics = silo_telemetry::GrpcMetrics::register(&mut registry, "silo_controlplane", 0);
    let catalog = Catalog::open(
        catalog_config,
        &catalog_tls,
        config.catalog_pool_size,
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    let readiness = silo_telemetry::Readiness::default();
    let metrics_addr = silo_telemetry::serve_metrics(
        config.metrics_listen,
        Arc::new(registry),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|source| StartError::Listen {
        addr: config.metrics_listen,
        source,
    })?;

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
        pg_bin_dir: config.pg_bin_dir.clone(),
        move_catch_up_limit: Duration::from_secs(config.move_catch_up_limit_secs),
        move_subscribe_limit: Duration::from_secs(config.move_subscribe_limit_secs),
        metrics: metrics.clone(),
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

    if let Some(retention) = config.retention() {
        tasks.spawn(crate::retention::run_periodically(
            catalog.clone(),
            retention,
            shutdown.clone(),
        ));
        tasks.spawn(crate::moves::expire_periodically(
            provisioners.clone(),
            Duration::from_secs_f64(config.move_retain_hours.clamp(0.0, 1.0e6) * 3600.0),
            retention.every,
            shutdown.clone(),
        ));
    }
    tasks.spawn(crate::quota::recheck_periodically(
        catalog.clone(),
        tiers.clone(),
        Duration::from_secs(60),
        shutdown.clone(),
    ));
    if config.usage_size_interval_secs > 0 {
        tasks.spawn(crate::usage::sample_periodically(
            catalog.clone(),
            provisioners.clone(),
            Duration::from_secs(config.usage_size_interval_secs),
            shutdown.clone(),
        ));
    }
    silo_guard::spawn(
        &mut tasks,
        SiloGuard::new(
            catalog.clone(),
            provisioners.clone(),
            cipher.clone(),
            metrics,
        ),
        Duration::from_millis(config.guard_interval_ms),
        shutdown.clone(),
    );

    let service = ControlPlaneService {
        catalog,
        verifier,
        tiers,
        provisioners,
        cipher,
        namer,
        migrations: Arc::new(migrations),
        shutdown: shutdown.clone(),
    };
    let (health, health_service) = Health::new(vec![SERVICE_NAME], readiness).await;
    tasks.spawn(follow_catalog_health(
        service.catalog.clone(),
        health,
        shutdown.clone(),
    ));
    let (reflection_v1, reflection_v1alpha) = silo_telemetry::reflection()?;
    let stop = shutdown.clone();
    let tls_on = tls.is_some();
    let incoming = silo_tls::grpc::Incoming::new(listener, tls);
    tasks.spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(grpc_metrics.layer())
            .add_service(ControlPlaneServer::new(service))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "control-plane server stopped");
        }
    });
    tracing::info!(%addr, %metrics_addr, tls = tls_on, "control plane listening");
    Ok(RunningControlPlane {
        addr,
        metrics_addr,
        grace: Duration::from_secs(config.shutdown_grace_secs),
        shutdown,
        tasks,
    })
}

const SERVICE_NAME: &str = "silo.controlplane.v1.ControlPlane";

/// SERVING while the catalog answers, NOT_SERVING while it does not.
async fn follow_catalog_health(catalog: Catalog, health: Health, shutdown: CancellationToken) {
    let mut serving = None;
    loop {
        let ok = tokio::time::timeout(Duration::from_secs(2), catalog.ping())
            .await
            .is_ok_and(|pinged| pinged.is_ok());
        if serving != Some(ok) {
            if ok {
                tracing::info!("catalog reachable: serving");
            } else {
                tracing::warn!("catalog unreachable: not serving");
            }
            health.set(ok).await;
            serving = Some(ok);
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                health.set(false).await;
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
