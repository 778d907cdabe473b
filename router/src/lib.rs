//! silo's data plane: authenticates a call's tenant, finds the tenant's database through the
//! control plane and runs the call's SQL there over a per-tenant connection pool.
//!
//! [`run`] is what the binary calls; tests build a [`RouterCore`] with their own
//! [`RouteSource`] and [`serve`] it.

pub mod call;
pub mod config;
pub mod core;
pub mod error;
pub mod identity;
pub mod limits;
pub mod pool;
pub mod request;
pub mod routes;
pub mod service;
pub mod tenant;
pub mod value;

use std::sync::Arc;
use std::time::Duration;

use silo_proto::router::v1::router_server::RouterServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use crate::config::RouterConfig;
pub use crate::core::{CallLimits, RouterCore};
pub use crate::identity::Authenticator;
pub use crate::routes::{ControlPlaneRoutes, Invalidation, RouteError, RouteSource};
pub use crate::service::RouterService;

/// Serves `core` on `listener` until `shutdown`, following the route source's
/// invalidations meanwhile.
pub async fn serve<S: RouteSource>(
    listener: TcpListener,
    core: Arc<RouterCore<S>>,
    transaction_idle_timeout: Duration,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let watcher = core.spawn_invalidations(shutdown.clone());
    let service = RouterService::new(core, transaction_idle_timeout);
    let served = tonic::transport::Server::builder()
        .trace_fn(|request| {
            tracing::info_span!(
                "call",
                method = %request.uri().path(),
                tenant_id = tracing::field::Empty
            )
        })
        .add_service(RouterServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await;
    watcher.abort();
    served
}

/// Runs the router as configured until `shutdown`.
pub async fn run(config: RouterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let verifier = silo_auth::JwtVerifier::new(config.jwt.verifier_config()?)?;
    let auth = Authenticator::new(verifier, config.tenant_claim.clone());
    let channel = tonic::transport::Endpoint::from_shared(config.control_plane_url.clone())?
        .connect_timeout(Duration::from_millis(config.resolve_timeout_ms))
        .connect_lazy();
    let source = ControlPlaneRoutes::new(
        channel,
        config.control_plane_token.clone(),
        Duration::from_millis(config.resolve_timeout_ms),
    );
    let core = Arc::new(RouterCore::new(
        auth,
        Arc::new(source),
        &config.route_cache(),
        config.pools(),
        config.call_limits(),
    ));
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(address = %listener.local_addr()?, "router listening");
    serve(
        listener,
        core,
        Duration::from_secs(config.transaction_idle_secs),
        shutdown,
    )
    .await?;
    Ok(())
}
