//! [`RouteCache`]: routes in moka, resolved once per tenant at a time (single-flight),
//! dropped by invalidation events, and served stale while they are revalidated.
//!
//! A route older than the TTL is still answered at once; one background refresh per
//! tenant brings it up to date (stale-while-revalidate), and a failed refresh is retried
//! only after a back-off. So a slow or unreachable control plane never sits on the call
//! path of a tenant the router knows. `max_stale` bounds how long a route that cannot be
//! revalidated may be served (by default without bound: availability first). Resolutions
//! go through a [`Breaker`]: while the control plane is unreachable, tenants the router
//! does not know fail at once instead of each trying to connect.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::breaker::Breaker;
use super::{RouteError, RouteSource};
use crate::tenant::{Route, TenantId};

/// Sizes and lifetimes of the route cache.
#[derive(Debug, Clone)]
pub struct RouteCacheConfig {
    /// Most tenants whose routes are cached.
    pub capacity: u64,
    /// How long a route is trusted without an event before it is revalidated (in the
    /// background, while it keeps being served).
    pub ttl: Duration,
    /// How long "no such tenant" is remembered.
    pub negative_ttl: Duration,
    /// How long a route the control plane has not confirmed may be served; `None` serves
    /// it for as long as the control plane cannot be asked. Past it, the tenant's calls
    /// wait for a resolution and get UNAVAILABLE if it fails.
    pub max_stale: Option<Duration>,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(2),
            max_stale: None,
        }
    }
}

/// What the control plane said about a tenant, and when.
struct Entry {
    lookup: Lookup,
    /// When the control plane last answered for it.
    validated: Instant,
    /// The background refresh of this entry.
    refresh: Mutex<Refresh>,
}

#[derive(Clone)]
enum Lookup {
    Found(Arc<Route>),
    NotFound,
}

/// One tenant's background refresh: at most one at a time, and after a failure not again
/// before `not_before`.
#[derive(Default)]
struct Refresh {
    running: bool,
    failures: u32,
    not_before: Option<Instant>,
}

/// The first retry of a failed refresh; doubles up to [`REFRESH_BACKOFF_MAX`].
const REFRESH_BACKOFF: Duration = Duration::from_millis(250);
const REFRESH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Attempts of an event's eager refresh (about 20 s of back-off in all).
pub const EVENT_REFRESH_ATTEMPTS: u32 = 8;

impl Entry {
    fn new(lookup: Lookup) -> Arc<Self> {
        Arc::new(Self {
            lookup,
            validated: Instant::now(),
            refresh: Mutex::new(Refresh::default()),
        })
    }

    /// Claims the refresh, unless one runs or the last failed too recently.
    fn claim_refresh(&self) -> bool {
        let Ok(mut refresh) = self.refresh.lock() else {
            return false;
        };
        if refresh.running || refresh.not_before.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        refresh.running = true;
        true
    }

    fn refresh_failed(&self) {
        if let Ok(mut refresh) = self.refresh.lock() {
            refresh.running = false;
            refresh.failures = refresh.failures.saturating_add(1);
            let backoff = REFRESH_BACKOFF
                .saturating_mul(1 << refresh.failures.min(8).saturating_sub(1))
                .min(REFRESH_BACKOFF_MAX);
            refresh.not_before = Some(Instant::now() + backoff);
        }
    }
}

struct EntryExpiry {
    negative_ttl: Duration,
    max_stale: Option<Duration>,
}

impl Expiry<TenantId, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &TenantId,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        match value.lookup {
            Lookup::Found(_) => self.max_stale,
            Lookup::NotFound => Some(self.negative_ttl),
        }
    }

    fn expire_after_update(
        &self,
        key: &TenantId,
        value: &Arc<Entry>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// Cached routes in front of a [`RouteSource`]. Cloning is cheap and shares the cache.
pub struct RouteCache<S> {
    source: Arc<S>,
    metrics: crate::metrics::RouterMetrics,
    routes: Cache<TenantId, Arc<Entry>>,
    ttl: Duration,
    breaker: Arc<Breaker>,
}

impl<S> Clone for RouteCache<S> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            metrics: self.metrics.clone(),
            routes: self.routes.clone(),
            ttl: self.ttl,
            breaker: self.breaker.clone(),
        }
    }
}

