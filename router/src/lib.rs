//! silo's data plane: authenticates a call's tenant, finds the tenant's database through the
//! control plane and runs the call's SQL there over a per-tenant connection pool.
//!
//! [`run`] is what the binary calls; tests build a [`RouterCore`] with their own
//! [`RouteSource`] and [`serve`] it.

#![warn(missing_docs)]

pub mod call;
pub mod config;
pub mod connection;
pub mod core;
pub mod error;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod request;
pub mod routes;
pub mod service;
pub mod session;
pub mod tenant;
pub mod usage;
pub mod value;

use std::sync::Arc;
use std::time::Duration;

use silo_proto::router::v1::router_server::RouterServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::RouterConfig;
pub use crate::core::{CallLimits, RouterCore};
pub use crate::identity::Authenticator;
pub use crate::routes::{Change, ControlPlaneRoutes, Invalidation, RouteError, RouteSource};
pub use crate::service::RouterService;

/// What `serve` reports to: request metrics, and whether the control-plane connection
/// works (the real route source's; health reports it and readiness waits for it once).
#[derive(Clone)]
pub struct ServeTelemetry {
    /// Per-method request counts and latencies.
    pub grpc: silo_telemetry::GrpcMetrics,
    /// Whether the route source currently reaches the control plane.
    pub control_plane_connected: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Follows the health service's status for the whole server (the metrics endpoint's
    /// `/readyz`).
    pub readiness: silo_telemetry::Readiness,
    /// How often usage records are shipped to the route source (`--usage-flush-secs`).
    pub usage_flush: Duration,
}

impl ServeTelemetry {
    /// Metrics nobody scrapes and a control plane that is always connected (tests).
    pub fn unobserved() -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        Self {
            grpc: silo_telemetry::GrpcMetrics::register(&mut registry, "silo_router", 0),
            control_plane_connected: Arc::new(|| true),
            readiness: silo_telemetry::Readiness::default(),
            usage_flush: Duration::from_secs(1),
        }
    }
}

const SERVICE_NAME: &str = "silo.router.v1.Router";

/// Serves `core` on `incoming` (a `TcpListener` for plaintext, or
/// [`silo_tls::grpc::Incoming`] with TLS) until `shutdown`, following the route source's
/// invalidations meanwhile, with gRPC health and reflection beside the Router service.
pub async fn serve<S: RouteSource>(
    incoming: impl Into<silo_tls::grpc::Incoming>,
    core: Arc<RouterCore<S>>,
    transaction_idle_timeout: Duration,
    telemetry: ServeTelemetry,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let watcher = core.spawn_invalidations(shutdown.clone());
    let usage = core.usage.clone();
    let source = core.routes.source().clone();
    let shipper = tokio::spawn(usage::ship_periodically(
        usage.clone(),
        source.clone(),
        telemetry.usage_flush,
        shutdown.clone(),
    ));
    let service = RouterService::new(core, transaction_idle_timeout);
    let (health, health_service) =
        silo_telemetry::Health::new(vec![SERVICE_NAME], telemetry.readiness.clone()).await;
    let health_loop = tokio::spawn(follow_health(
        health,
        telemetry.control_plane_connected.clone(),
        shutdown.clone(),
    ));
    let reflection = silo_telemetry::reflection();
    let mut server = tonic::transport::Server::builder().layer(telemetry.grpc.layer());
    let mut router = server
        .add_service(RouterServer::new(service))
        .add_service(health_service);
    match reflection {
        Ok((v1, v1alpha)) => router = router.add_service(v1).add_service(v1alpha),
        Err(error) => tracing::warn!(error = %error, "reflection unavailable"),
    }
    let served = router
        .serve_with_incoming_shutdown(incoming.into(), shutdown.cancelled_owned())
        .await;
    watcher.abort();
    health_loop.abort();
    shipper.abort();
    // The calls have drained: what they used goes to the control plane once more.
    match tokio::time::timeout(USAGE_LAST_SHIPMENT, usage.ship(source.as_ref())).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "the last usage shipment failed: its records are lost");
        }
        Err(_) => tracing::warn!("the last usage shipment timed out: its records are lost"),
    }
    served
}

/// How long a stopping router tries to ship its last usage records.
const USAGE_LAST_SHIPMENT: Duration = Duration::from_secs(5);

/// The health name under which the router reports its control-plane connection.
pub const CONTROL_PLANE_HEALTH: &str = "silo.controlplane.v1.ControlPlane";

/// Keeps the health service current. The router is SERVING (ready) once it has reached the
/// control plane and stays so through a control-plane outage, since the tenants it knows
/// keep working; the connection itself is reported under [`CONTROL_PLANE_HEALTH`].
/// Shutting down: NOT_SERVING.
async fn follow_health(
    health: silo_telemetry::Health,
    connected: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut ready = false;
    let mut last = None;
    loop {
        let now = connected();
        if last != Some(now) {
            if now {
                tracing::info!("control plane connected");
            } else if ready {
                tracing::warn!("control plane unreachable: serving the tenants already known");
            }
            if now && !ready {
                ready = true;
                health.set(true).await;
            }
            health.set_one(CONTROL_PLANE_HEALTH, now).await;
            last = Some(now);
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                health.set(false).await;
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Runs the router as configured until `shutdown`; on shutdown, calls in flight get the
/// configured grace period to finish.
pub async fn run(config: RouterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let verifier = silo_auth::JwtVerifier::new(config.jwt.verifier_config()?)?;
    let auth = Authenticator::new(verifier, config.tenant_claim.clone());
    let tls = config.tls.load()?;
    let link = config.link();
    let channel = routes::control_plane_channel(
        &config.control_plane_url,
        &link,
        config.control_plane_tls()?,
    )?;
    let source = ControlPlaneRoutes::new(channel, config.control_plane_token.clone(), &link);
    let connected = source.connected();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::RouterMetrics::register(&mut registry)
        .with_tenant_labels(config.max_tenant_labels);
    let grpc = silo_telemetry::GrpcMetrics::register(
        &mut registry,
        "silo_router",
        config.max_tenant_labels,
    );
    let core = Arc::new(
        RouterCore::with_metrics(
            auth,
            Arc::new(source),
            &config.route_cache(),
            config.pools(),
            config.call_limits(),
            metrics,
        )
        .with_usage(config.usage_meter(usage::UsageMetrics::register(&mut registry))),
    );
    // The endpoint outlives the gRPC server by the grace period, so it is stopped apart.
    let metrics_stop = CancellationToken::new();
    let readiness = silo_telemetry::Readiness::default();
    let metrics_addr = silo_telemetry::serve_metrics(
        config.metrics_listen,
        Arc::new(registry),
        readiness.clone(),
        metrics_stop.clone(),
    )
    .await?;
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        %metrics_addr,
        tls = tls.is_some(),
        "router listening"
    );
    let telemetry = ServeTelemetry {
        grpc,
        control_plane_connected: Arc::new(move || {
            connected.load(std::sync::atomic::Ordering::Relaxed)
        }),
        readiness,
        usage_flush: config.usage_flush(),
    };
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        silo_tls::grpc::Incoming::new(listener, tls),
        core,
        Duration::from_secs(config.transaction_idle_secs),
        telemetry,
        server_stop.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "router stopping: draining calls in flight"
    );
    server_stop.cancel();
    let abort = server.abort_handle();
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined??,
        Err(_) => {
            tracing::warn!("grace period over; ending the calls still running");
            abort.abort();
        }
    }
    metrics_stop.cancel();
    Ok(())
}
