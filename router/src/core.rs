//! [`RouterCore`]: from an authenticated tenant to a leased connection of its database,
//! and the invalidation loop that keeps routes and pools current.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::call::Lease;
use crate::error::RouterError;
use crate::identity::Authenticator;
use crate::metrics::RouterMetrics;
use crate::pool::{PoolConfig, PoolRegistry};
use crate::routes::{Change, Invalidation, RouteCache, RouteCacheConfig, RouteError, RouteSource};
use crate::tenant::{TenantId, TenantState};

/// The default response-size limit: gRPC clients refuse messages over 4 MiB unless told
/// otherwise; this leaves room for the columns and the estimate's error.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4_000_000;

/// Limits on what one call may ask for.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// Rows a unary Query returns when the request sets no `max_rows`.
    pub default_max_rows: usize,
    /// The most rows a unary Query may return, whatever the request says.
    pub max_rows: usize,
    /// Rows per streamed batch when the request sets none.
    pub default_batch_size: usize,
    /// The largest streamed batch.
    pub max_batch_size: usize,
    /// The most bytes (about) of rows in one response message: a unary Query beyond it
    /// fails, a streamed batch is sent early. Below gRPC clients' usual 4 MiB limit.
    pub max_response_bytes: usize,
    /// Longest a call waits while its tenant is MOVING for the tenant's new route
    /// (`--move-hold-ms`); then UNAVAILABLE, to be retried.
    pub move_hold: std::time::Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            default_max_rows: 1000,
            max_rows: 100_000,
            default_batch_size: 500,
            max_batch_size: 10_000,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            move_hold: DEFAULT_MOVE_HOLD,
        }
    }
}

/// How long calls are held by default while their tenant is MOVING: a move's switch
/// takes about a second.
pub const DEFAULT_MOVE_HOLD: std::time::Duration = std::time::Duration::from_millis(2000);

/// Everything a call needs, shared by the gRPC service and the background tasks: the
/// authenticator, the route cache over route source `S`, the pools and the limits.
pub struct RouterCore<S> {
    /// Verifies a call's token and picks its tenant.
    pub auth: Authenticator,
    /// Tenant routes, cached, from the route source.
    pub routes: RouteCache<S>,
    /// One connection pool per tenant.
    pub pools: PoolRegistry,
    /// Limits on one call's result.
    pub limits: CallLimits,
    /// The router's own metrics.
    pub metrics: RouterMetrics,
    /// Per-tenant usage accounts (off unless [`RouterCore::with_usage`]).
    pub usage: crate::usage::UsageMeter,
    /// Tenants that stopped being servable (suspended, deleting, gone), for the open
    /// Transaction streams, which must end rather than run on.
    revocations: broadcast::Sender<Revocation>,
    /// Every tenant event, once applied, for the calls held while their tenant moves.
    changes: broadcast::Sender<TenantId>,
}

/// A tenant whose open transactions must end, and why.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Why: not ACTIVE (its state) or not found.
    pub reason: Revoked,
}

/// Why a tenant's open transactions end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// It is in this state, not ACTIVE.
    NotActive(TenantState),
    /// It no longer exists.
    NotFound,
}

impl From<Revoked> for RouterError {
    fn from(reason: Revoked) -> Self {
        match reason {
            Revoked::NotActive(state) => RouterError::NotActive(state),
            Revoked::NotFound => RouterError::Route(RouteError::NotFound),
        }
    }
}

/// What an open transaction of one tenant listens to, to learn that it must end.
pub struct RevocationWatch {
    tenant: TenantId,
    events: broadcast::Receiver<Revocation>,
}