impl<S: RouteSource> RouteCache<S> {
    /// A cache over `source`, with metrics nobody scrapes.
    pub fn new(source: Arc<S>, config: &RouteCacheConfig) -> Self {
        Self::with_metrics(source, config, crate::metrics::RouterMetrics::default())
    }

    /// A cache over `source` that counts lookups and resolutions in `metrics`.
    pub fn with_metrics(
        source: Arc<S>,
        config: &RouteCacheConfig,
        metrics: crate::metrics::RouterMetrics,
    ) -> Self {
        Self {
            source,
            metrics,
            routes: Cache::builder()
                .max_capacity(config.capacity)
                .expire_after(EntryExpiry {
                    negative_ttl: config.negative_ttl,
                    max_stale: config.max_stale,
                })
                .build(),
            ttl: config.ttl,
            breaker: Arc::new(Breaker::default()),
        }
    }

    /// The route source behind the cache.
    pub fn source(&self) -> &Arc<S> {
        &self.source
    }

    /// The circuit breaker in front of the source; the event stream reports the link's
    /// health to it too.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// The tenant's route. A cached one is answered at once (and refreshed in the
    /// background when older than the TTL); otherwise it is resolved, once per tenant at a
    /// time, unless the breaker says the control plane is unreachable.
    pub async fn get(&self, tenant: &TenantId) -> Result<Arc<Route>, RouteError> {
        if let Some(entry) = self.routes.get(tenant).await {
            self.metrics.route_lookup(true);
            return match &entry.lookup {
                Lookup::Found(route) => {
                    if entry.validated.elapsed() >= self.ttl && entry.claim_refresh() {
                        self.spawn_refresh(tenant.clone(), entry.clone());
                    }
                    Ok(route.clone())
                }
                Lookup::NotFound => Err(RouteError::NotFound),
            };
        }
        self.metrics.route_lookup(false);
        let entry = self
            .routes
            .try_get_with_by_ref(tenant, async { self.resolve(tenant).await.map(Entry::new) })
            .await
            .map_err(|e| (*e).clone())?;
        match &entry.lookup {
            Lookup::Found(route) => Ok(route.clone()),
            Lookup::NotFound => Err(RouteError::NotFound),
        }
    }

    /// Asks the source, through the breaker.
    async fn resolve(&self, tenant: &TenantId) -> Result<Lookup, RouteError> {
        let Some(probe) = self.breaker.admit() else {
            self.metrics.route_resolution("refused");
            return Err(RouteError::Unavailable(
                "the control plane is unreachable (circuit open)".into(),
            ));
        };
        let result = self.source.resolve(tenant).await;
        let outcome = match &result {
            Ok(_) => "found",
            Err(RouteError::NotFound) => "not_found",
            Err(RouteError::Unavailable(_)) => "unavailable",
            Err(RouteError::Invalid(_)) => "invalid",
        };
        self.metrics.route_resolution(outcome);
        match &result {
            Err(RouteError::Unavailable(_)) => probe.failed(),
            Ok(_) | Err(RouteError::NotFound | RouteError::Invalid(_)) => probe.succeeded(),
        }
        match result {
            Ok(route) => Ok(Lookup::Found(Arc::new(route))),
            Err(RouteError::NotFound) => Ok(Lookup::NotFound),
            Err(e) => Err(e),
        }
    }

