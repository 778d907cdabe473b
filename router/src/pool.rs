//! Per-tenant connection pools: bb8 pools of tokio-postgres connections in a moka cache.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use secrecy::ExposeSecret;
use silo_tls::postgres::{PgConnector, PgConnectors};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::connection::{ConnectError, PgConnection, PgManager, PooledConnection};
use crate::connection::{ConnectFailures, Server};
use crate::limits::TenantLimiter;
use crate::tenant::{PoolKey, Route, TenantId};

/// Limits of the pool registry and of each tenant pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most tenant pools alive at once; the least recently used is closed first.
    pub capacity: u64,
    /// A pool unused this long is closed.
    pub time_to_idle: Duration,
    /// Longest wait for a connection, connecting included: after it UNAVAILABLE if
    /// connecting failed meanwhile, else RESOURCE_EXHAUSTED (the pool was busy).
    pub connect_timeout: Duration,
    /// Upper bound on any tenant's pool, whatever its tier says.
    pub max_connections_per_tenant: u32,
    /// Ping a connection before handing it out.
    pub test_on_check_out: bool,
    /// Most connections over all tenant pools; 0 means no global cap. When it is reached,
    /// a pool whose connections are all idle is closed to make room, else the call is
    /// RESOURCE_EXHAUSTED.
    pub connection_budget: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            capacity: 1000,
            time_to_idle: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(2),
            max_connections_per_tenant: 64,
            test_on_check_out: false,
            connection_budget: 0,
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The tenant's database did not accept a connection within the connect timeout; with
    /// the TLS problem when TLS was what failed (the certificate's fault in words, never a
    /// host name or secret).
    #[error("tenant database unreachable{}", .0.as_ref().map(|tls| format!(": {tls}")).unwrap_or_default())]
    Unreachable(Option<String>),
    /// Every connection of the tenant's pool stayed busy for the whole timeout, and no
    /// attempt to open another one failed.
    #[error("all connections of the tenant are busy")]
    Exhausted,
}

/// A call's place among the at most `max_size` holders of a tenant pool's connections,
/// given in arrival order. Held with the connection and dropped after it is back in the
/// pool, so the next holder always finds it there.
///
/// bb8 (0.9) alone is not fair: a connection put back wakes one waiter, and a call that
/// arrives before that waiter runs takes the connection; the waiter queues again at the
/// end. Under a full pool a few calls then wait many times the mean (at 64 clients on a
/// pool of 10, p99 was 6 times the mean). A FIFO semaphore in front of bb8, which hands a
/// returned permit straight to the longest waiter, removes the barging.
#[derive(Debug)]
pub struct Turn {
    _permit: OwnedSemaphorePermit,
}

/// A tenant's pool and call limits, built from one version of its route.
pub struct TenantPool {
    key: PoolKey,
    pool: bb8::Pool<PgManager>,
    /// The manager's failed connection attempts.
    connect_failures: Arc<ConnectFailures>,
    max_size: u32,
    /// `max_size` turns, handed out in arrival order.
    turns: Arc<Semaphore>,
    connect_timeout: Duration,
    /// The tenant's rate and concurrency limits, kept with its pool.
    pub limiter: TenantLimiter,
}

