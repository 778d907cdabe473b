//! Where each tenant's database is: a [`RouteSource`] (the control plane, or a fake in
//! tests) behind a [`RouteCache`].

mod breaker;
mod cache;
mod control_plane;

use std::future::Future;

use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::tenant::{Route, TenantId};

pub use breaker::Breaker;
pub use cache::{RouteCache, RouteCacheConfig};
pub use control_plane::{ControlPlaneRoutes, LinkConfig, WatchBackoff, control_plane_channel};

/// Why a route could not be found.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// The control plane does not know the tenant.
    #[error("tenant not found")]
    NotFound,
    /// The control plane cannot be reached or failed; the detail is for logs only.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The control plane answered with a route the router cannot use (logs only).
    #[error("invalid route from the control plane: {0}")]
    Invalid(String),
}

/// Something changed for a tenant (state, credentials, tier): drop what is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The tenant that changed.
    pub tenant_id: TenantId,
    /// The event's sequence number; routes read at or after it are current.
    pub sequence: u64,
}

/// What the tenant-event stream tells the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One tenant changed.
    Tenant(Invalidation),
    /// Only the tenant's configuration changed (not its state, credentials or place):
    /// its cached route is refreshed at once, in the background, and its pool is kept.
    Config(Invalidation),
    /// The stream (re)started at the log's head, `sequence`, without replaying what came
    /// before it (the router had just started, or the events it missed are no longer
    /// kept): a route read before that point may be stale.
    Resync {
        /// The head's event sequence number.
        sequence: u64,
    },
}

/// The source of truth for tenant routes.
pub trait RouteSource: Send + Sync + 'static {
    /// The tenant's current route.
    fn resolve(&self, tenant: &TenantId) -> impl Future<Output = Result<Route, RouteError>> + Send;

    /// Every change from now on, until `shutdown` is cancelled. Implementations reconnect
    /// on their own; the stream ends only at shutdown.
    fn invalidations(&self, shutdown: CancellationToken) -> BoxStream<'static, Change>;

    /// Stores usage records where they are kept (the control plane's RecordUsage); a
    /// source that keeps none accepts and drops them. `Err` (for logs) when they may not
    /// have been stored: they are sent again.
    fn record_usage(
        &self,
        request: silo_proto::controlplane::v1::RecordUsageRequest,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let _ = request;
        async { Ok(()) }
    }
}

/// Every route source is where its router's usage goes.
impl<S: RouteSource> crate::usage::UsageSink for S {
    fn record_usage(
        &self,
        request: silo_proto::controlplane::v1::RecordUsageRequest,
    ) -> impl Future<Output = Result<(), String>> + Send {
        RouteSource::record_usage(self, request)
    }
}