    /// Revalidates `entry` in the background; the answer replaces it unless an event
    /// replaced it first.
    fn spawn_refresh(&self, tenant: TenantId, entry: Arc<Entry>) {
        let cache = self.clone();
        tokio::spawn(async move {
            match cache.resolve(&tenant).await {
                Ok(lookup) => {
                    let fresh = Entry::new(lookup);
                    cache
                        .routes
                        .entry_by_ref(&tenant)
                        .and_compute_with(|current| {
                            std::future::ready(match current {
                                Some(current) if Arc::ptr_eq(current.value(), &entry) => {
                                    moka::ops::compute::Op::Put(fresh)
                                }
                                _ => moka::ops::compute::Op::Nop,
                            })
                        })
                        .await;
                }
                Err(error) => {
                    tracing::debug!(tenant_id = %tenant, error = %error, "cannot revalidate the route; serving it as it is");
                    entry.refresh_failed();
                }
            }
        });
    }

    /// Replaces the tenant's cached route, in the background, with one read at or after
    /// `sequence` (an event that changes only what the route carries, such as the
    /// tenant's configuration): the cached route keeps being served meanwhile, so no call
    /// waits for the control plane. A tenant not cached is left to its first call. A failed
    /// resolution is retried with back-off (0.25 s doubling to 5 s, at most
    /// [`EVENT_REFRESH_ATTEMPTS`] attempts; then the TTL's revalidation takes over) while
    /// the route is still cached and older than `sequence`.
    pub fn refresh(&self, tenant: &TenantId, sequence: u64) {
        let cache = self.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let mut backoff = REFRESH_BACKOFF;
            for _ in 0..EVENT_REFRESH_ATTEMPTS {
                let stale = match cache.routes.get(&tenant).await {
                    Some(entry) => match &entry.lookup {
                        Lookup::Found(route) => route.sequence < sequence,
                        Lookup::NotFound => false,
                    },
                    None => false,
                };
                if !stale {
                    return;
                }
                match cache.resolve(&tenant).await {
                    Ok(lookup) => {
                        let fresh = Entry::new(lookup);
                        cache
                            .routes
                            .entry_by_ref(&tenant)
                            .and_compute_with(|current| {
                                // Only over an older cached route: a tenant dropped meanwhile
                                // (another event) is resolved again at its next call.
                                let older = current.is_some_and(|current| {
                                    match (&current.value().lookup, &fresh.lookup) {
                                        (Lookup::Found(old), Lookup::Found(new)) => {
                                            old.sequence < new.sequence
                                        }
                                        (Lookup::Found(_), Lookup::NotFound) => true,
                                        (Lookup::NotFound, _) => false,
                                    }
                                });
                                std::future::ready(if older {
                                    moka::ops::compute::Op::Put(fresh)
                                } else {
                                    moka::ops::compute::Op::Nop
                                })
                            })
                            .await;
                        return;
                    }
                    Err(error) => {
                        tracing::debug!(tenant_id = %tenant, error = %error, "cannot refresh the route after a config change; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(REFRESH_BACKOFF_MAX);
                    }
                }
            }
        });
    }

    /// Drops the tenant's cached answer unless it was read at or after `sequence`.
    /// Returns whether a route was dropped (then the tenant's pool must go too).
    pub async fn invalidate(&self, tenant: &TenantId, sequence: u64) -> bool {
        let Some(entry) = self.routes.get(tenant).await else {
            return false;
        };
        match &entry.lookup {
            Lookup::Found(route) if route.sequence >= sequence => false,
            Lookup::Found(_) => {
                self.routes.invalidate(tenant).await;
                true
            }
            Lookup::NotFound => {
                self.routes.invalidate(tenant).await;
                false
            }
        }
    }

    /// The tenants whose routes are cached.
    pub fn cached_tenants(&self) -> Vec<TenantId> {
        self.routes
            .iter()
            .filter(|(_, entry)| matches!(entry.lookup, Lookup::Found(_)))
            .map(|(tenant, _)| (*tenant).clone())
            .collect()
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
    use crate::routes::Change;
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

        fn invalidations(&self, _shutdown: CancellationToken) -> BoxStream<'static, Change> {
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
            tls: silo_tls::postgres::PgTls::default(),
            config: Default::default(),
            quota_exhausted: String::new(),
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

    fn cache_with(
        answer: Result<Route, RouteError>,
        config: RouteCacheConfig,
    ) -> RouteCache<Scripted> {
        let source = Arc::new(Scripted {
            answer: Mutex::new(answer),
            calls: AtomicU32::new(0),
        });
        RouteCache::new(source, &config)
    }

    fn set_answer(cache: &RouteCache<Scripted>, answer: Result<Route, RouteError>) {
        *cache.source().answer.lock().expect("lock") = answer;
    }

    #[tokio::test]
    async fn a_stale_route_is_served_at_once_and_revalidated_in_the_background() {
        let cache = cache_with(
            Ok(route(5)),
            RouteCacheConfig {
                ttl: Duration::ZERO,
                ..RouteCacheConfig::default()
            },
        );
        cache.get(&acme()).await.expect("found");
        set_answer(&cache, Ok(route(6)));
        // The source takes 20 ms to answer; the stale route does not wait for it.
        let started = Instant::now();
        assert_eq!(cache.get(&acme()).await.expect("stale").sequence, 5);
        assert!(started.elapsed() < Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get(&acme()).await.expect("revalidated").sequence, 6);
    }

    #[tokio::test]
    async fn a_known_tenant_keeps_working_when_the_source_is_down_and_refreshes_back_off() {
        let cache = cache_with(
            Ok(route(5)),
            RouteCacheConfig {
                ttl: Duration::ZERO,
                ..RouteCacheConfig::default()
            },
        );
        cache.get(&acme()).await.expect("found");
        set_answer(&cache, Err(RouteError::Unavailable("down".into())));
        for _ in 0..50 {
            assert_eq!(cache.get(&acme()).await.expect("last known").sequence, 5);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // 50 calls over about 100 ms: one refresh, then the back-off (and the breaker).
        assert!(calls(&cache) <= 2, "{} resolutions", calls(&cache));
        // After an event the stale route is gone too: no longer served.
        assert!(cache.invalidate(&acme(), 9).await);
        assert!(matches!(
            cache.get(&acme()).await,
            Err(RouteError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_refresh_replaces_the_route_in_the_background_and_serves_the_old_one_meanwhile() {
        let cache = cache(Ok(route(5)));
        cache.get(&acme()).await.expect("found");
        set_answer(&cache, Ok(route(7)));
        cache.refresh(&acme(), 6);
        // The source takes 20 ms; the cached route is answered at once meanwhile.
        let started = Instant::now();
        assert_eq!(cache.get(&acme()).await.expect("cached").sequence, 5);
        assert!(started.elapsed() < Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get(&acme()).await.expect("refreshed").sequence, 7);
        assert_eq!(calls(&cache), 2);
        // A route read at or after the event is not resolved again, nor is a tenant the
        // cache does not hold.
        cache.refresh(&acme(), 7);
        cache.refresh(&TenantId::parse("globex").expect("valid"), 9);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(calls(&cache), 2);
    }

    #[tokio::test]
    async fn unknown_tenants_fail_fast_while_the_breaker_is_open() {
        let cache = cache(Err(RouteError::Unavailable("down".into())));
        assert!(cache.get(&acme()).await.is_err());
        let before = calls(&cache);
        for i in 0..20 {
            let tenant = TenantId::parse(&format!("t{i}")).expect("valid");
            assert!(matches!(
                cache.get(&tenant).await,
                Err(RouteError::Unavailable(_))
            ));
        }
        assert_eq!(calls(&cache), before, "no attempt while open");
    }

    #[tokio::test]
    async fn a_route_past_max_stale_is_refused_when_it_cannot_be_revalidated() {
        let cache = cache_with(
            Ok(route(5)),
            RouteCacheConfig {
                ttl: Duration::ZERO,
                max_stale: Some(Duration::from_millis(50)),
                ..RouteCacheConfig::default()
            },
        );
        cache.get(&acme()).await.expect("found");
        set_answer(&cache, Err(RouteError::Unavailable("down".into())));
        assert!(cache.get(&acme()).await.is_ok(), "within max_stale");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(matches!(
            cache.get(&acme()).await,
            Err(RouteError::Unavailable(_))
        ));
    }
}
