//! A router in-process, on loopback, following a test control plane: real
//! ResolveTenant / WatchTenants, real tenant databases.

use std::{sync::Arc, time::Duration};

use silo_auth::{Algorithm, JwtVerifier, KeySource, StandardClaims, VerifierConfig};
use silo_proto::router::v1::{self as rpb, router_client::RouterClient};
use silo_router::{
    Authenticator, CallLimits, ControlPlaneRoutes, RouterCore, ServeTelemetry,
    metrics::RouterMetrics,
    pool::PoolConfig,
    routes::{LinkConfig, RouteCacheConfig, control_plane_channel},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{ISSUER, TestControlPlane, fixture, signer, token};

pub const ROUTER_AUDIENCE: &str = "silo-router";

/// TLS of a test router, all off by default.
#[derive(Default)]
pub struct RouterTls {
    /// The router's own gRPC server.
    pub server: Option<Arc<silo_tls::grpc::ServerTls>>,
    /// The link to the control plane (`https://127.0.0.1:<port>` when set).
    pub control_plane: Option<tonic::transport::ClientTlsConfig>,
    /// The test's own client of the router.
    pub client: Option<tonic::transport::ClientTlsConfig>,
}

pub struct TestRouter {
    pub address: std::net::SocketAddr,
    pub client: RouterClient<Channel>,
    /// The router's own metrics (route resolutions, pools).
    pub metrics: RouterMetrics,
    /// Its usage metering (on, shipping every second).
    pub usage: silo_router::usage::UsageMetrics,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestRouter {
    /// Stops the router as SIGTERM does: calls drain, the last usage records are shipped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            served.await.expect("router task").expect("router served");
        }
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A token for one tenant (`tenant_id` claim), as internal services carry.
pub fn tenant_token(tenant: &str) -> String {
    let claims = StandardClaims::new(format!("svc-{tenant}"), Duration::from_secs(600))
        .issuer(ISSUER)
        .audience(ROUTER_AUDIENCE)
        .claim("tenant_id", tenant);
    signer().sign(&claims).expect("token signs")
}

/// A request with a bearer token and, optionally, `x-tenant-id`.
pub fn call<T>(message: T, token: &str, tenant_header: Option<&str>) -> tonic::Request<T> {
    let mut request = crate::with_token(message, token);
    if let Some(tenant) = tenant_header {
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().expect("ascii tenant"));
    }
    request
}

pub fn statement(sql: &str, params: Vec<rpb::Value>) -> Option<rpb::Statement> {
    Some(rpb::Statement {
        sql: sql.into(),
        params,
    })
}

pub fn text(value: &str) -> rpb::Value {
    rpb::Value {
        kind: Some(rpb::value::Kind::StringValue(value.into())),
    }
}

pub fn int(value: i64) -> rpb::Value {
    rpb::Value {
        kind: Some(rpb::value::Kind::Int64Value(value)),
    }
}

impl TestRouter {
    /// A router whose route source is `control_plane`, with `pools` for its pool settings.
    pub async fn start(control_plane: &TestControlPlane, pools: PoolConfig) -> Self {
        Self::start_with(
            control_plane.address(),
            pools,
            &RouteCacheConfig::default(),
            &LinkConfig::default(),
        )
        .await
    }

    /// A router that reaches its control plane at `control_plane` (a proxy, say), with
    /// its pool, route-cache and link settings.
    pub async fn start_with(
        control_plane: std::net::SocketAddr,
        pools: PoolConfig,
        routes: &RouteCacheConfig,
        link: &LinkConfig,
    ) -> Self {
        Self::start_full(
            control_plane,
            pools,
            routes,
            link,
            RouterTls::default(),
            CallLimits::default(),
        )
        .await
    }

    /// A router following `control_plane` with its call limits set to `limits` (a longer
    /// move hold, say).
    pub async fn start_with_limits(
        control_plane: &TestControlPlane,
        pools: PoolConfig,
        limits: CallLimits,
    ) -> Self {
        Self::start_full(
            control_plane.address(),
            pools,
            &RouteCacheConfig::default(),
            &LinkConfig::default(),
            RouterTls::default(),
            limits,
        )
        .await
    }

    /// A router following `control_plane` with the TLS of `tls`.
    pub async fn start_tls(control_plane: &TestControlPlane, tls: RouterTls) -> Self {
        Self::start_full(
            control_plane.address(),
            PoolConfig::default(),
            &RouteCacheConfig::default(),
            &LinkConfig::default(),
            tls,
            CallLimits::default(),
        )
        .await
    }

    async fn start_full(
        control_plane: std::net::SocketAddr,
        pools: PoolConfig,
        routes: &RouteCacheConfig,
        link: &LinkConfig,
        tls: RouterTls,
        limits: CallLimits,
    ) -> Self {
        let verifier = JwtVerifier::new(VerifierConfig {
            algorithms: vec![Algorithm::RS256],
            keys: KeySource::PemFile(fixture("rsa_public.pem")),
            issuer: Some(ISSUER.into()),
            audience: Some(ROUTER_AUDIENCE.into()),
            leeway: Duration::from_secs(5),
        })
        .expect("verifier");
        let scheme = if tls.control_plane.is_some() {
            "https"
        } else {
            "http"
        };
        let channel = control_plane_channel(
            &format!("{scheme}://{control_plane}"),
            link,
            tls.control_plane,
        )
        .expect("uri");
        let source = ControlPlaneRoutes::new(channel, token("router").into(), link);
        let connected = source.connected();
        let metrics = RouterMetrics::default();
        let usage = silo_router::usage::UsageMetrics::default();
        let core = Arc::new(
            RouterCore::with_metrics(
                Authenticator::new(verifier, "tenant_id"),
                Arc::new(source),
                routes,
                pools,
                limits,
                metrics.clone(),
            )
            .with_usage(silo_router::usage::UsageMeter::new(100_000, usage.clone())),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(silo_router::serve(
            silo_tls::grpc::Incoming::new(listener, tls.server),
            core,
            Duration::from_secs(10),
            ServeTelemetry {
                control_plane_connected: Arc::new(move || {
                    connected.load(std::sync::atomic::Ordering::Relaxed)
                }),
                ..ServeTelemetry::unobserved()
            },
            shutdown.clone(),
        ));
        let client = match tls.client {
            Some(client_tls) => Channel::from_shared(format!("https://{address}"))
                .expect("uri")
                .tls_config(client_tls)
                .expect("tls config"),
            None => Channel::from_shared(format!("http://{address}")).expect("uri"),
        }
        .connect()
        .await
        .expect("router reachable");
        let client = RouterClient::new(client);
        Self {
            address,
            client,
            metrics,
            usage,
            shutdown,
            served: Some(served),
        }
    }
}
