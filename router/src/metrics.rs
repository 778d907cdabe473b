//! The router's own Prometheus metrics: pools and the route cache. Per-tenant call counts
//! and latencies come from silo-telemetry's request layer.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of a counter by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The outcome (`hit`, `miss`, `found`, `not_found`, ...).
    pub result: String,
}

/// Labels of a counter by cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The cause (`capacity`, `idle`, `invalidated`, `replaced`).
    pub reason: String,
}

/// Labels of the per-tenant pool gauges: a tenant id, or `_other` past the label budget.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantPoolLabels {
    /// The tenant (only tenants with a pool: resolved, ACTIVE).
    pub tenant_id: String,
    /// `in_use` (lent to a call) or `idle`.
    pub state: String,
}

/// Labels of the per-tenant wait gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant, or `_other` past the label budget.
    pub tenant_id: String,
}

/// The router's Prometheus metrics; clones share the same series.
#[derive(Clone, Debug, Default)]
pub struct RouterMetrics {
    /// Route cache lookups, by `hit` / `miss`.
    pub route_lookups: Family<ResultLabels, Counter>,
    /// Resolutions asked of the control plane (or refused by the circuit breaker).
    pub route_resolutions: Family<ResultLabels, Counter>,
    /// Tenant events received from the control plane (heartbeats and resyncs not counted).
    pub tenant_events: Counter,
    /// Tenant pools created.
    pub pool_creations: Counter,
    /// Tenant pools closed, by reason.
    pub pool_evictions: Family<ReasonLabels, Counter>,
    /// Tenant pools open now.
    pub pools_open: Gauge,
    /// Connections open over all pools (idle or lent).
    pub pool_connections: Gauge,
    /// Idle connections over all pools.
    pub pool_idle_connections: Gauge,
    /// Calls that had to wait for a connection, summed over the pools alive.
    pub pool_waits: Gauge,
    /// Connections of each tenant's pool, in use and idle (the tenants with the most
    /// connections get their own label, up to `tenant_labels`; the rest sum under `_other`).
    pub tenant_pool_connections: Family<TenantPoolLabels, Gauge>,
    /// Seconds calls of each tenant waited for a connection, over its current pool's life.
    pub tenant_pool_wait_seconds: Family<TenantLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// How many tenants get a label of their own in the per-tenant gauges (0: none are
    /// kept).
    pub tenant_labels: usize,
}

impl RouterMetrics {
    /// New metrics, registered in `registry` under `silo_router_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "silo_router_route_lookups",
            "route cache lookups, by result (hit: cached; miss: resolved by the control plane)",
            metrics.route_lookups.clone(),
        );
        registry.register(
            "silo_router_route_resolutions",
            "ResolveTenant calls, by result (found, not_found, unavailable, invalid; refused: not \
             sent, the circuit breaker is open)",
            metrics.route_resolutions.clone(),
        );
        registry.register(
            "silo_router_tenant_events",
            "tenant events received from the control plane's WatchTenants stream",
            metrics.tenant_events.clone(),
        );
        registry.register(
            "silo_router_pool_creations",
            "tenant pools created",
            metrics.pool_creations.clone(),
        );
        registry.register(
            "silo_router_pool_evictions",
            "tenant pools closed, by reason (capacity, idle, invalidated, replaced)",
            metrics.pool_evictions.clone(),
        );
        registry.register(
            "silo_router_pools",
            "tenant pools open",
            metrics.pools_open.clone(),
        );
        registry.register(
            "silo_router_pool_connections",
            "connections open over all tenant pools",
            metrics.pool_connections.clone(),
        );
        registry.register(
            "silo_router_pool_idle_connections",
            "idle connections over all tenant pools",
            metrics.pool_idle_connections.clone(),
        );
        registry.register(
            "silo_router_pool_waits",
            "calls that waited for a connection, over the pools open now",
            metrics.pool_waits.clone(),
        );
        registry.register(
            "silo_router_tenant_pool_connections",
            "connections of a tenant's pool, by state (in_use, idle); tenants past \
             --max-tenant-labels sum under tenant_id=\"_other\"",
            metrics.tenant_pool_connections.clone(),
        );
        registry.register(
            "silo_router_tenant_pool_wait_seconds",
            "seconds a tenant's calls waited for a connection, over its current pool's life",
            metrics.tenant_pool_wait_seconds.clone(),
        );
        metrics
    }

    /// The same metrics with per-tenant pool gauges for up to `tenants` tenants.
    pub fn with_tenant_labels(mut self, tenants: usize) -> Self {
        self.tenant_labels = tenants;
        self
    }

    /// Counts one route resolution with `result`.
    pub fn route_resolution(&self, result: &str) {
        self.route_resolutions
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Resolutions with `result` so far.
    pub fn route_resolutions(&self, result: &str) -> u64 {
        self.route_resolutions
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .get()
    }

    /// Counts one route cache lookup.
    pub fn route_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.route_lookups
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }
}
