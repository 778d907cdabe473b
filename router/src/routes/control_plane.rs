//! The real [`RouteSource`]: the control plane's `ResolveTenant` and `WatchTenants`, called
//! with the router's service token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use secrecy::{ExposeSecret, SecretString};
use silo_proto::controlplane::v1 as pb;
use silo_proto::controlplane::v1::control_plane_client::ControlPlaneClient;
use silo_tls::postgres::PgTls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{Change, Invalidation, RouteError, RouteSource};
use crate::tenant::{Route, TenantConfig, TenantId, TenantState, TierLimits};

static WATCH_FAILED: silo_telemetry::Throttle =
    silo_telemetry::Throttle::new(Duration::from_secs(30));

/// How `WatchTenants` reconnects after the stream fails.
#[derive(Debug, Clone, Copy)]
pub struct WatchBackoff {
    /// The first wait after a failure.
    pub initial: Duration,
    /// The longest wait; each failure in a row doubles it up to this.
    pub max: Duration,
}

impl Default for WatchBackoff {
    /// 100 ms doubling to 1 s: once the control plane is back, a router is watching again
    /// within about a second, so a change made right then reaches it soon after.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

impl WatchBackoff {
    /// `delay` with full jitter in its upper half, so that routers that lost the control
    /// plane together do not all come back in the same instant.
    fn jittered(delay: Duration) -> Duration {
        use rand::Rng;
        let half = delay / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// How the router keeps its link to the control plane honest: HTTP/2 keepalive pings on
/// the connection, and a bound on silence of the tenant-event stream, which carries a
/// heartbeat every 2 s when idle.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// Timeout of a connection attempt and of one ResolveTenant call.
    pub call_timeout: Duration,
    /// An HTTP/2 ping this often, whether or not calls are in flight.
    pub keepalive_interval: Duration,
    /// A ping unanswered this long closes the connection (calls on it fail, the next
    /// ones reconnect).
    pub keepalive_timeout: Duration,
    /// The event stream silent this long (no event, no heartbeat) counts as dead.
    pub silence: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(3),
            silence: Duration::from_secs(6),
        }
    }
}