impl TenantPool {
    /// `connector`: the TLS connector for the route's settings, or why there is none (its
    /// CA file cannot be read); then every connection attempt fails with that reason.
    fn new(
        route: &Route,
        config: &PoolConfig,
        budget: Option<Arc<Semaphore>>,
        connector: Result<PgConnector, String>,
    ) -> Self {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&route.host)
            .port(route.port)
            .dbname(&route.database)
            .user(&route.user)
            .application_name("silo-router")
            .connect_timeout(config.connect_timeout)
            // The session default that RESET ALL returns to.
            .options(format!(
                "-c statement_timeout={}",
                route.limits.statement_timeout.as_millis()
            ));
        route.tls.apply(&mut pg);
        let server = Server::new(&route.host, route.port);
        let password = route.password.expose_secret();
        if !password.is_empty() {
            pg.password(password);
        }
        let max_size = route
            .limits
            .max_connections
            .clamp(1, config.max_connections_per_tenant.max(1));
        let manager = PgManager::new(pg, server, connector, budget);
        let connect_failures = manager.failures();
        let pool = bb8::Pool::builder()
            .max_size(max_size)
            .min_idle(None)
            .connection_timeout(config.connect_timeout)
            .test_on_check_out(config.test_on_check_out)
            .idle_timeout(Some(config.time_to_idle))
            .build_unchecked(manager);
        Self {
            key: route.pool_key(),
            pool,
            connect_failures,
            max_size,
            turns: Arc::new(Semaphore::new(max_size as usize)),
            connect_timeout: config.connect_timeout,
            limiter: TenantLimiter::new(&route.limits),
        }
    }

    /// A live connection whose last session reset succeeded, and the call's [`Turn`] (drop
    /// it after the connection). Calls get their turns in arrival order. A connection whose
    /// server side has gone (a terminated backend, a failover) or whose reset failed is
    /// closed and another one tried: every idle connection may be dead after a server
    /// restart.
    async fn get(&self) -> Result<(PooledConnection, Turn), PoolError> {
        let failures = self.connect_failures.count();
        // A free turn is taken without arming a timer (the common case on the call path);
        // the semaphore is never closed, so only the timeout ends a wait.
        let turn = match self.turns.clone().try_acquire_owned() {
            Ok(turn) => turn,
            Err(_) => {
                tokio::time::timeout(self.connect_timeout, self.turns.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(|| self.timed_out(failures))?
            }
        };
        for _ in 0..=self.max_size {
            let mut conn = self.checkout().await?;
            if conn.client.is_closed() {
                tracing::debug!("pooled connection found closed; dropping it");
                conn.broken = true;
                continue;
            }
            match conn.settle().await {
                Ok(()) => return Ok((conn, Turn { _permit: turn })),
                Err(e) => {
                    tracing::debug!(error = %e, "session reset failed; dropping the connection");
                    conn.broken = true;
                }
            }
        }
        Err(PoolError::Unreachable(None))
    }

    /// A connection; after the timeout, unreachable if an attempt to connect failed while
    /// the call waited, else exhausted (every connection stayed busy).
    async fn checkout(&self) -> Result<PooledConnection, PoolError> {
        let failures = self.connect_failures.count();
        match self.pool.get_owned().await {
            Ok(conn) => Ok(conn),
            Err(bb8::RunError::User(_)) => {
                Err(PoolError::Unreachable(self.connect_failures.tls_reason()))
            }
            Err(bb8::RunError::TimedOut) => Err(self.timed_out(failures)),
        }
    }

    /// Why a wait for a connection timed out: unreachable if an attempt to connect failed
    /// since `failures` was read, else exhausted.
    fn timed_out(&self, failures: u64) -> PoolError {
        if self.connect_failures.count() > failures {
            PoolError::Unreachable(self.connect_failures.tls_reason())
        } else {
            PoolError::Exhausted
        }
    }

    /// Connections currently open (idle or in use).
    pub fn connections(&self) -> u32 {
        self.pool.state().connections
    }

    /// Has connections and none of them is lent out.
    fn is_idle(&self) -> bool {
        let state = self.pool.state();
        state.connections > 0 && state.idle_connections == state.connections
    }

    /// Would lending a connection now need a new one?
    fn needs_new_connection(&self) -> bool {
        let state = self.pool.state();
        state.idle_connections == 0 && state.connections < self.max_size
    }
}

/// Every tenant's pool.
#[derive(Clone)]
pub struct PoolRegistry {
    pools: Cache<TenantId, Arc<TenantPool>>,
    metrics: crate::metrics::RouterMetrics,
    config: Arc<PoolConfig>,
    budget: Option<Arc<Semaphore>>,
    /// TLS connectors, one per distinct `sslmode`/`sslrootcert` of the routes.
    connectors: Arc<PgConnectors>,
}

impl PoolRegistry {
    /// A registry with metrics nobody scrapes.
    pub fn new(config: PoolConfig) -> Self {
        Self::with_metrics(config, crate::metrics::RouterMetrics::default())
    }

    /// A registry reporting pool creations, evictions and sizes to `metrics`.
    pub fn with_metrics(config: PoolConfig, metrics: crate::metrics::RouterMetrics) -> Self {
        let evictions = metrics.pool_evictions.clone();
        let pools = Cache::builder()
            .max_capacity(config.capacity)
            // Least recently used first, as the design says. Moka's default policy
            // (TinyLFU) may refuse a new entry in favour of older, more frequently used
            // ones, so a tenant that just became busy could lose its pool again and again.
            .eviction_policy(EvictionPolicy::lru())
            .time_to_idle(config.time_to_idle)
            .eviction_listener(move |tenant: Arc<TenantId>, pool: Arc<TenantPool>, cause| {
                // Dropping the last reference closes the pool's idle connections; connections
                // lent to calls in flight close when those calls return them.
                let reason = match cause {
                    RemovalCause::Expired => "idle",
                    RemovalCause::Explicit => "invalidated",
                    RemovalCause::Replaced => "replaced",
                    RemovalCause::Size => "capacity",
                };
                evictions
                    .get_or_create(&crate::metrics::ReasonLabels { reason: reason.to_owned() })
                    .inc();
                tracing::info!(tenant_id = %tenant, reason, connections = pool.connections(), "closing tenant pool");
            })
            .build();
        let budget = (config.connection_budget > 0)
            .then(|| Arc::new(Semaphore::new(config.connection_budget as usize)));
        Self {
            pools,
            metrics,
            config: Arc::new(config),
            budget,
            connectors: Arc::default(),
        }
    }