impl RevocationWatch {
    /// Resolves when the tenant is revoked (never otherwise). After missed events, the
    /// route is looked up again rather than assumed unchanged.
    pub async fn revoked<S: RouteSource>(&mut self, core: &RouterCore<S>) -> Revoked {
        loop {
            match self.events.recv().await {
                Ok(revocation) if revocation.tenant_id == self.tenant => return revocation.reason,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(reason) = core.revoked(&self.tenant).await {
                        return reason;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

impl<S: RouteSource> RouterCore<S> {
    /// A core resolving routes through `source`, with metrics nobody scrapes.
    pub fn new(
        auth: Authenticator,
        source: Arc<S>,
        routes: &RouteCacheConfig,
        pools: PoolConfig,
        limits: CallLimits,
    ) -> Self {
        Self::with_metrics(
            auth,
            source,
            routes,
            pools,
            limits,
            RouterMetrics::default(),
        )
    }

    /// `new`, reporting to `metrics`.
    pub fn with_metrics(
        auth: Authenticator,
        source: Arc<S>,
        routes: &RouteCacheConfig,
        pools: PoolConfig,
        limits: CallLimits,
        metrics: RouterMetrics,
    ) -> Self {
        Self {
            auth,
            routes: RouteCache::with_metrics(source, routes, metrics.clone()),
            pools: PoolRegistry::with_metrics(pools, metrics.clone()),
            metrics,
            limits,
            usage: crate::usage::UsageMeter::off(),
            revocations: broadcast::channel(256).0,
            changes: broadcast::channel(1024).0,
        }
    }

    /// The same core, accounting calls to `usage`.
    pub fn with_usage(mut self, usage: crate::usage::UsageMeter) -> Self {
        self.usage = usage;
        self
    }

    /// Starts listening for the revocation of `tenant` (take it before checking that the
    /// tenant is active, so that nothing falls between).
    pub fn watch_revocation(&self, tenant: &TenantId) -> RevocationWatch {
        RevocationWatch {
            tenant: tenant.clone(),
            events: self.revocations.subscribe(),
        }
    }

    /// Why the tenant can no longer be served, from its current route; `None` while it is
    /// active or the control plane cannot say.
    async fn revoked(&self, tenant: &TenantId) -> Option<Revoked> {
        match self.routes.get(tenant).await {
            Ok(route) if route.state != TenantState::Active => {
                Some(Revoked::NotActive(route.state))
            }
            Ok(_) | Err(RouteError::Unavailable(_) | RouteError::Invalid(_)) => None,
            Err(RouteError::NotFound) => Some(Revoked::NotFound),
        }
    }

    /// A connection to the tenant's database, within the tenant's limits. While the
    /// tenant is MOVING the call is held until its new route arrives, for at most
    /// [`CallLimits::move_hold`] and never past `deadline`.
    pub async fn lease(
        &self,
        tenant: &TenantId,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Lease, RouterError> {
        let route = self.active_route(tenant, deadline).await?;
        if !route.quota_exhausted.is_empty() {
            return Err(RouterError::QuotaExhausted(route.quota_exhausted.clone()));
        }
        let pool = self.pools.get(&route).await;
        let permit = pool.limiter.admit()?;
        let waiting = std::time::Instant::now();
        let (conn, turn) = self.pools.connection(&pool).await?;
        // On the call's span (its exported trace): how long the call waited for a
        // connection, in µs.
        tracing::Span::current().record("pool_wait_us", waiting.elapsed().as_micros() as u64);
        Ok(Lease::new(conn, turn, pool, permit))
    }

    /// The tenant's merged configuration, from its cached route (resolved first if the
    /// router has not seen the tenant yet); in every state but DELETED.
    pub async fn config(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<crate::tenant::TenantConfig>, RouterError> {
        let route = self.routes.get(tenant).await?;
        if route.state == TenantState::Deleted {
            return Err(RouteError::NotFound.into());
        }
        Ok(route.config.clone())
    }

    /// The tenant's route if it is ACTIVE, after waiting out a move: while the route says
    /// MOVING, each event of the tenant is a reason to read it again. Past the hold,
    /// [`RouterError::MoveHold`]; past the call's deadline, DEADLINE_EXCEEDED.
    async fn active_route(
        &self,
        tenant: &TenantId,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Arc<crate::tenant::Route>, RouterError> {
        let mut route = self.routes.get(tenant).await?;
        if route.state == TenantState::Moving {
            let held = tokio::time::Instant::now();
            let hold_end = held + self.limits.move_hold;
            let until = deadline.map_or(hold_end, |deadline| deadline.min(hold_end));
            // Subscribed before the route is read again: an event in between is not missed.
            let mut changes = self.changes.subscribe();
            loop {
                route = self.routes.get(tenant).await?;
                if route.state != TenantState::Moving {
                    break;
                }
                if tokio::time::timeout_at(until, next_change(&mut changes, tenant))
                    .await
                    .is_err()
                {
                    return Err(if until < hold_end {
                        crate::call::CallError::DeadlineExceeded.into()
                    } else {
                        RouterError::MoveHold(self.limits.move_hold)
                    });
                }
            }
            tracing::Span::current().record("move_hold_us", held.elapsed().as_micros() as u64);
        }
        if route.state != TenantState::Active {
            return Err(RouterError::NotActive(route.state));
        }
        Ok(route)
    }

    /// Drops what an event makes stale: the route, and with it the pool. While
    /// Transaction streams are open, looks the tenant up again (in the background) and
    /// ends its open transactions if it is no longer active. Returns whether a cached
    /// route was dropped.
    pub async fn apply(self: &Arc<Self>, invalidation: &Invalidation) -> bool {
        let tenant = &invalidation.tenant_id;
        // An event is an answer from the control plane: tenants the router does not know
        // need not wait for the breaker's next probe.
        self.routes.breaker().close();
        let dropped = self.routes.invalidate(tenant, invalidation.sequence).await;
        tracing::debug!(tenant_id = %tenant, sequence = invalidation.sequence, dropped, "tenant event");
        if dropped || self.pools.contains(tenant) {
            self.pools.invalidate(tenant).await;
        }
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(tenant.clone());
        }
        if self.revocations.receiver_count() > 0 {
            let (core, tenant) = (Arc::clone(self), tenant.clone());
            tokio::spawn(async move {
                if let Some(reason) = core.revoked(&tenant).await {
                    tracing::info!(tenant_id = %tenant, ?reason, "ending the tenant's open transactions");
                    let _ = core.revocations.send(Revocation {
                        tenant_id: tenant,
                        reason,
                    });
                }
            });
        }
        dropped
    }

    /// The event stream restarted at `sequence` without replaying what came before: every
    /// cached route read before it is dropped (and resolved again at its next call).
    /// Returns how many were.
    pub async fn resync(self: &Arc<Self>, sequence: u64) -> usize {
        let mut dropped = 0;
        for tenant_id in self.routes.cached_tenants() {
            let invalidation = Invalidation {
                tenant_id,
                sequence,
            };
            dropped += usize::from(self.apply(&invalidation).await);
        }
        dropped
    }

    /// Follows the source's invalidations until `shutdown`.
    pub fn spawn_invalidations(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let core = Arc::clone(self);
        let pools = self.pools.clone();
        let housekeeping_stop = shutdown.clone();
        tokio::spawn(async move {
            pools
                .housekeeping(std::time::Duration::from_millis(500), housekeeping_stop)
                .await;
        });
        tokio::spawn(async move {
            // Whatever has arrived is applied together and logged as one line: a burst (a
            // tier change for every tenant, a replay after a break) never floods the log.
            let mut changes = core
                .routes
                .source()
                .invalidations(shutdown.clone())
                .ready_chunks(1024);
            loop {
                let batch = tokio::select! {
                    () = shutdown.cancelled() => return,
                    batch = changes.next() => match batch {
                        Some(batch) => batch,
                        None => return,
                    },
                };
                let (mut events, mut dropped) = (0usize, 0usize);
                for change in &batch {
                    match change {
                        Change::Tenant(invalidation) => {
                            events += 1;
                            core.metrics.tenant_events.inc();
                            dropped += usize::from(core.apply(invalidation).await);
                        }
                        Change::Config(invalidation) => {
                            events += 1;
                            core.metrics.tenant_events.inc();
                            // An event is an answer from the control plane.
                            core.routes.breaker().close();
                            core.routes
                                .refresh(&invalidation.tenant_id, invalidation.sequence);
                        }
                        Change::Resync { sequence } => {
                            let resynced = core.resync(*sequence).await;
                            tracing::info!(
                                sequence,
                                routes_dropped = resynced,
                                "following tenant events from the head of the log"
                            );
                        }
                    }
                }
                if dropped > 0 {
                    tracing::info!(events, routes_dropped = dropped, "tenant events applied");
                } else if events > 0 {
                    tracing::debug!(events, "tenant events applied; no cached route changed");
                }
            }
        })
    }
}

/// Resolves at the next event of `tenant`, or when events were missed (any of them may
/// have been its); never when the sender is gone.
async fn next_change(changes: &mut broadcast::Receiver<TenantId>, tenant: &TenantId) {
    loop {
        match changes.recv().await {
            Ok(changed) if changed == *tenant => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}