/// A lazily connected channel to the control plane at `url`, with `link`'s connect
/// timeout and keepalive, over TLS when `tls` is set: the router starts even when the
/// control plane is down, and a connection that stops answering pings is replaced.
pub fn control_plane_channel(
    url: &str,
    link: &LinkConfig,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint
        .connect_timeout(link.call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(link.keepalive_interval)
        .keep_alive_timeout(link.keepalive_timeout)
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Routes from the control plane.
#[derive(Clone)]
pub struct ControlPlaneRoutes {
    client: ControlPlaneClient<Channel>,
    /// The WatchTenants stream is open (the router's health follows it).
    connected: Arc<AtomicBool>,
    token: SecretString,
    call_timeout: Duration,
    silence: Duration,
    backoff: WatchBackoff,
}

impl ControlPlaneRoutes {
    /// `channel` may be lazy (`Endpoint::connect_lazy`): the router starts even when the
    /// control plane is down.
    /// Whether the tenant-event stream is open right now.
    pub fn connected(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Routes from the control plane on `channel`, authenticated with the service `token`.
    pub fn new(channel: Channel, token: SecretString, link: &LinkConfig) -> Self {
        Self {
            client: ControlPlaneClient::new(channel),
            connected: Arc::new(AtomicBool::new(false)),
            token,
            call_timeout: link.call_timeout,
            silence: link.silence,
            backoff: WatchBackoff::default(),
        }
    }

    /// The same, reconnecting WatchTenants with `backoff` instead of the default.
    #[must_use]
    pub fn with_backoff(mut self, backoff: WatchBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, RouteError> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token.expose_secret())
            .parse()
            .map_err(|_| RouteError::Invalid("the service token is not a valid header".into()))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// Follows `WatchTenants`, reconnecting with backoff, until `shutdown`. It starts at
    /// the log's head (nothing is cached yet, so nothing older matters); after a break it
    /// resumes after the last event seen, and when the control plane no longer keeps that
    /// far back (OUT_OF_RANGE) it starts at the head again and asks for a resync.
    async fn watch(self, out: mpsc::Sender<Change>, shutdown: CancellationToken) {
        let mut delay = self.backoff.initial;
        // `None`: start at the head.
        let mut resume: Option<u64> = None;
        loop {
            let request = pb::WatchTenantsRequest {
                from_sequence: resume.unwrap_or(0),
                from_head: resume.is_none(),
            };
            let from_head = request.from_head;
            let mut from_sequence = request.from_sequence;
            let Ok(request) = self.request(request) else {
                tracing::error!("the control plane token is not a valid header; not watching");
                return;
            };
            let mut client = self.client.clone();
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                result = client.watch_tenants(request) => result,
            };
            match stream {
                Ok(response) => {
                    self.connected.store(true, Ordering::Relaxed);
                    tracing::info!(from_sequence, from_head, "watching tenant events");
                    let mut events = response.into_inner();
                    let mut first = true;
                    loop {
                        let next = tokio::select! {
                            () = shutdown.cancelled() => return,
                            next = tokio::time::timeout(self.silence, events.message()) => next,
                        };
                        let Ok(next) = next else {
                            tracing::warn!(
                                from_sequence,
                                silence_secs = self.silence.as_secs_f32(),
                                "tenant event stream silent; reconnecting"
                            );
                            break;
                        };
                        match next {
                            Ok(Some(event)) => {
                                delay = self.backoff.initial;
                                from_sequence = from_sequence.max(event.sequence);
                                resume = Some(from_sequence);
                                let heartbeat = event.kind() == pb::TenantEventKind::Heartbeat;
                                let change = if heartbeat && first && from_head {
                                    // The head: routes read before it may have missed events.
                                    Some(Change::Resync {
                                        sequence: event.sequence,
                                    })
                                } else if heartbeat {
                                    None
                                } else {
                                    let config_only =
                                        event.kind() == pb::TenantEventKind::ConfigChanged;
                                    TenantId::parse(&event.tenant_id).map(|tenant_id| {
                                        let invalidation = Invalidation {
                                            tenant_id,
                                            sequence: event.sequence,
                                        };
                                        if config_only {
                                            Change::Config(invalidation)
                                        } else {
                                            Change::Tenant(invalidation)
                                        }
                                    })
                                };
                                first = false;
                                if let Some(change) = change
                                    && out.send(change).await.is_err()
                                {
                                    return;
                                }
                            }
                            Ok(None) => {
                                tracing::warn!(from_sequence, "tenant event stream ended");
                                break;
                            }
                            Err(status) => {
                                tracing::warn!(from_sequence, code = ?status.code(), error = %status.message(), "tenant event stream failed");
                                break;
                            }
                        }
                    }
                }
                Err(status) if status.code() == tonic::Code::OutOfRange => {
                    tracing::warn!(from_sequence, error = %status.message(), "missed events are no longer kept; starting at the head and resolving cached tenants again");
                    resume = None;
                    continue;
                }
                Err(status) => {
                    // Once a second while the control plane is down: once per interval.
                    if let Some(held_back) = WATCH_FAILED.allow() {
                        tracing::warn!(from_sequence, code = ?status.code(), error = %status.message(), held_back, "cannot watch tenant events");
                    }
                }
            }
            self.connected.store(false, Ordering::Relaxed);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(WatchBackoff::jittered(delay)) => {}
            }
            delay = (delay * 2).min(self.backoff.max);
        }
    }
}

impl RouteSource for ControlPlaneRoutes {
    async fn record_usage(&self, request: pb::RecordUsageRequest) -> Result<(), String> {
        let request = self.request(request).map_err(|e| e.to_string())?;
        let mut client = self.client.clone();
        tokio::time::timeout(self.call_timeout, client.record_usage(request))
            .await
            .map_err(|_| "RecordUsage timed out".to_owned())?
            .map(|_| ())
            .map_err(|status| format!("RecordUsage: {:?}: {}", status.code(), status.message()))
    }

    async fn resolve(&self, tenant: &TenantId) -> Result<Route, RouteError> {
        let request = self.request(pb::ResolveTenantRequest {
            tenant_id: tenant.to_string(),
        })?;
        let mut client = self.client.clone();
        let response = tokio::time::timeout(self.call_timeout, client.resolve_tenant(request))
            .await
            .map_err(|_| RouteError::Unavailable("ResolveTenant timed out".into()))?;
        match response {
            Ok(route) => Route::try_from(route.into_inner()),
            Err(status) => {
                let detail = || format!("ResolveTenant: {:?}: {}", status.code(), status.message());
                use tonic::Code;
                Err(match status.code() {
                    // A tenant id the control plane refuses names no tenant.
                    Code::NotFound | Code::InvalidArgument => RouteError::NotFound,
                    // What a later attempt may get past.
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::Unknown
                    | Code::Internal => RouteError::Unavailable(detail()),
                    // The router's own configuration (its service token) is wrong.
                    Code::Ok
                    | Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::AlreadyExists
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::Unimplemented
                    | Code::DataLoss => RouteError::Invalid(detail()),
                })
            }
        }
    }

    fn invalidations(&self, shutdown: CancellationToken) -> BoxStream<'static, Change> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(self.clone().watch(tx, shutdown));
        ReceiverStream::new(rx).boxed()
    }
}