    fn build(&self, route: &Route) -> Arc<TenantPool> {
        // The file and its fault go to the log; the caller learns only that the router's
        // own configuration is at fault.
        let connector = self.connectors.get(&route.tls).map_err(|error| {
            tracing::warn!(tenant_id = %route.tenant_id, error = %error, "the route's TLS settings cannot be used");
            "the router cannot read the CA certificates of the tenant's route".to_owned()
        });
        Arc::new(TenantPool::new(
            route,
            &self.config,
            self.budget.clone(),
            connector,
        ))
    }

    /// The tenant's pool for this route, created once (single-flight) and rebuilt when the
    /// route's endpoint, credentials or limits changed.
    pub async fn get(&self, route: &Route) -> Arc<TenantPool> {
        let tenant = &route.tenant_id;
        let mut created = false;
        let pool = self
            .pools
            .get_with_by_ref(tenant, async {
                created = true;
                self.metrics.pool_creations.inc();
                self.build(route)
            })
            .await;
        if created {
            // Evict now, not at the next housekeeping tick: the pool past the capacity
            // closes its connections before the new one opens any.
            self.close_removed().await;
        }
        if pool.key.matches(route) {
            return pool;
        }
        let stale = pool;
        self.pools
            .entry_by_ref(tenant)
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if !Arc::ptr_eq(entry.value(), &stale) => {
                        moka::ops::compute::Op::Nop
                    }
                    _ => moka::ops::compute::Op::Put(self.build(route)),
                };
                std::future::ready(op)
            })
            .await;
        self.pools
            .get_with_by_ref(tenant, async { self.build(route) })
            .await
    }

    /// A connection from the tenant's pool, within the global budget: when the budget is
    /// used up, one pool whose connections are all idle is closed to make room; when there
    /// is none, [`PoolError::Exhausted`].
    pub async fn connection(
        &self,
        pool: &Arc<TenantPool>,
    ) -> Result<(PooledConnection, Turn), PoolError> {
        if let Some(budget) = &self.budget
            && budget.available_permits() == 0
            && pool.needs_new_connection()
        {
            let victim = self
                .pools
                .iter()
                .find(|(_, other)| !Arc::ptr_eq(other, pool) && other.is_idle())
                .map(|(tenant, _)| tenant);
            let Some(victim) = victim else {
                return Err(PoolError::Exhausted);
            };
            tracing::info!(tenant_id = %victim, "connection budget full; closing an idle pool");
            self.pools.invalidate(victim.as_ref()).await;
            // The pool's idle connections (and their budget) are released here.
            self.close_removed().await;
        }
        pool.get().await
    }

    /// Closes the tenant's pool (calls in flight finish on their connections).
    pub async fn invalidate(&self, tenant: &TenantId) {
        self.pools.invalidate(tenant).await;
        self.close_removed().await;
    }

    /// Runs the cache's pending work so that pools evicted or invalidated are dropped now,
    /// closing their idle connections. Moka removes an entry (and calls the eviction
    /// listener) in one maintenance run but lets go of its own reference to the value only
    /// in the next, so it takes two; `pools_are_evicted_least_recently_used_and_close_at_once`
    /// checks the connections are gone within 100 ms.
    async fn close_removed(&self) {
        self.pools.run_pending_tasks().await;
        self.pools.run_pending_tasks().await;
    }

    /// Runs the cache's pending work every `every` until `shutdown`: moka evicts (and so
    /// closes pools) only while the cache is used, so a router that goes quiet would keep
    /// evicted and idle-expired pools' connections open without this.
    pub async fn housekeeping(
        &self,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {
                    self.pools.run_pending_tasks().await;
                    self.observe();
                }
            }
        }
    }

    /// Updates the pool gauges.
    fn observe(&self) {
        let (mut connections, mut idle, mut waits) = (0i64, 0i64, 0i64);
        for (_, pool) in self.pools.iter() {
            let state = pool.pool.state();
            connections += i64::from(state.connections);
            idle += i64::from(state.idle_connections);
            waits += i64::try_from(state.statistics.get_waited).unwrap_or(i64::MAX);
        }
        self.metrics
            .pools_open
            .set(i64::try_from(self.pools.entry_count()).unwrap_or(i64::MAX));
        self.metrics.pool_connections.set(connections);
        self.metrics.pool_idle_connections.set(idle);
        self.metrics.pool_waits.set(waits);
        self.observe_tenants();
    }

    /// Per-tenant pool gauges: the tenants with the most connections by name, the rest
    /// summed under `_other`. Only tenants with a pool appear: ids a caller merely sent
    /// never become label values.
    fn observe_tenants(&self) {
        use crate::metrics::{TenantLabel, TenantPoolLabels};
        let budget = self.metrics.tenant_labels;
        if budget == 0 {
            return;
        }
        let mut pools: Vec<(String, bb8::State)> = self
            .pools
            .iter()
            .map(|(tenant, pool)| (tenant.to_string(), pool.pool.state()))
            .collect();
        pools.sort_by(|a, b| b.1.connections.cmp(&a.1.connections).then(a.0.cmp(&b.0)));
        let connections = &self.metrics.tenant_pool_connections;
        let waits = &self.metrics.tenant_pool_wait_seconds;
        connections.clear();
        waits.clear();
        for (rank, (tenant, state)) in pools.into_iter().enumerate() {
            let tenant_id = if rank < budget {
                tenant
            } else {
                "_other".to_owned()
            };
            let idle = i64::from(state.idle_connections);
            let in_use = i64::from(state.connections) - idle;
            for (name, value) in [("in_use", in_use), ("idle", idle)] {
                connections
                    .get_or_create(&TenantPoolLabels {
                        tenant_id: tenant_id.clone(),
                        state: name.to_owned(),
                    })
                    .inc_by(value);
            }
            waits
                .get_or_create(&TenantLabel { tenant_id })
                .inc_by(state.statistics.get_wait_time.as_secs_f64());
        }
    }

    /// Whether the tenant has a pool now.
    pub fn contains(&self, tenant: &TenantId) -> bool {
        self.pools.contains_key(tenant)
    }

    /// Pools alive, after pending evictions ran.
    pub async fn len(&self) -> u64 {
        self.pools.run_pending_tasks().await;
        self.pools.entry_count()
    }

    /// Whether no pool is alive, after pending evictions ran.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{TenantState, TierLimits};
    use silo_tls::postgres::PgTls;

    fn route(tenant: &str) -> Route {
        Route {
            tenant_id: TenantId::parse(tenant).expect("id"),
            state: TenantState::Active,
            tier: "standard".into(),
            host: "127.0.0.1".into(),
            port: 1,
            database: tenant.into(),
            user: tenant.into(),
            password: secrecy::SecretString::from(""),
            credentials_version: 1,
            limits: TierLimits::default(),
            sequence: 1,
            tls: PgTls::disabled(),
            config: Default::default(),
            quota_exhausted: String::new(),
        }
    }

    /// Per-tenant gauges name tenants up to the budget and sum the rest under `_other`;
    /// a tenant without a pool never appears.
    #[tokio::test]
    async fn tenant_pool_gauges_respect_the_label_budget() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::RouterMetrics::register(&mut registry).with_tenant_labels(1);
        let pools = PoolRegistry::with_metrics(PoolConfig::default(), metrics);
        for tenant in ["acme", "globex", "initech"] {
            pools.get(&route(tenant)).await;
        }
        pools.pools.run_pending_tasks().await;
        pools.observe();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let named: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|line| line.starts_with("silo_router_tenant_pool_connections{"))
            .collect();
        // Equal connection counts: ties go by tenant id, so acme keeps its label.
        assert_eq!(
            named,
            [
                r#"silo_router_tenant_pool_connections{tenant_id="acme",state="in_use"} 0"#,
                r#"silo_router_tenant_pool_connections{tenant_id="acme",state="idle"} 0"#,
                r#"silo_router_tenant_pool_connections{tenant_id="_other",state="in_use"} 0"#,
                r#"silo_router_tenant_pool_connections{tenant_id="_other",state="idle"} 0"#,
            ]
            .into_iter()
            .collect(),
            "{text}"
        );
        assert!(!text.contains("ghost"));
    }
}
