//! [`RouteCache`]: routes in moka, resolved once per tenant at a time (single-flight),
//! dropped by invalidation events, with a TTL only as a fallback and a short negative cache.
//! When the source is unavailable, the last route known for a tenant keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::{RouteError, RouteSource};
use crate::tenant::{Route, TenantId};

#[derive(Debug, Clone)]
pub struct RouteCacheConfig {
    /// Most tenants whose routes are cached.
    pub capacity: u64,
    /// How long a route is trusted without an event (the fallback).
    pub ttl: Duration,
    /// How long "no such tenant" is remembered.
    pub negative_ttl: Duration,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(2),
        }
    }
}

#[derive(Clone)]
enum Lookup {
    Found(Arc<Route>),
    NotFound,
}

struct LookupExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<TenantId, Lookup> for LookupExpiry {
    fn expire_after_create(
        &self,
        _key: &TenantId,
        value: &Lookup,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Lookup::Found(_) => self.ttl,
            Lookup::NotFound => self.negative_ttl,
        })
    }
}

/// Cached routes in front of a [`RouteSource`].
pub struct RouteCache<S> {
    source: Arc<S>,
    metrics: crate::metrics::RouterMetrics,
    fresh: Cache<TenantId, Lookup>,
    /// The last route resolved per tenant, served when the source is unavailable; dropped
    /// by events like `fresh`.
    last_known: Cache<TenantId, Arc<Route>>,
}

impl<S: RouteSource> RouteCache<S> {
    pub fn new(source: Arc<S>, config: &RouteCacheConfig) -> Self {
        Self::with_metrics(source, config, crate::metrics::RouterMetrics::default())
    }

    pub fn with_metrics(
        source: Arc<S>,
        config: &RouteCacheConfig,
        metrics: crate::metrics::RouterMetrics,
    ) -> Self {
        Self {
            source,
            metrics,
            fresh: Cache::builder()
                .max_capacity(config.capacity)
                .expire_after(LookupExpiry {
                    ttl: config.ttl,
                    negative_ttl: config.negative_ttl,
                })
                .build(),
            last_known: Cache::builder().max_capacity(config.capacity).build(),
        }
    }

    pub fn source(&self) -> &Arc<S> {
        &self.source
    }

    /// The tenant's route: cached, else resolved (one resolution per tenant at a time).
    pub async fn get(&self, tenant: &TenantId) -> Result<Arc<Route>, RouteError> {
        let mut missed = false;
        let resolved = self
            .fresh
            .try_get_with_by_ref(tenant, async {
                missed = true;
                match self.source.resolve(tenant).await {
                    Ok(route) => {
                        let route = Arc::new(route);
                        self.last_known.insert(tenant.clone(), route.clone()).await;
                        Ok(Lookup::Found(route))
                    }
                    Err(RouteError::NotFound) => Ok(Lookup::NotFound),
                    Err(e) => Err(e),
                }
            })
            .await;
        self.metrics.route_lookup(!missed);
        match resolved {
            Ok(Lookup::Found(route)) => Ok(route),
            Ok(Lookup::NotFound) => Err(RouteError::NotFound),
            Err(error) => match self.last_known.get(tenant).await {
                Some(route) => {
                    tracing::warn!(tenant_id = %tenant, error = %error, "serving the last known route");
                    Ok(route)
                }
                None => Err((*error).clone()),
            },
        }
    }

    /// Drops the tenant's route unless it was read at or after `sequence`. Returns whether
    /// anything older was dropped (or nothing was cached), i.e. whether the tenant's pool
    /// must go too.
    pub async fn invalidate(&self, tenant: &TenantId, sequence: u64) -> bool {
        let current = match self.fresh.get(tenant).await {
            Some(Lookup::Found(route)) => Some(route),
            Some(Lookup::NotFound) => None,
            None => self.last_known.get(tenant).await,
        };
        if current.is_some_and(|route| route.sequence >= sequence) {
            return false;
        }
        self.fresh.invalidate(tenant).await;
        self.last_known.invalidate(tenant).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::stream::BoxStream;
    use secrecy::SecretString;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::routes::Invalidation;
    use crate::tenant::{TenantState, TierLimits};

    /// Answers with `route` (or the error set), counting resolutions.
    struct Scripted {
        answer: Mutex<Result<Route, RouteError>>,
        calls: AtomicU32,
    }

    impl RouteSource for Scripted {
        async fn resolve(&self, _tenant: &TenantId) -> Result<Route, RouteError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.answer.lock().expect("lock").clone()
        }

        fn invalidations(&self, _shutdown: CancellationToken) -> BoxStream<'static, Invalidation> {
            Box::pin(futures::stream::pending())
        }
    }

    fn route(sequence: u64) -> Route {
        Route {
            tenant_id: acme(),
            state: TenantState::Active,
            tier: "standard".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            database: "acme".into(),
            user: "acme".into(),
            password: SecretString::from("pw"),
            credentials_version: 1,
            limits: TierLimits::default(),
            sequence,
        }
    }

    fn acme() -> TenantId {
        TenantId::parse("acme").expect("valid")
    }

    fn cache(answer: Result<Route, RouteError>) -> RouteCache<Scripted> {
        let source = Arc::new(Scripted {
            answer: Mutex::new(answer),
            calls: AtomicU32::new(0),
        });
        RouteCache::new(source, &RouteCacheConfig::default())
    }

    fn calls(cache: &RouteCache<Scripted>) -> u32 {
        cache.source().calls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn concurrent_lookups_resolve_once() {
        let cache = cache(Ok(route(5)));
        let tenant = acme();
        let lookups = (0..100).map(|_| cache.get(&tenant));
        for result in futures::future::join_all(lookups).await {
            assert_eq!(result.expect("found").sequence, 5);
        }
        assert_eq!(calls(&cache), 1);
    }

    #[tokio::test]
    async fn unknown_tenants_are_remembered_briefly() {
        let cache = cache(Err(RouteError::NotFound));
        for _ in 0..3 {
            assert!(matches!(
                cache.get(&acme()).await,
                Err(RouteError::NotFound)
            ));
        }
        assert_eq!(calls(&cache), 1);
    }

    #[tokio::test]
    async fn events_older_than_the_route_are_ignored_newer_ones_drop_it() {
        let cache = cache(Ok(route(5)));
        cache.get(&acme()).await.expect("found");
        assert!(!cache.invalidate(&acme(), 5).await);
        cache.get(&acme()).await.expect("still cached");
        assert_eq!(calls(&cache), 1);
        assert!(cache.invalidate(&acme(), 6).await);
        cache.get(&acme()).await.expect("resolved again");
        assert_eq!(calls(&cache), 2);
    }

    #[tokio::test]
    async fn a_known_tenant_keeps_working_when_the_source_is_down() {
        let cache = cache(Ok(route(5)));
        cache.get(&acme()).await.expect("found");
        *cache.source().answer.lock().expect("lock") = Err(RouteError::Unavailable("down".into()));
        cache.fresh.invalidate(&acme()).await; // as if the TTL had passed
        assert_eq!(cache.get(&acme()).await.expect("last known").sequence, 5);
        // After an event the last known route is stale too: no longer served.
        assert!(cache.invalidate(&acme(), 9).await);
        assert!(matches!(
            cache.get(&acme()).await,
            Err(RouteError::Unavailable(_))
        ));
    }
}