fn state(raw: i32) -> Result<TenantState, RouteError> {
    use pb::TenantState as Pb;
    Ok(
        match Pb::try_from(raw).map_err(|_| RouteError::Invalid(format!("unknown state {raw}")))? {
            Pb::Active => TenantState::Active,
            Pb::Requested | Pb::Provisioning | Pb::WaitingAvailable | Pb::Migrating => {
                TenantState::Onboarding
            }
            Pb::Suspended => TenantState::Suspended,
            Pb::Deleting => TenantState::Deleting,
            Pb::Deleted => TenantState::Deleted,
            Pb::Failed => TenantState::Failed,
            Pb::Moving => TenantState::Moving,
            Pb::Unspecified => return Err(RouteError::Invalid("state unspecified".into())),
        },
    )
}

impl TryFrom<pb::TenantRoute> for Route {
    type Error = RouteError;

    fn try_from(route: pb::TenantRoute) -> Result<Self, RouteError> {
        let invalid = |what: &str| RouteError::Invalid(what.to_owned());
        let tenant_id = TenantId::parse(&route.tenant_id).ok_or_else(|| invalid("tenant id"))?;
        let state = state(route.state)?;
        let port = u16::try_from(route.port).map_err(|_| invalid("port"))?;
        if state == TenantState::Active && (route.host.is_empty() || port == 0) {
            return Err(invalid("an active tenant without an endpoint"));
        }
        let limits = match route.limits {
            Some(limits) => TierLimits {
                max_connections: limits.max_connections.max(1),
                rate_per_second: limits.rate_per_second,
                burst: limits.burst,
                max_concurrent_calls: limits.max_concurrent_calls,
                statement_timeout: limits
                    .statement_timeout
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or(TierLimits::default().statement_timeout),
            },
            None => TierLimits::default(),
        };
        let tls = PgTls::new(
            Some(route.sslmode.as_str()).filter(|mode| !mode.is_empty()),
            Some(route.sslrootcert.as_str()),
        )
        .map_err(|e| RouteError::Invalid(e.to_string()))?;
        Ok(Self {
            tenant_id,
            state,
            tier: route.tier,
            host: route.host,
            port,
            database: route.database,
            user: route.user,
            password: SecretString::from(route.password),
            credentials_version: route.credentials_version,
            limits,
            sequence: route.sequence,
            tls,
            config: std::sync::Arc::new(
                route
                    .config
                    .map(|config| TenantConfig {
                        version: config.version,
                        settings: config.settings.into_iter().collect(),
                    })
                    .unwrap_or_default(),
            ),
            quota_exhausted: route.quota_exhausted,
        })
    }
}
